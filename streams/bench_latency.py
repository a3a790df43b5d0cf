"""Produce-to-output latency pairs of the pipeline benchmark (pure; unit-tested).

Billing decides on the event-time watermark, so an output is not caused by one input
record in particular: a bill is *due* once the watermark passes its session's end plus the
bill grace, a reconciliation verdict once it passes ``decided_at``. The watermark is the
minute of the OCPP frames' ``received_at`` the ingest has read (its clock ticks). So the
input that made an output due is the first frame produced whose ``received_at`` is at or
past the output's due minute, and the latency of the output is

    (time a read_committed reader, or the alert receiver, got the output)
    - (Kafka timestamp of that frame, i.e. when the producer sent it)

The grace periods themselves (event-time business rules) are therefore not counted; every
stage's batching, transactions, polling and the watermark's propagation are. Taking the
*first* such frame is conservative: with several ingest partitions the tick may need a
later one.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Timeline", "ceil_minute"]

_MINUTE_MS = 60_000


def ceil_minute(ms: int) -> int:
    """The first whole minute at or after ``ms`` (epoch milliseconds).

    >>> ceil_minute(120_000), ceil_minute(120_001), ceil_minute(0)
    (120000, 180000, 0)
    """
    return -(-ms // _MINUTE_MS) * _MINUTE_MS


@dataclass(slots=True)
class Timeline:
    """Input frames as ``(event_time_ms, produced_ms)``: when each moment of event time was
    first sent."""

    event_ms: list[int]
    first_produced_ms: list[int]
    """Per position in ``event_ms`` (sorted), the earliest produce time at or after it."""
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    """(station id, session end ms) -> produce time of the frame that ended the session."""

    @classmethod
    def build(cls, frames: Iterable[tuple[int, int]]) -> Timeline:
        """From ``(event_time_ms, produced_ms)`` pairs in any order.

        >>> t = Timeline.build([(3, 30), (1, 10), (2, 25), (2, 20)])
        >>> t.event_ms, t.first_produced_ms
        ([1, 2, 2, 3], [10, 20, 25, 30])
        """
        pairs = sorted(frames)
        event_ms = [e for e, _ in pairs]
        suffix: list[int] = [0] * len(pairs)
        best = None
        for i in range(len(pairs) - 1, -1, -1):
            p = pairs[i][1]
            best = p if best is None or p < best else best
            suffix[i] = best
        return cls(event_ms, suffix)

    def trigger_ms(self, due_ms: int) -> int | None:
        """Produce time of the first frame at or past event time ``due_ms`` (None: no input
        reached it, so the output was not caused by the stream's progress).

        >>> t = Timeline.build([(60_000, 5), (120_000, 9), (180_000, 7)])
        >>> t.trigger_ms(100_000), t.trigger_ms(60_000), t.trigger_ms(200_000)
        (7, 5, None)
        """
        i = bisect.bisect_left(self.event_ms, due_ms)
        if i >= len(self.event_ms):
            return None
        return self.first_produced_ms[i]

    def latency_s(self, due_ms: int, seen_s: float) -> float | None:
        """Seconds from the due time's trigger frame being produced to ``seen_s`` (epoch s)."""
        trigger = self.trigger_ms(due_ms)
        if trigger is None:
            return None
        return seen_s - trigger / 1000
