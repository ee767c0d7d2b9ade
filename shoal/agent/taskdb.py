"""The agent's local record of its assigned tasks, so a restarted agent knows which processes are its own.

SQLite in WAL mode (`<state_dir>/tasks.db`), one row per task. Records live in memory; a change marks its row
dirty, and `flush()` writes every dirty row in one transaction on a worker thread (group commit: the runners
of a thousand tasks starting at once share a handful of transactions). So a change costs O(1) — never a
rewrite of the whole record — and nothing blocks the event loop. A crash leaves each transaction either
applied or not, never half of one.

Durability: `synchronous=NORMAL` makes a commit safe against the agent process dying, which is what the
record is for (re-adopting tasks after a daemon restart); a power loss may lose the last commits, but a
rebooted machine has no task processes left to re-adopt anyway (the executor checks the boot ID).

The worker puts a task's record before reporting anything about it, and the agent flushes before it sends
those reports, so the manager never hears of a state this node would forget after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shoal import codec
from shoal.types import Doc

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
WRITE_BEHIND_DELAY = 0.05  # changes nobody flushes are written this long after the first of them
LEGACY_FILE = "tasks.json"  # format 1: the whole record in one JSON file, rewritten on every change

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class TaskRecord:
    task: Doc                  # the task document as last assigned
    status: Doc | None = None  # the last status the agent reported for it
    handle: Doc | None = None  # the executor's handle while its process may be running
    stopping: bool = False     # the agent decided to stop it (so its disappearance is a shutdown, not a failure)

    @property
    def task_id(self) -> str:
        return str(self.task["ID"])

    def to_json(self) -> Doc:
        return {"Task": self.task, "Status": self.status, "Handle": self.handle, "Stopping": self.stopping}

    @classmethod
    def from_json(cls, doc: Doc) -> TaskRecord:
        return cls(task=doc["Task"], status=doc.get("Status"), handle=doc.get("Handle"),
                   stopping=bool(doc.get("Stopping")))


Row = tuple[str, str | None]  # (task id, record JSON); None deletes the row


class TaskDB:
    """Task records by task id, kept in memory and written through to SQLite in batches."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._records: dict[str, TaskRecord] = {}
        self._dirty: dict[str, TaskRecord | None] = {}
        self._generation = 0  # bumped by every change
        self._durable = 0     # the generation the file holds
        self._writing: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self.transactions = 0  # commits made, for tests and the debug endpoint
        self.rows_written = 0

    # ---- opening ----------------------------------------------------------------------------------------

    async def load(self) -> dict[str, TaskRecord]:
        """Open the database (creating it) and read every record; a format-1 JSON record is imported."""
        self._records = await asyncio.to_thread(self._open_and_read)
        self._dirty.clear()
        self._durable = self._generation
        return dict(self._records)

    def _open_and_read(self) -> dict[str, TaskRecord]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            conn = self._connect()
        except sqlite3.DatabaseError as exc:
            self._set_aside(exc)
            conn = self._connect()
        records: dict[str, TaskRecord] = {}
        for task_id, text in conn.execute("SELECT id, record FROM tasks"):
            try:
                records[task_id] = TaskRecord.from_json(codec.loads(text))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("task record %s in %s is unreadable (%s); dropped", task_id, self.path, exc)
        legacy = self.path.with_name(LEGACY_FILE)
        if legacy.exists():
            imported = _read_legacy(legacy)
            with conn:
                conn.executemany("INSERT OR REPLACE INTO tasks (id, record) VALUES (?, ?)",
                                 [(tid, codec.dumps_text(r.to_json())) for tid, r in imported.items()])
            records.update(imported)
            legacy.unlink()
            log.info("imported %d task records from %s", len(imported), legacy)
        return records

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (str(FORMAT_VERSION),))
        except sqlite3.DatabaseError:
            conn.close()
            raise
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        self._conn = conn
        return conn

    def _set_aside(self, exc: Exception) -> None:
        """An unreadable database is moved aside, not trusted (the manager then tells us what we run)."""
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            with contextlib.suppress(OSError):
                os.replace(source, Path(f"{self.path}.corrupt{suffix}"))
        log.error("task record %s is unreadable (%s); moved aside to %s.corrupt", self.path, exc, self.path)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        await self.flush()
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)

    # ---- reading and changing (in memory, at once) ------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    def all(self) -> list[TaskRecord]:
        return list(self._records.values())

    def put(self, record: TaskRecord) -> None:
        self._records[record.task_id] = record
        self._dirty[record.task_id] = record
        self._changed()

    def remove(self, task_id: str) -> None:
        if self._records.pop(task_id, None) is not None:
            self._dirty[task_id] = None
            self._changed()

    def _changed(self) -> None:
        self._generation += 1
        if self._writer is None or self._writer.done():
            # Written behind shortly even when nobody asks (e.g. a forgotten task's row removed).
            with contextlib.suppress(RuntimeError):  # no running loop: the next flush() writes it
                self._writer = asyncio.get_running_loop().create_task(self._write_behind())

    async def _write_behind(self) -> None:
        await asyncio.sleep(WRITE_BEHIND_DELAY)
        try:
            await self.flush()
        except Exception:
            log.exception("could not write the task record (%d changes pending)", len(self._dirty))

    def clear(self) -> None:
        for task_id in list(self._records):
            self.remove(task_id)

    @property
    def pending(self) -> int:
        """Changes not yet written."""
        return len(self._dirty)

    # ---- writing (batched, off the loop) ----------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every change made before the call is in the file."""
        target = self._generation
        while self._durable < target:
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write_dirty())
            await asyncio.shield(self._writing)

    async def _write_dirty(self) -> None:
        try:
            batch, self._dirty = self._dirty, {}
            generation = self._generation
            # Encoded here, on the loop: the documents are only ever replaced there, never while being read.
            rows: list[Row] = [(tid, None if rec is None else codec.dumps_text(rec.to_json()))
                               for tid, rec in batch.items()]
            try:
                if rows:
                    await asyncio.get_running_loop().run_in_executor(_writer(), self._write_rows, rows)
            except Exception:
                for task_id, record in batch.items():
                    self._dirty.setdefault(task_id, record)  # newer changes win
                raise
            self._durable = max(self._durable, generation)
        finally:
            self._writing = None

    def _write_rows(self, rows: list[Row]) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError("task record is not open: call load() first")
        puts = [(tid, text) for tid, text in rows if text is not None]
        deletes = [(tid,) for tid, text in rows if text is None]
        with conn:
            conn.execute("BEGIN")
            if puts:
                conn.executemany("INSERT OR REPLACE INTO tasks (id, record) VALUES (?, ?)", puts)
            if deletes:
                conn.executemany("DELETE FROM tasks WHERE id = ?", deletes)
        self.transactions += 1
        self.rows_written += len(rows)


_WRITER: ThreadPoolExecutor | None = None


def _writer() -> ThreadPoolExecutor:
    """Threads of their own for the record's writes, so they never queue behind other blocking work (process
    starts); shared by every TaskDB in the process (a thousand simulated nodes have one each)."""
    global _WRITER
    if _WRITER is None:
        _WRITER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="taskdb")
    return _WRITER


def _read_legacy(path: Path) -> dict[str, TaskRecord]:
    try:
        doc = json.loads(path.read_text())
        return {task_id: TaskRecord.from_json(entry) for task_id, entry in doc["Tasks"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("task record %s is unreadable (%s); ignored", path, exc)
        return {}
