"""The restart policy: conditions, delay from the task's end, MaxAttempts within Window."""

from __future__ import annotations

import pytest

from shoal.manager.orchestrator.restart import history_for_restart, restart_at, should_restart
from shoal.timefmt import SECOND, to_rfc3339
from shoal.types import Doc

NOW = 1_800_000_000.0


def ended(state: str, at: float = NOW - 1, restarts: list[float] | None = None) -> Doc:
    task: Doc = {"ID": "t1", "Status": {"State": state, "Timestamp": to_rfc3339(at)}, "DesiredState": "running"}
    if restarts is not None:
        task["Restarts"] = restarts
    return task


@pytest.mark.parametrize(
    ("condition", "state", "expected"),
    [
        ("any", "complete", True),
        ("any", "failed", True),
        ("any", "shutdown", True),
        ("", "failed", True),
        ("on-failure", "failed", True),
        ("on-failure", "rejected", True),
        ("on-failure", "complete", False),
        ("on-failure", "shutdown", False),
        ("none", "failed", False),
        ("any", "running", False),
    ],
)
def test_should_restart(condition: str, state: str, expected: bool) -> None:
    assert should_restart({"Condition": condition}, ended(state)) is expected


def test_default_policy_restarts_any_end() -> None:
    assert should_restart({}, ended("complete"))


def test_restart_at_is_end_plus_delay_default_five_seconds() -> None:
    assert restart_at({}, ended("failed", at=NOW - 2), [], NOW) == pytest.approx(NOW + 3)
    assert restart_at({"Delay": 30 * SECOND}, ended("failed", at=NOW - 2), [], NOW) == pytest.approx(NOW + 28)
    assert restart_at({"Delay": 0}, ended("failed", at=NOW - 2), [], NOW) == pytest.approx(NOW - 2)


def test_restart_at_never_trusts_an_end_time_in_the_future() -> None:
    assert restart_at({"Delay": 0}, ended("failed", at=NOW + 3600), [], NOW) == pytest.approx(NOW)


def test_restart_at_is_none_when_the_condition_does_not_apply() -> None:
    assert restart_at({"Condition": "none"}, ended("failed"), [], NOW) is None
    assert restart_at({"Condition": "on-failure"}, ended("complete"), [], NOW) is None


def test_max_attempts_without_window_counts_every_restart() -> None:
    policy = {"MaxAttempts": 2, "Delay": 0}
    assert restart_at(policy, ended("failed"), [NOW - 9000], NOW) is not None
    assert restart_at(policy, ended("failed"), [NOW - 9000, NOW - 8000], NOW) is None


def test_max_attempts_within_window_counts_only_recent_restarts() -> None:
    policy = {"MaxAttempts": 2, "Delay": 0, "Window": 60 * SECOND}
    task = ended("failed", at=NOW - 1)
    assert restart_at(policy, task, [NOW - 120, NOW - 90], NOW) is not None
    assert restart_at(policy, task, [NOW - 120, NOW - 30], NOW) is not None
    assert restart_at(policy, task, [NOW - 50, NOW - 30], NOW) is None


def test_history_for_a_restart_is_trimmed_to_the_window_and_adds_now() -> None:
    policy = {"MaxAttempts": 3, "Window": 60 * SECOND}
    assert history_for_restart(policy, ended("failed", restarts=[NOW - 100, NOW - 10]), NOW) == [NOW - 10, NOW]
    assert history_for_restart({"MaxAttempts": 3}, ended("failed", restarts=[NOW - 100]), NOW) == [NOW - 100, NOW]
    assert history_for_restart({}, ended("failed", restarts=[NOW - 100]), NOW) == [], "unlimited: no history"
