"""The agent's task record: SQLite, one row per task, changes written in batches off the event loop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shoal.agent.taskdb import TaskDB, TaskRecord


def record(task_id: str, generation: int = 0) -> TaskRecord:
    return TaskRecord(task={"ID": task_id, "Spec": {"ContainerSpec": {"Image": "busybox"}}},
                      status={"State": "running", "Generation": generation}, handle={"PID": 1000 + generation})


async def opened(path: Path) -> TaskDB:
    db = TaskDB(path)
    await db.load()
    return db


async def test_records_round_trip_and_a_removed_one_is_gone(tmp_path: Path) -> None:
    db = await opened(tmp_path / "tasks.db")
    kept = TaskRecord(task={"ID": "t1"}, status={"State": "running"}, handle={"PID": 1}, stopping=True)
    db.put(kept)
    db.put(record("t2"))
    db.remove("t2")
    await db.close()

    assert await (await opened(tmp_path / "tasks.db")).load() == {"t1": kept}


async def test_changes_made_together_share_one_transaction(tmp_path: Path) -> None:
    db = await opened(tmp_path / "tasks.db")
    for index in range(100):
        db.put(record(f"t{index}"))

    await asyncio.gather(*(db.flush() for _ in range(10)))  # ten runners waiting for the same write

    assert (db.transactions, db.rows_written) == (1, 100)
    await db.close()


async def test_a_change_among_ten_thousand_records_writes_one_row(tmp_path: Path) -> None:
    # The record of the previous design rewrote every task on each change: O(n) per change, O(n^2) to start
    # n tasks. Counted by what SQLite is asked to do, not by time.
    db = await opened(tmp_path / "tasks.db")
    for index in range(10_000):
        db.put(record(f"t{index:05d}"))
    await db.flush()
    statements: list[str] = []
    assert db._conn is not None
    db._conn.set_trace_callback(statements.append)
    rows_before = db.rows_written

    db.put(record("t04242", generation=1))
    await db.flush()
    db.remove("t00007")
    await db.flush()

    assert db.rows_written - rows_before == 2
    writes = [s.split()[0].upper() for s in statements if s.split()[0].upper() in ("INSERT", "DELETE", "UPDATE")]
    assert writes == ["INSERT", "DELETE"]  # one row each: not the other 9,999
    assert sum(1 for s in statements if s.upper().startswith("COMMIT")) == 2
    db._conn.set_trace_callback(None)
    await db.close()
    reloaded = await (await opened(tmp_path / "tasks.db")).load()
    assert len(reloaded) == 9_999 and reloaded["t04242"].status == {"State": "running", "Generation": 1}


WRITER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from shoal.agent.taskdb import TaskDB, TaskRecord

    async def main():
        db = TaskDB(Path(sys.argv[1]))
        await db.load()
        generation = 0
        while True:
            generation += 1
            for index in range(200):  # every record moves to the next generation in one transaction
                db.put(TaskRecord(task={"ID": f"t{index}"}, status={"Generation": generation}))
            await db.flush()
            print(generation, flush=True)

    asyncio.run(main())
""")


def test_a_crash_between_writes_leaves_each_transaction_whole(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert writer.stdout is not None
        deadline = time.monotonic() + 30
        while int(writer.stdout.readline() or 0) < 20:  # well into its writes
            assert time.monotonic() < deadline and writer.poll() is None, "the writer did not get going"
        os.kill(writer.pid, signal.SIGKILL)  # mid-write, as likely as not
    finally:
        writer.kill()
        writer.wait()

    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT id, record FROM tasks").fetchall()
    generations = {json.loads(text)["Status"]["Generation"] for _, text in rows}
    assert len(rows) == 200
    assert len(generations) == 1, f"records from several transactions: {sorted(generations)}"


async def test_an_unreadable_database_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(b"this is not a database" * 100)

    assert await TaskDB(path).load() == {}
    assert (tmp_path / "tasks.db.corrupt").exists()


async def test_a_record_in_the_old_file_format_is_imported_and_the_file_removed(tmp_path: Path) -> None:
    (tmp_path / "tasks.json").write_text('{"Version": 1, "Tasks": {"t1": {"Task": {"ID": "t1"}, "Stopping": true}}}')

    loaded = await TaskDB(tmp_path / "tasks.db").load()

    assert loaded == {"t1": TaskRecord(task={"ID": "t1"}, stopping=True)}
    assert not (tmp_path / "tasks.json").exists()


async def test_a_failed_write_keeps_the_changes_for_the_next_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    db = await opened(tmp_path / "tasks.db")
    db.put(record("t1"))
    real = db._write_rows

    def failing(rows: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(db, "_write_rows", failing)
    with pytest.raises(OSError):
        await db.flush()
    monkeypatch.setattr(db, "_write_rows", real)
    await db.flush()
    await db.close()

    assert set(await (await opened(tmp_path / "tasks.db")).load()) == {"t1"}


def test_the_file_is_private(tmp_path: Path) -> None:
    async def make() -> None:
        db = await opened(tmp_path / "agent" / "tasks.db")
        await db.close()

    asyncio.run(make())
    assert (tmp_path / "agent" / "tasks.db").stat().st_mode & 0o077 == 0
