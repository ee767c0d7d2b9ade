"""Event-loop lag, measured inside the daemon: how late the loop runs what is due, and what held it up.

A timer task asks to wake every `interval` and records how late it woke. A watchdog thread notices when the
loop has not ticked for `stall_threshold` and captures the loop thread's stack right then, so the log line
written when the loop comes back says what was running, not what ran afterwards. The figures are served by
the daemon's debug endpoint (`GET /shoal/debug`), carried in agent heartbeats (the leader then allows a busy
node that much longer), and `progressing()` tells the leader's lease keeper whether the loop still works.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

INTERVAL = 0.1
STALL_THRESHOLD = 0.25
WINDOW = 60.0  # seconds of samples kept for max and percentiles
STACK_FRAMES = 12
# Lateness up to this much is ordinary scheduling; beyond it the liveness clock stops (see `alive`).
SLACK = 0.05


@dataclass
class Stall:
    started: float  # time.time()
    seconds: float
    stack: str


def _idle(frame: types.FrameType) -> bool:
    """A thread waiting for work (thread pool, lock, event) rather than running Python code."""
    return frame.f_code.co_name in ("wait", "_worker", "get", "select", "poll", "sleep", "_wait_for_tstate_lock")


class LoopMonitor:
    def __init__(self, interval: float = INTERVAL, stall_threshold: float = STALL_THRESHOLD,
                 on_lag: Callable[[float], None] | None = None) -> None:
        self.interval = interval
        self.on_lag = on_lag  # hears every sample (the daemon's metrics)
        self.stall_threshold = stall_threshold
        self.last_tick = time.monotonic()
        self.samples: collections.deque[tuple[float, float]] = collections.deque()  # (monotonic, lag)
        self.stalls = 0
        self.last_stall: Stall | None = None
        self._captured: str | None = None  # the loop thread's stack during the current stall
        self._loop_thread_id: int | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.running = False
        self.stalled_total = 0.0  # seconds the liveness clock has stood still

    # ---- measuring --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick forever (a supervised loop); the watchdog thread runs while this does."""
        self._loop_thread_id = threading.get_ident()
        self.last_tick = time.monotonic()
        self._start_watchdog()
        self.running = True
        try:
            while True:
                due = time.monotonic() + self.interval
                await asyncio.sleep(self.interval)
                now = time.monotonic()
                self.record(now, max(0.0, now - due))
        finally:
            self.running = False
            self._stop.set()

    def record(self, now: float, lag: float) -> None:
        self.stalled_total += max(0.0, lag - SLACK)
        self.last_tick = now
        self.samples.append((now, lag))
        if self.on_lag is not None:
            self.on_lag(lag)
        while self.samples and self.samples[0][0] < now - WINDOW:
            self.samples.popleft()
        if lag >= self.stall_threshold:
            self.stalls += 1
            stack = self._captured or "(not captured)"
            self.last_stall = Stall(time.time() - lag, lag, stack)
            log.warning("event loop stalled for %.0f ms; it was running:\n%s", lag * 1000, stack)
        self._captured = None

    def _start_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.is_alive():
            return
        self._stop.clear()
        self._watchdog = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval / 2):
            if self._captured is None and time.monotonic() - self.last_tick > self.stall_threshold + self.interval:
                self._captured = self._loop_stack()

    def _loop_stack(self) -> str:
        """The loop thread's innermost frames, and those of other busy threads: a thread holding the GIL (a
        big JSON decode handed to a worker thread) stalls the loop as surely as the loop's own code."""
        frames = sys._current_frames()
        parts: list[str] = []
        for thread_id, frame in frames.items():
            if thread_id == threading.get_ident():
                continue
            stack = traceback.format_stack(frame)[-STACK_FRAMES:]
            if thread_id == self._loop_thread_id:
                parts.insert(0, "".join(stack).rstrip())
            elif not _idle(frame):
                parts.append(f"thread {thread_id}:\n" + "".join(stack).rstrip())
        return "\n".join(parts) or "(loop thread not found)"

    # ---- reading ----------------------------------------------------------------------------------------

    def alive(self) -> float:
        """A monotonic clock that stands still while this process's loop is stalled. A deadline on it measures
        how long a peer has been silent, not how late this process was to listen: after a 3 s stall, a
        heartbeat waiting in the socket is read before the peer is blamed for it."""
        now = time.monotonic()
        if not self.running:
            return now
        ongoing = max(0.0, now - self.last_tick - self.interval - SLACK)
        return now - self.stalled_total - ongoing

    def progressing(self, within: float) -> bool:
        """Whether the loop has ticked within the last `within` seconds (always, when nothing measures it)."""
        return not self.running or time.monotonic() - self.last_tick < within

    def recent_max(self, seconds: float) -> float:
        """The largest lag seen in the last `seconds` (including a stall in progress)."""
        now = time.monotonic()
        seen = max((lag for at, lag in self.samples if at >= now - seconds), default=0.0)
        return max(seen, now - self.last_tick - self.interval)

    def stats(self) -> dict[str, object]:
        lags = sorted(lag for _, lag in self.samples)

        def ms(value: float) -> float:
            return round(value * 1000, 1)

        def pick(q: float) -> float:
            return lags[min(len(lags) - 1, int(q * len(lags)))] if lags else 0.0

        stall = self.last_stall
        last = self.samples[-1][1] if self.samples else 0.0
        return {
            "lag_ms": {"last": ms(last), "p50": ms(pick(0.5)), "p99": ms(pick(0.99)),
                       "max": ms(lags[-1] if lags else 0.0), "window_seconds": WINDOW},
            "stalls": self.stalls,
            "last_stall": None if stall is None else {"at": stall.started, "ms": ms(stall.seconds),
                                                      "stack": stall.stack},
        }
