"""How the index stores time: integer microseconds since the epoch, UTC, so values round-trip
exactly through either database (no driver's datetime conversions in between)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from loramux.registry.errors import InvalidRequest

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_dt(us: int) -> datetime:
    """Times are stored as integer microseconds so that they round-trip exactly."""
    return _EPOCH + us * _US


def to_us(dt: datetime) -> int:
    """A time given by the caller (``log --since``, ``alias-at --when``): one that cannot be
    placed on the clock (a naive 0001-01-01 moved to UTC falls before year 1) is their input's
    fault, an ``InvalidRequest`` (400), never an OverflowError out of the index (500)."""
    try:
        if dt.tzinfo is None:
            dt = dt.astimezone()  # a naive time is the user's local time
        return (dt - _EPOCH) // _US
    except (OverflowError, ValueError, OSError) as exc:
        raise InvalidRequest(f"time {dt.isoformat()} is out of range ({exc})") from None


def now() -> int:
    return time.time_ns() // 1000
