"""Timestamps and durations in Docker's wire forms: RFC 3339 strings and int64 nanoseconds."""

from __future__ import annotations

import datetime as _dt
import functools
import re

from shoal.errors import InvalidArgument

NANOSECOND = 1
MICROSECOND = 1000
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS = {"ns": NANOSECOND, "us": MICROSECOND, "µs": MICROSECOND, "ms": MILLISECOND, "s": SECOND,
          "m": MINUTE, "h": HOUR}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> int:
    """Parse a Go-style duration ("10s", "1m30s", "500ms", "0") into nanoseconds."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0
    if not s or s.startswith("-"):
        raise InvalidArgument(f'invalid duration "{text}": use a positive value such as 10s, 500ms or 1m30s')
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise InvalidArgument(f'invalid duration "{text}": use a value such as 10s, 500ms or 1m30s')
    return int(round(total))


def format_duration(ns: int) -> str:
    """Nanoseconds as Go prints a time.Duration ("10s", "1m30s", "500ms")."""
    if ns == 0:
        return "0s"
    if ns < SECOND:
        if ns % MILLISECOND == 0:
            return f"{ns // MILLISECOND}ms"
        if ns % MICROSECOND == 0:
            return f"{ns // MICROSECOND}µs"
        return f"{ns}ns"
    hours, rest = divmod(ns, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    seconds = rest / SECOND
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    sec_text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return out + f"{sec_text}s"


def to_rfc3339(ts: float) -> str:
    """A Unix timestamp as an RFC 3339 string with nanosecond-style precision, UTC ("…Z")."""
    dt = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


@functools.lru_cache(maxsize=1 << 18)
def from_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp (any sub-second precision) into a Unix timestamp. Remembered: the
    orchestrator reads the same tasks' timestamps on every pass."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise InvalidArgument(f"invalid timestamp {text!r}")
    base = _dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    tz = _dt.UTC if m.group(3) == "Z" else _dt.datetime.strptime(m.group(3), "%z").tzinfo
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    return base.replace(tzinfo=tz).timestamp() + frac
