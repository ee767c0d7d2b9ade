"""Autolock: a manager's keys on disk sealed with the unlock key, opened only with it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shoal.certs import write_private
from shoal.errors import InvalidArgument
from shoal.manager.autolock import (
    UNLOCK_KEY_PREFIX,
    ManagerSecrets,
    MemoryFile,
    key_id,
    locked_path,
    new_unlock_key,
    read_unlock_key,
    set_unlock_key,
)
from shoal.manager.keys import new_manager_key
from shoal.manager.store.base import Batch

TLS_KEY = b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def secrets(tmp_path: Path) -> ManagerSecrets:
    files = ManagerSecrets(tmp_path / "node-key.pem", tmp_path / "manager.key")
    write_private(files.tls_key, TLS_KEY)
    write_private(files.manager_key, b"k" * 32)
    return files


def test_unlock_keys_have_dockers_format_and_differ() -> None:
    key = new_unlock_key()
    assert key.startswith(UNLOCK_KEY_PREFIX) and len(key) == len(UNLOCK_KEY_PREFIX) + 43
    assert new_unlock_key() != key and key_id(key) != key_id(new_unlock_key())


def test_locked_keys_are_on_disk_only_sealed(secrets: ManagerSecrets) -> None:
    key = new_unlock_key()
    secrets.lock(key, (TLS_KEY, b"k" * 32))

    assert secrets.is_locked() and secrets.sealed_with() == key_id(key)
    for path in secrets.paths:
        assert not path.exists()
        sealed = locked_path(path).read_bytes()
        assert b"PRIVATE KEY" not in sealed and b"k" * 32 not in sealed
        assert stat.S_IMODE(locked_path(path).stat().st_mode) == 0o600
    assert secrets.read(key) == (TLS_KEY, b"k" * 32)


def test_a_locked_manager_needs_the_right_key(secrets: ManagerSecrets) -> None:
    secrets.lock(new_unlock_key(), (TLS_KEY, b"k" * 32))
    with pytest.raises(InvalidArgument, match="locked"):
        secrets.read(None)
    with pytest.raises(InvalidArgument, match="does not open"):
        secrets.read(new_unlock_key())
    for typo in ("SWMKEY-1-abc", "nonsense", ""):
        with pytest.raises(InvalidArgument, match="invalid unlock key"):
            secrets.read(typo)


def test_rotation_seals_again_and_turning_off_restores_clear_files(secrets: ManagerSecrets) -> None:
    old, new = new_unlock_key(), new_unlock_key()
    secrets.lock(old, (TLS_KEY, b"k" * 32))
    secrets.lock(new, secrets.read(old))
    assert secrets.sealed_with() == key_id(new)
    with pytest.raises(InvalidArgument):
        secrets.read(old)

    secrets.unlock(secrets.read(new))
    assert not secrets.is_locked() and secrets.sealed_with() is None
    assert secrets.read(None) == (TLS_KEY, b"k" * 32)


def test_the_stored_unlock_key_is_sealed_with_the_managers_key() -> None:
    manager_key, unlock_key = new_manager_key(), new_unlock_key()
    cluster: dict[str, object] = {}
    batch = Batch()
    set_unlock_key(batch, cluster, unlock_key, manager_key)

    (op,) = batch.ops
    assert op.raw is not None and unlock_key.encode() not in op.raw
    assert read_unlock_key(op.raw, manager_key) == unlock_key
    assert cluster["ShoalUnlockKeyID"] == key_id(unlock_key)
    set_unlock_key(batch, cluster, None, manager_key)
    assert cluster["ShoalUnlockKeyID"] == "" and read_unlock_key(batch.ops[-1].raw, manager_key) is None


def test_memory_files_are_readable_by_path_and_gone_when_closed() -> None:
    memory = MemoryFile("node-key", TLS_KEY)
    assert memory.path.read_bytes() == TLS_KEY
    assert memory.path.read_bytes() == TLS_KEY  # each open reads from the start
    memory.close()
    assert not memory.path.exists()
