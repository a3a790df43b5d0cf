"""Event time as integer milliseconds since the Unix epoch, the one conversion everyone uses.

State, timers and watermarks count milliseconds (integers compare and pack cheaply); records
carry timezone-aware UTC datetimes. :func:`to_ms` and :func:`from_ms` convert between them
exactly (integer arithmetic, no float rounding of microseconds).

Examples
--------
>>> from datetime import UTC, datetime
>>> to_ms(datetime(2024, 5, 6, 8, 0, 0, 123_999, tzinfo=UTC))
1714982400123
>>> from_ms(1714982400123).isoformat()
'2024-05-06T08:00:00.123000+00:00'
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["EPOCH", "from_ms", "to_ms"]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of a timezone-aware datetime (sub-milliseconds dropped)."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: event time is UTC, give a timezone")
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    """The timezone-aware UTC datetime of ``ms`` milliseconds since the epoch."""
    return EPOCH + timedelta(milliseconds=ms)
