"""What the agent-side unit tests share: finding test processes, and a recorder of the worker's reports."""

from __future__ import annotations

from pathlib import Path

from shoal.types import Doc
from tests.unit.waiting import wait_until


def pids_with(marker: str) -> list[int]:
    """Live processes whose command line mentions `marker` (zombies have an empty command line), leaving out
    a child forked by one of them that has not exec'd yet (for that instant it carries its parent's command
    line: a shell loop forking `sleep` would otherwise show up twice now and then)."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    stat = (entry / "stat").read_text()
                    found[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return sorted(pid for pid, parent in found.items() if parent not in found)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


async def shell_past_its_trap(pgid: int) -> None:
    """Wait until a test task's shell has started a child, so the `trap` before it is in force: a signal sent
    earlier would meet the shell's default handling."""
    await wait_until(lambda: len(group_members(pgid)) >= 2)


class Reports:
    """What the worker reported, in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Doc]] = []

    def __call__(self, task_id: str, status: Doc) -> None:
        self.entries.append((task_id, status))

    def states(self, task_id: str) -> list[str]:
        return [status["State"] for tid, status in self.entries if tid == task_id]

    def last(self, task_id: str) -> Doc:
        return [status for tid, status in self.entries if tid == task_id][-1]

    async def reach(self, task_id: str, state: str) -> Doc:
        await wait_until(lambda: state in self.states(task_id))
        return [status for tid, status in self.entries if tid == task_id and status["State"] == state][-1]
