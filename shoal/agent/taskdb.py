"""The agent's local record of its assigned tasks, so a restarted agent knows which processes are its own.

One JSON file (`<state_dir>/tasks.json`), rewritten whole and atomically (temporary file, fsync, os.replace) on
every change: after a crash it holds either the old or the new record, never half of one. It is small (one entry
per assigned task) and changes only on task state transitions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shoal.types import Doc

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


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


class TaskDB:
    """Task records by task id, kept in memory and written through to disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._records: dict[str, TaskRecord] = {}

    def load(self) -> dict[str, TaskRecord]:
        """Read the file (a missing file is an empty record). An unreadable file is set aside, not trusted."""
        self._records = {}
        try:
            doc = json.loads(self.path.read_text())
            self._records = {task_id: TaskRecord.from_json(entry) for task_id, entry in doc["Tasks"].items()}
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_suffix(".corrupt")
            log.error("task record %s is unreadable (%s); moved to %s", self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
        return dict(self._records)

    def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    def all(self) -> list[TaskRecord]:
        return list(self._records.values())

    def put(self, record: TaskRecord) -> None:
        self._records[record.task_id] = record
        self._save()

    def remove(self, task_id: str) -> None:
        if self._records.pop(task_id, None) is not None:
            self._save()

    def clear(self) -> None:
        self._records = {}
        self._save()

    def _save(self) -> None:
        doc = {"Version": FORMAT_VERSION,
               "Tasks": {task_id: record.to_json() for task_id, record in self._records.items()}}
        write_atomically(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers (and a crash) see either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
