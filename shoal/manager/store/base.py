"""The store's contract: JSON documents under kind prefixes, optimistic concurrency on versions.

Every object is one key `/shoal/<kind>/<id>` holding its JSON document. The document's `Version.Index` is the
store revision at which it was last written (etcd's mod_revision), so a write that carries the version it read is
refused with "update out of sequence" when someone else wrote in between. Writes are grouped into batches that
commit atomically; a batch can be fenced on the leader key so a deposed leader cannot write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shoal import codec
from shoal.errors import Conflict, SequenceConflict
from shoal.types import Doc

PREFIX = "/shoal/"
CA_KEY = PREFIX + "ca"
DATA_KEY_STORE = PREFIX + "data-key"  # the key that seals secrets, wrapped with the managers' key
LEADER_KEY = PREFIX + "leader"
MEMBERS_PREFIX = PREFIX + "members/"


def object_key(kind: str, obj_id: str) -> str:
    return f"{PREFIX}{kind}/{obj_id}"


def name_key(kind: str, name: str) -> str:
    """The key that reserves a unique name (services), written in the same transaction as the object."""
    return f"{PREFIX}names/{kind}/{name}"


def split_key(key: str) -> tuple[str, str] | None:
    """`/shoal/tasks/abc` -> ("tasks", "abc"); None for keys that are not objects."""
    if not key.startswith(PREFIX):
        return None
    parts = key[len(PREFIX):].split("/")
    if len(parts) != 2 or parts[0] in ("names", "members"):
        return None
    return parts[0], parts[1]


def encode(doc: Doc) -> bytes:
    """The stored form: the document without its Version (the store's revision is the version)."""
    body = {k: v for k, v in doc.items() if k != "Version"}
    return codec.dumps(body)


def decode(raw: bytes, revision: int) -> Doc:
    doc: Doc = codec.loads(raw)
    doc["Version"] = {"Index": revision}
    return doc


OpKind = Literal["create", "update", "delete", "put"]


@dataclass
class Op:
    kind: OpKind
    key: str
    doc: Doc | None = None
    # For update/delete: the version the writer read; 0 means "do not check".
    expect_version: int = 0
    # A unique-name key written (create) or released (delete) in the same transaction.
    name_key: str | None = None
    raw: bytes | None = None  # the value of a "put"; of a create or update, `doc` encoded (when done already)


@dataclass
class Batch:
    """Writes that commit together or not at all."""

    ops: list[Op] = field(default_factory=list)

    def create(self, kind: str, doc: Doc, unique_name: str | None = None) -> Batch:
        nkey = name_key(kind, unique_name) if unique_name is not None else None
        self.ops.append(Op("create", object_key(kind, doc["ID"]), doc, name_key=nkey))
        return self

    def update(self, kind: str, doc: Doc, check_version: bool = True) -> Batch:
        version = int((doc.get("Version") or {}).get("Index") or 0) if check_version else 0
        self.ops.append(Op("update", object_key(kind, doc["ID"]), doc, expect_version=version))
        return self

    def delete(self, kind: str, doc: Doc, unique_name: str | None = None, check_version: bool = True) -> Batch:
        version = int((doc.get("Version") or {}).get("Index") or 0) if check_version else 0
        nkey = name_key(kind, unique_name) if unique_name is not None else None
        self.ops.append(Op("delete", object_key(kind, doc["ID"]), doc, expect_version=version, name_key=nkey))
        return self

    def put_raw(self, key: str, value: bytes) -> Batch:
        self.ops.append(Op("put", key, raw=value))
        return self

    def __len__(self) -> int:
        return len(self.ops)


@dataclass
class Event:
    """One committed change, published only after commit (etcd watch)."""

    action: Literal["put", "delete"]
    kind: str
    obj_id: str
    doc: Doc | None  # None for deletes
    revision: int


@dataclass
class Snapshot:
    docs: dict[str, dict[str, Doc]]
    revision: int


def failed_checks(ops: list[Op], revisions: Mapping[str, int]) -> Conflict | None:
    """Why a batch cannot commit against the keys' current mod revisions (0 or absent: no such key): the
    error for the first failing operation, naming every failing key; None when all checks pass."""
    failing: list[str] = []
    first: Conflict | None = None
    for op in ops:
        current = revisions.get(op.key, 0)
        error: Conflict | None = None
        if op.kind == "create":
            if op.name_key and revisions.get(op.name_key, 0):
                name = op.name_key.rsplit("/", 1)[-1]
                error = Conflict(f"rpc error: code = AlreadyExists desc = name conflicts with an existing object: {name}")
            elif current:
                error = Conflict(f"object {op.key.rsplit('/', 1)[-1]} already exists")
        elif op.kind in ("update", "delete") and (
                (op.expect_version and current != op.expect_version) or (op.kind == "update" and not current)):
            error = SequenceConflict()
        if error is not None:
            failing.append(op.key)
            first = first or error
    if first is None:
        return None
    first.keys = failing
    return first


def checked_keys(ops: list[Op]) -> list[str]:
    """The keys whose current revisions `failed_checks` needs."""
    keys = []
    for op in ops:
        if op.kind != "put":
            keys.append(op.key)
        if op.kind == "create" and op.name_key:
            keys.append(op.name_key)
    return keys


class Store(Protocol):
    """The one source of truth. Implemented by EtcdStore (real) and MemoryStore (unit tests)."""

    # The most operations one commit may carry (writers split larger batches).
    max_ops: int

    async def get(self, kind: str, obj_id: str) -> Doc | None: ...

    async def list_kind(self, kind: str) -> list[Doc]: ...

    async def commit(self, batch: Batch, fence: str | None = None) -> int:
        """Commit atomically; returns the revision. Raises SequenceConflict (stale version or object gone),
        Conflict (name taken / object exists) or NotLeader (fence failed); a conflict names every failing key
        (`failed_checks`)."""
        ...

    async def snapshot(self) -> Snapshot: ...

    def watch(self, from_revision: int) -> AsyncIterator[list[Event]]: ...

    async def get_raw(self, key: str) -> bytes | None: ...

    async def put_raw_if_absent(self, key: str, value: bytes) -> bytes: ...

    async def close(self) -> None: ...
