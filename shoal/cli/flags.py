"""Command lines read as docker's flag parser (spf13/pflag) reads them, where argparse reads them otherwise.

- A bool flag (every `store_true` option) also takes its value after "=": `--detach=false`, `-d=false`,
  `-qd=false` (the last letter of a cluster takes it), with the values Go's strconv.ParseBool reads (1 t T TRUE
  true True, 0 f F FALSE false False). `--detach false` does not give it a value: `false` is an argument.
- A flag that takes a value takes the next word even when it starts with "-": `--restart-delay -5s`.

Pure: `normalise_args` rewrites the words for argparse and says which bool flags the "=" forms set.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from shoal.cli.gotemplate import go_quote

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class FlagError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool; ValueError with its message for anything else."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(value)}: invalid syntax")


def flag_name(action: argparse.Action) -> str:
    """The flag as pflag names it in errors: "-d, --detach", or "--no-trunc"."""
    shorts = [o for o in action.option_strings if not o.startswith("--")]
    longs = [o for o in action.option_strings if o.startswith("--")]
    return ", ".join(shorts[:1] + longs[:1])


def bool_value(action: argparse.Action, text: str) -> bool:
    """The value `--flag=text` gives the flag's destination; FlagError as pflag words it."""
    try:
        value = parse_bool(text)
    except ValueError as exc:
        raise FlagError(f"invalid argument {go_quote(text)} for {go_quote(flag_name(action))} flag: {exc}") from None
    return value if action.const is True else not value


def is_bool_flag(action: argparse.Action) -> bool:
    return bool(action.option_strings) and action.nargs == 0 and isinstance(action.const, bool)


def normalise_args(actions: Sequence[argparse.Action], args: list[str]) -> tuple[list[str], list[tuple[str, bool]]]:
    """The words to give argparse, and the (destination, value) of every bool flag met, in order (set them
    after parsing: the last one wins, as with pflag). A bool flag's "=" form is taken out of the words."""
    takes_value = {opt for action in actions if action.option_strings and action.nargs is None
                   for opt in action.option_strings}
    bools = {opt: action for action in actions if is_bool_flag(action) for opt in action.option_strings}
    stops_at_positional = any(isinstance(a, argparse._SubParsersAction) or a.nargs == argparse.REMAINDER
                              for a in actions)
    out: list[str] = []
    assignments: list[tuple[str, bool]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--" or (stops_at_positional and not token.startswith("-")):
            out.extend(args[i:])
            break
        if token in takes_value and i + 1 < len(args):
            value = args[i + 1]
            out += [f"{token}={value}"] if value.startswith("-") and value != "-" else [token, value]
            i += 2
            continue
        i += 1
        if token in bools:
            assignments.append((bools[token].dest, bool(bools[token].const)))
        elif token.startswith("--") and "=" in token:
            name, _, value = token.partition("=")
            if name in bools:
                assignments.append((bools[name].dest, bool_value(bools[name], value)))
                continue
        elif token.startswith("-") and not token.startswith("--") and len(token) > 2:
            cluster = _bool_cluster(bools, token)
            if cluster is not None:
                assignments += cluster
                if "=" in token:
                    continue
        out.append(token)
    return out, assignments


def _bool_cluster(bools: dict[str, argparse.Action], token: str) -> list[tuple[str, bool]] | None:
    """`-qd` or `-qd=false`: bool letters only (else None, and argparse reads the word); `=` gives the last
    letter its value, as pflag reads it."""
    letters, equals, value = token[1:].partition("=")
    flags = [bools.get("-" + letter) for letter in letters]
    if not letters or any(flag is None for flag in flags):
        return None
    found = [flag for flag in flags if flag is not None]
    assignments = [(flag.dest, bool(flag.const)) for flag in found]
    if equals:
        assignments[-1] = (found[-1].dest, bool_value(found[-1], value))
    return assignments
