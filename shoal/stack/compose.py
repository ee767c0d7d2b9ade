"""Reading compose files: YAML, variables interpolated, checked against the schema, several files merged.

Variables come from the environment, then from `.env` beside the first file (the environment wins, as with
docker compose). `${VAR}`, `$VAR`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
`${VAR:?message}` / `${VAR?message}` (an error) and `$$` (a literal `$`) are understood. A variable that is not
set and has no default is an error (docker compose warns and uses ""; a blank image tag or password deployed
by mistake is worse than a refusal). Schema errors name the file, the line and the field.

Files merge in order, as `docker stack deploy -c a.yml -c b.yml` does: mappings merge key by key, a later
scalar or list replaces an earlier one, except a service's `ports`, `secrets`, `configs` and `volumes`, which are
joined (an entry of the later file replacing the earlier one with the same target), and `environment` and `labels`,
which merge as mappings whichever form each file uses.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from dotenv import dotenv_values

from shoal.stack import StackError
from shoal.stack.schema import COMPOSE

_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_BRACED = re.compile(r"([_a-zA-Z][_a-zA-Z0-9]*)(:?[-?])?")

JOINED_LISTS = ("ports", "secrets", "configs", "volumes")
MAPPING_LISTS = ("environment", "labels")


def _unset(name: str, where: str) -> StackError:
    return StackError(f"{where}: variable {name} is not set: set it in the environment or in .env, or give a "
                      f"default with ${{{name}:-default}}")


def _closing_brace(text: str, start: int, where: str) -> int:
    """The index of the `}` closing the `${` whose body starts at `start` (defaults may hold `${…}` too)."""
    depth = 1
    index = start
    while index < len(text):
        if text.startswith("$$", index):
            index += 2
            continue
        if text.startswith("${", index):
            depth += 1
            index += 2
            continue
        if text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise StackError(f"{where}: invalid interpolation format in {text!r}: a ${{ has no closing }}")


def interpolate(text: str, variables: Mapping[str, str], where: str) -> str:
    out: list[str] = []
    index = 0
    while (dollar := text.find("$", index)) >= 0:
        out.append(text[index:dollar])
        rest = text[dollar + 1:]
        if rest.startswith("$"):
            out.append("$")
            index = dollar + 2
        elif rest.startswith("{"):
            close = _closing_brace(text, dollar + 2, where)
            out.append(_braced(text[dollar + 2:close], variables, where, text))
            index = close + 1
        elif (match := _NAME.match(rest)) is not None:
            if match.group(0) not in variables:
                raise _unset(match.group(0), where)
            out.append(variables[match.group(0)])
            index = dollar + 1 + match.end()
        else:
            raise StackError(f"{where}: invalid interpolation format in {text!r}: use $VAR, ${{VAR}} or $$ for a "
                             "literal $")
    out.append(text[index:])
    return "".join(out)


def _braced(body: str, variables: Mapping[str, str], where: str, text: str) -> str:
    """The value of `${body}`: NAME, NAME:-default, NAME-default, NAME:?error or NAME?error."""
    match = _BRACED.match(body)
    if match is None or (match.group(2) is None and match.end() != len(body)):
        raise StackError(f"{where}: invalid interpolation format in {text!r}: use $VAR, ${{VAR}} or $$ for a "
                         "literal $")
    name, op, arg = match.group(1), match.group(2), body[match.end():]
    value = variables.get(name)
    if op is None:
        if value is None:
            raise _unset(name, where)
        return value
    unset = value is None or (op.startswith(":") and value == "")
    if op.endswith("-"):
        return interpolate(arg, variables, where) if unset else str(value)
    if unset:
        message = interpolate(arg, variables, where) if arg else ""
        raise StackError(f"{where}: required variable {name} is missing a value{': ' + message if message else ''}")
    return str(value)


def _to_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "y", "on", "1"):
        return True
    if lowered in ("false", "no", "n", "off", "0"):
        return False
    raise ValueError(text)


def _to_int(text: str) -> int:
    return int(text.strip())


def _to_float(text: str) -> float:
    return float(text.strip())


# Fields whose value may come from a variable as text and is cast to its type, as docker's CLI does
# (`interpolateTypeCastMapping`); "*" stands for any key or list index.
_CASTS: dict[tuple[str, ...], Callable[[str], Any]] = {
    ("services", "*", "deploy", "replicas"): _to_int,
    ("services", "*", "deploy", "update_config", "parallelism"): _to_int,
    ("services", "*", "deploy", "update_config", "max_failure_ratio"): _to_float,
    ("services", "*", "deploy", "rollback_config", "parallelism"): _to_int,
    ("services", "*", "deploy", "rollback_config", "max_failure_ratio"): _to_float,
    ("services", "*", "deploy", "restart_policy", "max_attempts"): _to_int,
    ("services", "*", "deploy", "placement", "max_replicas_per_node"): _to_int,
    ("services", "*", "deploy", "resources", "*", "pids"): _to_int,
    ("services", "*", "healthcheck", "retries"): _to_int,
    ("services", "*", "healthcheck", "disable"): _to_bool,
    ("services", "*", "ports", "*", "target"): _to_int,
    ("services", "*", "ports", "*", "published"): _to_int,
    ("services", "*", "tty"): _to_bool,
    ("services", "*", "stdin_open"): _to_bool,
    ("services", "*", "read_only"): _to_bool,
    ("services", "*", "init"): _to_bool,
    ("services", "*", "oom_score_adj"): _to_int,
    ("services", "*", "ulimits", "*"): _to_int,
    ("services", "*", "ulimits", "*", "soft"): _to_int,
    ("services", "*", "ulimits", "*", "hard"): _to_int,
    ("services", "*", "volumes", "*", "read_only"): _to_bool,
    ("services", "*", "volumes", "*", "volume", "nocopy"): _to_bool,
    ("volumes", "*", "external"): _to_bool,
    ("networks", "*", "internal"): _to_bool,
    ("networks", "*", "attachable"): _to_bool,
    ("networks", "*", "enable_ipv6"): _to_bool,
    ("networks", "*", "external"): _to_bool,
    ("secrets", "*", "external"): _to_bool,
    ("configs", "*", "external"): _to_bool,
}


def _cast_for(path: tuple[str, ...]) -> Callable[[str], Any] | None:
    for pattern, cast in _CASTS.items():
        if len(pattern) == len(path) and all(p in ("*", part) for p, part in zip(pattern, path, strict=True)):
            return cast
    return None


def _interpolated(value: Any, variables: Mapping[str, str], where: str, path: tuple[str, ...] = ()) -> Any:
    """The document with its variables replaced; text in a typed field (`replicas: ${N:-2}`) becomes the field's
    type, and text that is no such value is left for the schema to refuse with its path."""
    if isinstance(value, dict):
        return {key: _interpolated(item, variables, f"{where}.{key}", (*path, str(key))) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolated(item, variables, f"{where}[{index}]", (*path, str(index)))
                for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value
    text = interpolate(value, variables, where)
    if (cast := _cast_for(path)) is not None:
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class ComposeLoader(yaml.SafeLoader):
    """YAML 1.1 as the safe loader reads it, but for base-60 numbers: `- 22:22` is a port mapping, not 1342."""


ComposeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not (
        tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in regexp.pattern)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def environment_of(first_file: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`.env` beside the first compose file, overridden by the environment."""
    variables: dict[str, str] = {}
    dotenv = first_file.parent / ".env"
    if dotenv.is_file():
        try:
            values = dotenv_values(dotenv)
        except (OSError, UnicodeDecodeError) as exc:
            raise StackError(f"cannot read {dotenv}: {exc}") from None
        variables.update({k: v for k, v in values.items() if v is not None})
    variables.update(os.environ if environ is None else environ)
    return variables


