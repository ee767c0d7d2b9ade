"""The restart policy: whether a task that ended is replaced, and when.

Restart history lives in the task documents, not in the leader's memory, so it survives leader changes.
A task created by a restart carries

    "Restarts": [unix time, ...]

the times of the restarts of its slot (or, for a global service, of its node) so far, its own creation
included, trimmed to the policy's Window. It is recorded only when the policy has MaxAttempts, since an
unlimited policy never needs to count. A replacement made for another reason (node failure, drain) copies
the list forward unchanged; a task running a new spec starts with none, as swarmkit forgets the history when
the spec changes.

Durations in a policy (Delay, Window) are nanoseconds, as in Docker's API.
"""

from __future__ import annotations

from shoal.errors import InvalidArgument
from shoal.timefmt import SECOND, from_rfc3339
from shoal.types import Doc, RestartCondition, TaskState, task_state
from shoal.types import restart_policy as _with_defaults

RESTARTS = "Restarts"


def normalized(policy: Doc | None) -> Doc:
    """The policy with swarmkit's defaults filled in (condition any, delay 5 s, unlimited attempts)."""
    return _with_defaults({"RestartPolicy": policy or {}})


def should_restart(policy: Doc, task: Doc) -> bool:
    """Whether the policy's condition replaces a task that ended in its current observed state.

    on-failure means the task failed or was rejected; a task that completed (exit 0) is not a failure.
    """
    state = task_state(task)
    if not state.terminal:
        return False
    condition = normalized(policy)["Condition"]
    if condition == RestartCondition.NONE:
        return False
    if condition == RestartCondition.ON_FAILURE:
        return state in (TaskState.FAILED, TaskState.REJECTED)
    return True


def restarts_of(task: Doc) -> list[float]:
    return [float(t) for t in task.get(RESTARTS) or []]


def ended_at(task: Doc, now: float) -> float:
    """When the task ended, by its status timestamp; never later than `now` (an agent's clock may run ahead)."""
    text = (task.get("Status") or {}).get("Timestamp")
    if not text:
        return now
    try:
        return min(from_rfc3339(text), now)
    except (ValueError, InvalidArgument):
        return now


def _window_seconds(policy: Doc) -> float:
    return float(policy.get("Window") or 0) / SECOND


def in_window(policy: Doc, restarts: list[float], at: float) -> list[float]:
    """The restarts that count at time `at`: all of them with no Window, else those within Window before it."""
    window = _window_seconds(normalized(policy))
    if window <= 0:
        return list(restarts)
    return [r for r in restarts if r > at - window]


def restart_at(policy: Doc, ended_task: Doc, restarts_in_window: list[float], now: float) -> float | None:
    """The earliest time to create the replacement of `ended_task`, or None to not restart it.

    None when the condition does not apply or MaxAttempts restarts already happened within Window before the
    task ended (any time, with no Window). Otherwise the task's end plus Delay.
    """
    if not should_restart(policy, ended_task):
        return None
    full = normalized(policy)
    end = ended_at(ended_task, now)
    max_attempts = int(full.get("MaxAttempts") or 0)
    if max_attempts > 0 and len(in_window(full, restarts_in_window, end)) >= max_attempts:
        return None
    return end + float(full.get("Delay") or 0) / SECOND


def history_for_restart(policy: Doc, ended_task: Doc, now: float) -> list[float]:
    """The `Restarts` list for the task that replaces `ended_task` by a restart made at `now`."""
    full = normalized(policy)
    if not int(full.get("MaxAttempts") or 0):
        return []
    return in_window(full, restarts_of(ended_task), now) + [now]


def history_carried_forward(policy: Doc, previous_task: Doc, now: float) -> list[float]:
    """The `Restarts` list for a replacement that is not itself a restart (node failure, drain)."""
    return in_window(policy, restarts_of(previous_task), now)
