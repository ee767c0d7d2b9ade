"""Autolock: a manager's secrets on disk are sealed with the swarm's unlock key, which only people hold.

With `EncryptionConfig.AutoLockManagers` on, each manager keeps its TLS key and the managers' key (which opens
the CA keys in the store) on disk only sealed with a key derived from the unlock key. A manager that restarts
cannot read them, so it stays locked, serving nothing of the swarm, until someone gives the key with
`shoal swarm unlock`. While it runs, the clear keys live in memory only (memfd files that vanish with the
process), and etcd and the lease keeper read them from there.

The unlock key itself is kept in the store, sealed with the managers' key (`swarm unlock-key` shows it to a
manager's user), and a rotation seals every manager's files again under the new key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal import codec
from shoal.certs import write_private
from shoal.errors import InvalidArgument
from shoal.manager.keys import seal, unseal
from shoal.manager.store.base import PREFIX, Batch
from shoal.spec import UNLOCK_KEY_ID
from shoal.types import Doc

# Where the swarm keeps its unlock key (sealed with the managers' key), and the cluster document's field naming
# the current key (not the key: the cluster document is served to every manager's clients).
UNLOCK_KEY_STORE = PREFIX + "unlock-key"
UNLOCK_KEY_PREFIX = "SWMKEY-1-"
UNLOCK_KEY_BYTES = 32
LOCKED_SUFFIX = ".locked"
SEAL_PURPOSE = b"shoal autolock"


def new_unlock_key() -> str:
    """A fresh key in Docker's format: SWMKEY-1- and 32 random bytes in base64 without padding."""
    return UNLOCK_KEY_PREFIX + base64.b64encode(secrets.token_bytes(UNLOCK_KEY_BYTES)).decode().rstrip("=")


def key_id(unlock_key: str) -> str:
    """A name for the key that reveals nothing of it: which key sealed a manager's files."""
    return hashlib.sha256(b"shoal unlock key id\0" + unlock_key.encode()).hexdigest()[:16]


def _sealing_key(unlock_key: str) -> bytes:
    text = unlock_key.strip()
    if not text.startswith(UNLOCK_KEY_PREFIX):
        raise InvalidArgument("invalid unlock key: it starts with SWMKEY-1- (print it on an unlocked manager "
                              "with \"shoal swarm unlock-key\")")
    body = text[len(UNLOCK_KEY_PREFIX):]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != UNLOCK_KEY_BYTES:
        raise InvalidArgument("invalid unlock key: it is not a key this swarm could have made (check for a typo)")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SEAL_PURPOSE).derive(raw)


def autolock_on(cluster: Doc) -> bool:
    return bool(((cluster.get("Spec") or {}).get("EncryptionConfig") or {}).get("AutoLockManagers"))


def set_unlock_key(batch: Batch, cluster: Doc, unlock_key: str | None, manager_key: bytes) -> None:
    """Record a new unlock key (None: autolock off, no key) in the cluster document and the store."""
    cluster[UNLOCK_KEY_ID] = key_id(unlock_key) if unlock_key else ""
    sealed = seal(manager_key, unlock_key.encode(), UNLOCK_KEY_STORE.encode()) if unlock_key else b""
    batch.put_raw(UNLOCK_KEY_STORE, sealed)


def read_unlock_key(raw: bytes | None, manager_key: bytes) -> str | None:
    if not raw:
        return None
    return unseal(manager_key, raw, UNLOCK_KEY_STORE.encode()).decode()


def locked_path(path: Path) -> Path:
    return path.with_name(path.name + LOCKED_SUFFIX)


@dataclass(frozen=True)
class ManagerSecrets:
    """The files autolock seals: the node's TLS key and the managers' key."""

    tls_key: Path
    manager_key: Path

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.tls_key, self.manager_key

    def is_locked(self) -> bool:
        return locked_path(self.manager_key).exists()

    def read(self, unlock_key: str | None) -> tuple[bytes, bytes]:
        """The clear (TLS key, managers' key); sealed files need the unlock key (InvalidArgument if wrong)."""
        if not self.is_locked():
            return self.tls_key.read_bytes(), self.manager_key.read_bytes()
        if unlock_key is None:
            raise InvalidArgument("this manager is locked: unlock it with \"shoal swarm unlock\"")
        sealing = _sealing_key(unlock_key)
        try:
            return _open(sealing, locked_path(self.tls_key)), _open(sealing, locked_path(self.manager_key))
        except InvalidArgument:
            raise InvalidArgument("invalid unlock key: it does not open this manager's keys") from None

    def lock(self, unlock_key: str, clear: tuple[bytes, bytes]) -> None:
        """Seal the secrets under `unlock_key` (again, for a rotation) and remove any clear copy from disk."""
        sealing = _sealing_key(unlock_key)
        for path, data in zip(self.paths, clear, strict=True):
            write_private(locked_path(path), codec.dumps({"key_id": key_id(unlock_key),
                                                          "sealed": base64.b64encode(
                                                              seal(sealing, data, SEAL_PURPOSE)).decode()}))
        for path in self.paths:
            path.unlink(missing_ok=True)

    def unlock(self, clear: tuple[bytes, bytes]) -> None:
        """Autolock turned off: the secrets go back to disk in clear (owner-only files)."""
        for path, data in zip(self.paths, clear, strict=True):
            write_private(path, data)
        for path in self.paths:
            locked_path(path).unlink(missing_ok=True)

    def sealed_with(self) -> str | None:
        """The ID of the unlock key the files are sealed with, or None when they are in clear."""
        try:
            return str(codec.loads(locked_path(self.manager_key).read_bytes())["key_id"])
        except (OSError, ValueError, KeyError):
            return None


def _open(sealing: bytes, path: Path) -> bytes:
    record = codec.loads(path.read_bytes())
    return unseal(sealing, base64.b64decode(record["sealed"]), SEAL_PURPOSE)


class MemoryFile:
    """A file that lives in memory only (memfd), readable by path by this process and its children (root):
    the clear TLS key of a locked manager, for etcd and the lease keeper."""

    def __init__(self, name: str, data: bytes) -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.write(self.fd, data)
        self.path = Path(f"/proc/{os.getpid()}/fd/{self.fd}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
