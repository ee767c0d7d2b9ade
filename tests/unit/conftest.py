"""Fixtures every unit test module may use by name."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator

import pytest

from tests.unit.agent_fixtures import pids_with


@pytest.fixture
def marker() -> Iterator[str]:
    """A word put in a test process's command line; whatever still carries it at the end is killed."""
    word = f"shoal-test-{uuid.uuid4().hex}"
    yield word
    for pid in pids_with(word):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
