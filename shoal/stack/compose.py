"""Reading compose files: YAML, variables interpolated, checked against the schema, several files merged.

Variables come from the environment, then from `.env` beside the first file (the environment wins, as with
docker compose). `${VAR}`, `$VAR`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
`${VAR:?message}` / `${VAR?message}` (an error) and `$$` (a literal `$`) are understood. A variable that is not
set and has no default is an error (docker compose warns and uses ""; a blank image tag or password deployed
by mistake is worse than a refusal). Schema errors name the file, the line and the field.

Files merge in order, as `docker stack deploy -c a.yml -c b.yml` does: mappings merge key by key, a later
scalar or list replaces an earlier one, except a service's `ports`, `secrets` and `configs`, which are joined
(an entry of the later file replacing the earlier one with the same target), and `environment` and `labels`,
which merge as mappings whichever form each file uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from dotenv import dotenv_values

from shoal.stack import StackError
from shoal.stack.schema import COMPOSE

_VARIABLE = re.compile(r"""
    \$(?:
        (?P<escaped>\$) |
        (?P<named>[_a-zA-Z][_a-zA-Z0-9]*) |
        \{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\} |
        (?P<invalid>)
    )""", re.VERBOSE)

JOINED_LISTS = ("ports", "secrets", "configs")
MAPPING_LISTS = ("environment", "labels")


def interpolate(text: str, variables: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("escaped") is not None:
            return "$"
        if match.group("named") is not None:
            if match.group("named") not in variables:
                named = match.group("named")
                raise StackError(f"{where}: variable {named} is not set: set it in the environment or in .env, "
                                 f"or give a default with ${{{named}:-default}}")
            return variables[match.group("named")]
        name = match.group("braced")
        if name is None:
            raise StackError(f"{where}: invalid interpolation format in {text!r}: use $VAR, ${{VAR}} or $$ "
                             "for a literal $")
        op, arg = match.group("op"), match.group("arg") or ""
        value = variables.get(name)
        if op is None:
            if value is None:
                raise StackError(f"{where}: variable {name} is not set: set it in the environment or in .env, "
                                 f"or give a default with ${{{name}:-default}}")
            return value
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if unset else str(value)
        if unset:
            raise StackError(f"{where}: required variable {name} is missing a value"
                             f"{': ' + arg if arg else ''}")
        return str(value)

    return _VARIABLE.sub(replace, text)


def _interpolated(value: Any, variables: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return interpolate(value, variables, where)
    if isinstance(value, dict):
        return {key: _interpolated(item, variables, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolated(item, variables, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def environment_of(first_file: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`.env` beside the first compose file, overridden by the environment."""
    variables: dict[str, str] = {}
    dotenv = first_file.parent / ".env"
    if dotenv.is_file():
        variables.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
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


def load_file(path: Path, variables: Mapping[str, str]) -> dict[str, Any]:
    try:
        text = path.read_text() if str(path) != "-" else os.fdopen(0).read()
    except OSError as exc:
        raise StackError(f"cannot read the compose file {path}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise StackError(f"{path}:{where} invalid YAML: {problem}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise StackError(f"{path}: a compose file must be a mapping with a top-level 'services' key")
    document = _interpolated(document, variables, str(path))
    check(document, str(path), tree)
    return document


def _as_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for entry in value or []:
        key, sep, item = str(entry).partition("=")
        out[key] = item if sep else None
    return out


def _ref_key(entry: Any, field: str) -> str:
    if isinstance(entry, dict):
        return str(entry.get(field) or entry.get("source") or entry.get("target"))
    return str(entry)


def _merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if key in MAPPING_LISTS and key in out:
            out[key] = {**_as_mapping(out[key]), **_as_mapping(value)}
        elif key in JOINED_LISTS and key in out:
            field = "published" if key == "ports" else "target"
            merged = {_ref_key(entry, field): entry for entry in out[key]}
            merged.update({_ref_key(entry, field): entry for entry in value})
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
