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


_UNIX_TIME = re.compile(r"(\d+)(?:\.(\d*))?")
_DATE_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:T(\d\d)(?::(\d\d)(?::(\d\d)(?:\.(\d+))?)?)?)?(Z|z|[+-]\d\d:\d\d)?")


def parse_timestamp_ns(text: str, now: float | None = None) -> int:
    """A `since`/`until` value as Docker reads it, in Unix nanoseconds: Unix seconds with an optional fraction
    (`1715116176.5`), an RFC 3339 date or time (`2024-05-07`, `2024-05-07T21:09:36.123Z`; without a zone, local
    time), or, when `now` is given (the client side: docker's `--since 10m`), a duration back from `now`."""
    value = text.strip()
    if now is not None and value not in ("", "0"):
        try:
            return int(now * SECOND) - parse_duration(value)
        except InvalidArgument:
            pass
    if match := _UNIX_TIME.fullmatch(value):
        fraction = (match.group(2) or "")[:9].ljust(9, "0")
        return int(match.group(1)) * SECOND + int(fraction)
    if match := _DATE_TIME.fullmatch(value):
        year, month, day, hour, minute, second = (int(part or 0) for part in match.groups()[:6])
        zone = match.group(8)
        if zone is None:
            tzinfo = None  # local time, as docker reads a time without a zone
        elif zone in ("Z", "z"):
            tzinfo = _dt.UTC
        else:
            sign = 1 if zone[0] == "+" else -1
            tzinfo = _dt.timezone(sign * _dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        try:
            moment = _dt.datetime(year, month, day, hour, minute, second, tzinfo=tzinfo)
        except ValueError:
            raise InvalidArgument(f"invalid timestamp {text!r}: {value} is not a valid date and time") from None
        fraction = (match.group(7) or "")[:9].ljust(9, "0")
        return int(moment.timestamp()) * SECOND + int(fraction)
    raise InvalidArgument(f"invalid timestamp {text!r}: give Unix seconds (1715116176.5), an RFC 3339 time "
                          "(2024-05-07T21:09:36Z)" + (" or a duration (10m)" if now is not None else ""))


def format_event_time(time_nano: int, tz: _dt.tzinfo | None = None) -> str:
    """Unix nanoseconds as docker prints an event's time: nine fraction digits, `Z` or the zone's offset
    (Go's "2006-01-02T15:04:05.000000000Z07:00"), in local time unless `tz` is given."""
    seconds, nanos = divmod(time_nano, SECOND)
    moment = _dt.datetime.fromtimestamp(seconds, tz=tz or _dt.UTC)
    if tz is None:
        moment = moment.astimezone()
    offset = moment.utcoffset() or _dt.timedelta(0)
    if offset:
        minutes = int(offset.total_seconds()) // 60
        sign = "+" if minutes >= 0 else "-"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    else:
        zone = "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}" + zone
