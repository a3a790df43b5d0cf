"""Simulated time: integer milliseconds since the Unix epoch, and fast ISO-8601 rendering.

The simulator keeps every instant as an ``int`` of milliseconds (UTC). Rendering to text is
the hot path of frame building, so the date part of each day is cached.

Examples
--------
>>> iso_s(0), iso_ms(1_500)
('1970-01-01T00:00:00Z', '1970-01-01T00:00:01.500Z')
>>> to_ms(to_datetime(1_714_557_600_000))
1714557600000
"""

from __future__ import annotations

from datetime import timedelta

from topics.times import EPOCH, from_ms, to_ms

__all__ = ["DAY_MS", "HOUR_MS", "MINUTE_MS", "iso_ms", "iso_s", "to_datetime", "to_ms"]

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_EPOCH = EPOCH
_DAYS: dict[int, str] = {}


def _day(day: int) -> str:
    text = _DAYS.get(day)
    if text is None:
        text = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
        _DAYS[day] = text
    return text


def iso_s(ms: int) -> str:
    """RFC 3339 UTC timestamp with whole seconds (``2024-05-06T08:00:00Z``)."""
    day, rest = divmod(ms // 1000, 86_400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"{_day(day)}T{hour:02d}:{minute:02d}:{second:02d}Z"


def iso_ms(ms: int) -> str:
    """RFC 3339 UTC timestamp with milliseconds (``2024-05-06T08:00:00.123Z``)."""
    secs, milli = divmod(ms, 1000)
    day, rest = divmod(secs, 86_400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"{_day(day)}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"


to_datetime = from_ms
"""The timezone-aware UTC datetime of ``ms`` (:func:`topics.times.from_ms`)."""