def _error_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _extra_keys(error: jsonschema.ValidationError) -> list[str]:
    """The keys an additionalProperties error is about."""
    schema = error.schema
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict) or not isinstance(
            schema, dict):
        return []
    known, patterns = schema.get("properties") or {}, schema.get("patternProperties") or {}
    return [key for key in error.instance if key not in known and not any(re.search(p, key) for p in patterns)]


def _schema_message(best: jsonschema.ValidationError) -> str:
    path = _error_path(best)
    if best.validator == "additionalProperties":
        return f"{path}: additional property {', '.join(_extra_keys(best)) or best.message} is not allowed"
    return f"{path}: {best.message}"


def _line_of(tree: yaml.Node | None, path: list[str | int]) -> int | None:
    """The line (1-based) of the YAML node at `path` in the composed document, or of its nearest parent."""
    node, line = tree, None
    for part in path:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    return node.start_mark.line + 1 if node is not None else line


def check(document: Any, name: str, tree: yaml.Node | None = None) -> None:
    validator = jsonschema.Draft202012Validator(COMPOSE)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        # The most telling error: for oneOf/anyOf failures the deepest of its sub-errors.
        best = jsonschema.exceptions.best_match([errors[0]])
        line = _line_of(tree, [*best.absolute_path, *_extra_keys(best)[:1]])
        raise StackError(f"{name}:{f' line {line}:' if line else ''} {_schema_message(best)}")


