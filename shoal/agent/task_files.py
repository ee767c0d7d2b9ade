"""A node's secrets and configs: held in memory as the dispatcher sends them, written only to a tmpfs.

The values arrive with the assignment of a task that uses them and are dropped when the manager says no task
here needs them any more (see shoal.manager.dependencies). They are never written to the node's disk and
never logged: each task that mounts some gets a directory of its own on a tmpfs,

    /dev/shm/shoal/<daemon>/<task ID>/secrets/<target>    (secrets)
    /dev/shm/shoal/<daemon>/<task ID>/configs/<target>    (configs; an absolute target loses its leading /)

owned by the task's user with mode 0700, holding each file with its reference's UID, GID and Mode. The
process executor hands the task these paths (`$SHOAL_SECRETS_DIR`, `$SHOAL_CONFIGS_DIR`); the docker
executor bind-mounts each file read-only at its container path. The directory is removed when the task ends.
A node whose /dev/shm is not a tmpfs refuses tasks that mount secrets rather than put them on a disk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shoal.agent.executor.base import ExecutorError, TaskRejected
from shoal.task_files import CONFIG, SECRET, BadReference, DependencyKey, FileRef, task_references
from shoal.types import Doc

T = TypeVar("T")
SHM = Path("/dev/shm")
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
KIND_DIRS = {SECRET: "secrets", CONFIG: "configs"}


def default_root(state_dir: Path) -> Path:
    """Where a daemon keeps its tasks' files: one folder per daemon (a playground runs several on one host)."""
    tag = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]
    return SHM / "shoal" / tag


def filesystem_of(path: Path, mountinfo: str) -> str:
    """The type of the file system `path` lives on, from /proc/self/mountinfo's text."""
    best, kind = "", ""
    target = str(path)
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        mount_point = parts[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, rest.split()[0]
    return kind


async def files_off_loop(call: Callable[..., T], *args: Any) -> T:
    """File work on a thread; a file system error is a temporary executor error."""
    try:
        return await asyncio.to_thread(call, *args)
    except OSError as exc:
        raise ExecutorError(f"cannot write the task's secrets and configs: {exc}") from exc


@dataclass(frozen=True)
class PlacedFile:
    ref: FileRef
    path: Path  # on the node, inside the task's directory


class TaskFiles:
    """The values this node holds, and the task directories written from them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._values: dict[DependencyKey, bytes] = {}
        self._memory_backed: bool | None = None

    # ---- what the dispatcher sends ----------------------------------------------------------------------

    def receive(self, message: Doc) -> None:
        """Take the values an assignment carries (a full assignment replaces them all)."""
        if message.get("full"):
            self._values.clear()
        for kind, key in ((SECRET, "secrets"), (CONFIG, "configs")):
            for item in message.get(key) or []:
                try:
                    self._values[(kind, str(item["ID"]))] = base64.b64decode(str(item["Data"]), validate=True)
                except (KeyError, TypeError, binascii.Error, ValueError):
                    continue  # a malformed item: the tasks that need it are rejected for want of it

    def forget(self, message: Doc) -> None:
        """Drop the values no task of this node needs any more (after the assignment's tasks were applied)."""
        gone = message.get("forget") or {}
        for kind, key in ((SECRET, "secrets"), (CONFIG, "configs")):
            for obj_id in gone.get(key) or []:
                self._values.pop((kind, str(obj_id)), None)

    def held(self) -> set[DependencyKey]:
        return set(self._values)

    # ---- a task's directory (blocking file work: call from a thread) --------------------------------------

    def task_dir(self, task_id: str) -> Path:
        return self.root / task_id

    def kind_dir(self, task_id: str, kind: str) -> Path:
        return self.task_dir(task_id) / KIND_DIRS[kind]

    def write(self, task: Doc, owner: tuple[int, int] | None) -> list[PlacedFile]:
        """Put the task's files in place; `owner` (uid, gid) is whom the task runs as (None: this process's
        user). Raises TaskRejected when a reference is malformed, a value was not delivered, or /dev/shm is no
        tmpfs."""
        try:
            refs = task_references(task)
        except BadReference as exc:
            raise TaskRejected(str(exc)) from None
        if not refs:
            return []
        self._check_memory_backed()
        task_id = str(task["ID"])
        missing = [f"{ref.kind} {ref.name or ref.obj_id}" for ref in refs if (ref.kind, ref.obj_id) not in self._values]
        if missing:
            raise TaskRejected(f"not delivered to this node: {', '.join(missing)} (removed since the task was made?)")
        uid, gid = owner if owner is not None else (os.getuid(), os.getgid())
        self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chmod(self.root, 0o711)  # others may pass through to their own task's folder, not list it
        base = self.task_dir(task_id)
        self._private_dir(base, uid, gid)
        placed = []
        for ref in refs:
            path = self.kind_dir(task_id, ref.kind) / ref.relative_path
            folder = base
            for part in path.relative_to(base).parts[:-1]:
                folder = folder / part
                self._private_dir(folder, uid, gid)
            self._write_file(path, self._values[(ref.kind, ref.obj_id)], ref)
            placed.append(PlacedFile(ref, path))
        return placed

    def remove(self, task_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.task_dir(task_id))

    def _check_memory_backed(self) -> None:
        if self._memory_backed is None:
            try:
                mountinfo = Path("/proc/self/mountinfo").read_text()
            except OSError:
                mountinfo = ""
            self._memory_backed = filesystem_of(self.root, mountinfo) in MEMORY_FILESYSTEMS
        if not self._memory_backed:
            raise TaskRejected(f"{self.root.parent} is not on a tmpfs: this node does not write secrets to a disk "
                               "(mount a tmpfs on /dev/shm)")

    @staticmethod
    def _private_dir(folder: Path, uid: int, gid: int) -> None:
        folder.mkdir(exist_ok=True, mode=0o700)
        if folder.is_symlink() or not folder.is_dir():
            raise TaskRejected(f"{folder} is not a directory")
        if os.geteuid() == 0:  # an agent that is not root runs every task as itself
            os.chown(folder, uid, gid)
        os.chmod(folder, 0o700)

    @staticmethod
    def _write_file(path: Path, data: bytes, ref: FileRef) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a fresh file: never one another process holds open or linked elsewhere
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if os.geteuid() == 0:
                os.fchown(fd, ref.uid, ref.gid)
            os.fchmod(fd, ref.mode)
        finally:
            os.close(fd)
