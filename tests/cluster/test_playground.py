"""`shoal playground` through the CLI, as the README uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal import playground
from tests.cluster.conftest import _subnet

pytestmark = pytest.mark.cluster


def test_playground_up_ls_down(tmp_path: Path) -> None:
    base = tmp_path / "pg"
    env = dict(os.environ, SHOAL_PLAYGROUND_DIR=str(base))
    env.pop("SHOAL_HOST", None)

    def shoal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    try:
        up = shoal("playground", "up", "--managers", "1", "--workers", "1", "--subnet", _subnet())
        assert up.returncode == 0, up.stderr
        listed = json.loads(shoal("playground", "ls", "--json").stdout)
        assert [n["name"] for n in listed] == ["manager1", "worker1"]
        assert all(set(n) == {"name", "role", "address", "pid", "socket", "state_dir"} for n in listed)
        assert [n["role"] for n in listed] == ["manager", "worker"]
        # With no host given, the CLI talks to the playground's first manager.
        ls = shoal("node", "ls")
        assert ls.returncode == 0 and "manager1" in ls.stdout and "worker1" in ls.stdout
        again = shoal("playground", "up")
        assert again.returncode != 0 and "already running" in again.stderr
        shoal("service", "create", "-d", "--replicas", "2", "busybox", "sleep", "600")
        down = shoal("playground", "down")
        assert down.returncode == 0
        assert not base.exists()
        assert not any(playground._alive(n["pid"]) for n in listed)
    finally:
        playground.down(lambda _: None, base)
