"""Executors run tasks on this node: `process` (host processes, the default), `docker` (containers) and `sim`
(simulated tasks, for benchmarks); see `base` for the interface."""

from shoal.agent.executor.base import (
    Controller,
    Executor,
    ExecutorError,
    ExitStatusUnknown,
    LogLine,
    TaskRejected,
)

__all__ = ["Controller", "Executor", "ExecutorError", "ExitStatusUnknown", "LogLine", "TaskRejected"]