def _check_keys(value: Any, tree: yaml.Node | None, name: str, path: tuple[str | int, ...] = ()) -> None:
    """Every mapping key is text (`on:` or `1:` unquoted is YAML for a boolean or a number)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                line = _line_of(tree, list(path))
                where = ".".join(str(p) for p in path) or "(top level)"
                raise StackError(f"{name}:{f' line {line}:' if line else ''} {where}: the key {key!r} is not text: "
                                 "quote it")
            _check_keys(item, tree, name, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_keys(item, tree, name, (*path, index))


def load_file(path: Path, variables: Mapping[str, str]) -> dict[str, Any]:
    try:
        text = path.read_text() if str(path) != "-" else sys.stdin.read()
    except OSError as exc:
        raise StackError(f"cannot read the compose file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StackError(f"{path}: a compose file must be UTF-8 text") from None
    try:
        document = yaml.load(text, Loader=ComposeLoader)  # noqa: S506 (a safe loader)
        tree = yaml.compose(text, Loader=ComposeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise StackError(f"{path}:{where} invalid YAML: {problem}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise StackError(f"{path}: a compose file must be a mapping with a top-level 'services' key")
    _check_keys(document, tree, str(path))
    document = _interpolated(document, variables, str(path))
    check(document, str(path), tree)
    return document


def as_mapping(value: Any) -> dict[str, Any]:
    """`environment` or `labels` in either form (a list of "K=V", or a mapping) as a mapping; "K" alone maps
    to None."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for entry in value or []:
        key, sep, item = str(entry).partition("=")
        out[key] = item if sep else None
    return out


def _ref_key(entry: Any, key: str) -> str:
    """What makes two entries of a joined list the same: a port's published port, target and protocol (in either
    syntax); a volume's target (in either syntax); a secret's or config's source."""
    if key == "volumes":
        if isinstance(entry, dict):
            return str(entry.get("target"))
        parts = str(entry).split(":")
        return parts[1] if len(parts) > 1 else parts[0]
    if key == "ports":
        if isinstance(entry, dict):
            return f"{entry.get('published') or ''}:{entry.get('target')}/{entry.get('protocol') or 'tcp'}"
        text = str(entry)
        spec, _, protocol = text.partition("/")
        published, _, target = spec.rpartition(":")
        return f"{published.rpartition(':')[2]}:{target}/{protocol or 'tcp'}"
    return str(entry.get("source")) if isinstance(entry, dict) else str(entry)


def _merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if key in MAPPING_LISTS and key in out:
            out[key] = {**as_mapping(out[key]), **as_mapping(value)}
        elif key in JOINED_LISTS and key in out:
            merged = {_ref_key(entry, key): entry for entry in out[key]}
            merged.update({_ref_key(entry, key): entry for entry in value})
            out[key] = list(merged.values())
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_files(documents: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for document in documents:
        services = dict(result.get("services") or {})
        for name, service in (document.get("services") or {}).items():
            services[name] = _merge_service(services[name], service) if name in services else service
        rest = {k: v for k, v in document.items() if k != "services"}
        result = merge(result, rest)
        if services or "services" in document:
            result["services"] = services
    return result


def load(paths: list[Path], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The merged compose document of the files, in order; StackError on the first problem."""
    if not paths:
        raise StackError("give a compose file with -c / --compose-file")
    variables = environment_of(paths[0], environ)
    merged = merge_files([load_file(path, variables) for path in paths])
    if not merged.get("services"):
        raise StackError(f"{paths[0]}: no services to deploy: the compose file needs a 'services' section")
    for name, service in merged["services"].items():
        if not (service or {}).get("image"):
            raise StackError(f"services.{name}: 'image' is a required property: swarm mode runs images, it does "
                             "not build them")
    return merged
