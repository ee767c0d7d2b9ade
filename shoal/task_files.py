"""The secrets and configs a task mounts: references in its ContainerSpec, read the same way by the API (to
check a spec) and by the agent (to put the files in place).

A reference is Docker's `SecretReference` / `ConfigReference`:
`{"SecretID", "SecretName", "File": {"Name", "UID", "GID", "Mode"}}` (configs: `ConfigID`, `ConfigName`).
The file's `Name` is its target: a secret's relative target lives under /run/secrets, a config's under /,
and an absolute target is used as given (Docker's rules). UID and GID are numeric strings, "0" by default;
Mode defaults to 0444.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from shoal.types import Doc

SECRET = "secret"
CONFIG = "config"
SECRETS_DIR = "/run/secrets"
DEFAULT_MODE = 0o444
# (kind, object ID): what a node is given to hold for its tasks.
DependencyKey = tuple[str, str]
# The keys each kind's references use.
KEYS = {SECRET: ("Secrets", "SecretID", "SecretName"), CONFIG: ("Configs", "ConfigID", "ConfigName")}


class BadReference(ValueError):
    """A malformed reference; the message says which and how to fix it."""


@dataclass(frozen=True)
class FileRef:
    """One file a task mounts."""

    kind: str  # SECRET or CONFIG
    obj_id: str
    name: str  # the secret's or config's name
    target: str  # as given in File.Name
    uid: int
    gid: int
    mode: int

    @property
    def container_path(self) -> str:
        """Where the file appears inside a container."""
        if self.target.startswith("/"):
            return self.target
        return f"{SECRETS_DIR}/{self.target}" if self.kind == SECRET else f"/{self.target}"

    @property
    def relative_path(self) -> str:
        """Where the file goes under a task's own directory for its kind (the process executor's layout)."""
        return self.target.lstrip("/")


def _numeric(value: object, what: str, where: str) -> int:
    text = "0" if value in (None, "") else value
    if not isinstance(text, str) or not text.isdigit():
        raise BadReference(f'{where}.File.{what} must be a numeric id in a string such as "1000" (got {text!r})')
    return int(text)


def _target(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadReference(f'{where}.File.Name must name the target file, e.g. "db_password" (got {value!r})')
    parts = PurePosixPath(value).parts
    if "\0" in value or ".." in parts or value.endswith("/") or value in ("/", "."):
        raise BadReference(f"{where}.File.Name {value!r} is not a file path: no '..', no trailing '/'")
    return value


def references(container: Doc, kind: str, path: str = "ContainerSpec") -> list[FileRef]:
    """The task's references of one kind, checked for shape (not whether the objects exist)."""
    list_key, id_key, name_key = KEYS[kind]
    raw = container.get(list_key) or []
    if not isinstance(raw, list):
        raise BadReference(f"{path}.{list_key} must be a list of references")
    found = []
    for index, ref in enumerate(raw):
        where = f"{path}.{list_key}[{index}]"
        if not isinstance(ref, dict):
            raise BadReference(f"{where} must be a JSON object such as "
                               f'{{"{name_key}": "db_password", "File": {{"Name": "db_password"}}}}')
        if kind == CONFIG and ref.get("Runtime") is not None:
            raise BadReference(f"{where}.Runtime: runtime config targets (Windows credential specs) are not "
                               "supported; use File")
        obj_id, name = ref.get(id_key) or "", ref.get(name_key) or ""
        if not isinstance(obj_id, str) or not isinstance(name, str) or not (obj_id or name):
            raise BadReference(f"{where} must name the {kind} ({name_key}) or give its ID ({id_key})")
        file = ref.get("File")
        if file is None:
            file = {"Name": name}
        if not isinstance(file, dict):
            raise BadReference(f'{where}.File must be a JSON object such as {{"Name": "db_password"}}')
        mode = file.get("Mode", DEFAULT_MODE)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise BadReference(f"{where}.File.Mode must be a file mode between 0 and 0o7777 (got {mode!r})")
        found.append(FileRef(kind, obj_id, name, _target(file.get("Name") or name, where),
                             _numeric(file.get("UID"), "UID", where), _numeric(file.get("GID"), "GID", where), mode))
    return found


def all_references(container: Doc, path: str = "ContainerSpec") -> list[FileRef]:
    """Secrets and configs, with no two files at one path."""
    refs = references(container, SECRET, path) + references(container, CONFIG, path)
    seen: dict[str, FileRef] = {}
    for ref in refs:
        earlier = seen.get(ref.container_path)
        if earlier is not None:
            raise BadReference(f"{earlier.kind} {earlier.name or earlier.obj_id!r} and {ref.kind} "
                               f"{ref.name or ref.obj_id!r} have a conflicting target: {ref.container_path!r}")
        seen[ref.container_path] = ref
    return refs


def mounts_files(task: Doc) -> bool:
    """Whether the task refers to any secret or config (well formed or not)."""
    container = ((task.get("Spec") or {}).get("ContainerSpec")) or {}
    return bool(container.get("Secrets") or container.get("Configs"))


def task_references(task: Doc) -> list[FileRef]:
    """The files a task document mounts (its spec was checked when the service was created)."""
    return all_references(((task.get("Spec") or {}).get("ContainerSpec")) or {})
