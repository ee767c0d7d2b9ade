"""The leader lease, kept alive by a small process of its own.

A leader that holds a hundred thousand tasks is busy, and a busy Python process is a poor place to keep a
2-second lease: its threads share one interpreter lock, and on a loaded machine its turn on a CPU comes late.
So the daemon runs this keeper beside it (at a higher scheduling priority when it may), and the keeper renews
the lease over a gRPC channel of its own. It renews only while the daemon shows it is alive and working: a
thread of the daemon sends a tick every TICK_INTERVAL saying whether its event loop still makes progress
(`shoal.loopmonitor`). No tick for TICK_LIMIT (the daemon frozen or killed) or a tick saying the loop is
wedged, and the keeper stops renewing; the daemon gone altogether (its end of the pipe closed), and the keeper
revokes the lease on the spot, so a crashed leader is replaced at once rather than when the lease runs out.

Protocol: JSON lines. On stdin, from the daemon: {"keep": lease_id, "ttl": seconds}, {"stop": lease_id},
{"tick": true, "ok": bool}. On stdout, to the daemon: {"lost": lease_id, "why": text}, once per lease that
could not be kept.

    python -m shoal.manager.lease_keeper --target 10.0.0.1:2379 [--ca F --cert F --key F]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

log = logging.getLogger(__name__)

TICK_INTERVAL = 0.2  # how often the daemon says it is alive
# Silence after which the daemon counts as frozen (SIGSTOP, a hung machine thread): renewals stop. A killed daemon
# is noticed at once (its end of the pipe closes); this only has to outlast a busy process's slowest tick.
TICK_LIMIT = 3.0
# Renewals per lease period; each try may take this share of the period before it counts as failed, and the
# keeper gives up this share of the period before the lease could end on etcd's side.
RENEWALS_PER_TTL = 4
GIVE_UP_MARGIN = 1 / 8


class Renewer:
    """Renews one lease until told to stop, the daemon stops ticking, or the lease cannot be kept."""

    def __init__(self, stub: rpc.LeaseStub, lease_id: int, ttl: float, alive: Callable[[], bool],
                 on_lost: Callable[[int, str], None]) -> None:
        self.stub = stub
        self.lease_id = lease_id
        self.ttl = ttl
        self.alive = alive
        self.on_lost = on_lost
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"renew-{lease_id}", daemon=True)

    def _run(self) -> None:
        interval = self.ttl / RENEWALS_PER_TTL
        # Granted just before: etcd keeps it at least this long.
        valid_until = time.monotonic() + self.ttl
        while not self.stopped.is_set():
            if not self.alive():
                self._lost("the daemon stopped showing progress")
                return
            sent = time.monotonic()
            try:
                for reply in self.stub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=self.lease_id)]),
                                                      timeout=interval):
                    if reply.TTL <= 0:
                        self._lost("the lease expired")
                        return
                    valid_until = sent + reply.TTL
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else exc
                log.warning("lease keeper: renewing lease %x failed: %s", self.lease_id, code)
                if time.monotonic() > valid_until - self.ttl * GIVE_UP_MARGIN:
                    self._lost(f"the lease could not be renewed in time ({code})")
                    return
                continue  # at once: the lease has little time left
            self.stopped.wait(max(0.0, interval - (time.monotonic() - sent)))

    def _lost(self, why: str) -> None:
        if not self.stopped.is_set():
            self.on_lost(self.lease_id, why)


class Keeper:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = rpc.LeaseStub(channel)
        self.renewers: dict[int, Renewer] = {}
        self.last_tick = time.monotonic()
        self.loop_ok = True
        self._out = threading.Lock()

    def alive(self) -> bool:
        return self.loop_ok and time.monotonic() - self.last_tick < TICK_LIMIT

    def report_lost(self, lease_id: int, why: str) -> None:
        with self._out:
            sys.stdout.write(json.dumps({"lost": lease_id, "why": why}) + "\n")
            sys.stdout.flush()

    def handle(self, message: dict[str, Any]) -> None:
        if "tick" in message:
            self.last_tick = time.monotonic()
            self.loop_ok = bool(message.get("ok", True))
        elif "keep" in message:
            lease_id = int(message["keep"])
            self.last_tick = time.monotonic()
            renewer = Renewer(self.stub, lease_id, float(message.get("ttl") or 2.0), self.alive, self.report_lost)
            self.renewers[lease_id] = renewer
            renewer.thread.start()
        elif "stop" in message:
            stopped = self.renewers.pop(int(message["stop"]), None)
            if stopped is not None:
                stopped.stopped.set()

    def revoke_all(self) -> None:
        """The daemon is gone: end its leases now, so another manager leads without waiting them out."""
        for lease_id, renewer in list(self.renewers.items()):
            renewer.stopped.set()
            try:
                self.stub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=1.0)
            except grpc.RpcError as exc:
                log.warning("lease keeper: could not revoke lease %x: %s", lease_id, exc)

    def serve(self, lines: Iterable[str]) -> None:
        for line in lines:
            try:
                self.handle(json.loads(line))
            except (ValueError, TypeError, KeyError):
                log.warning("lease keeper: ignored %r", line)
        self.revoke_all()


def channel_for(target: str, ca: str | None, cert: str | None, key: str | None) -> grpc.Channel:
    from shoal.manager.store.etcd import CHANNEL_OPTIONS

    if ca is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        Path(ca).read_bytes(), Path(key).read_bytes() if key else None, Path(cert).read_bytes() if cert else None)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.manager.lease_keeper")
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with os.fdopen(sys.stdin.fileno(), "r", buffering=1, closefd=False) as lines:
        Keeper(channel_for(args.target, args.ca, args.cert, args.key)).serve(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
