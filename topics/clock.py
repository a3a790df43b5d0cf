"""The event time that clock ticks in one partition vouch for, when several workers write them.

Each ingest worker sends a :class:`~topics.records.ClockTick` to every partition of its output
topics, after the records it wrote before it. With one ingest worker a tick means "all input
up to this minute is before me in this partition". With several, each worker only vouches for
the input partitions it reads, so a tick names them (``covers``) and says how many input
partitions there are in all (``inputs``); a reader takes, per output partition, the oldest
latest time over every input partition, and knows nothing until each has been vouched for.
Partitions a worker has read to their end are also sent as ``idle``: they do not hold the
clock back (as they do not hold a single worker's back) until a later tick covers them
without saying so. When every input partition is idle the time is the latest any worker
vouched for, as one worker reading everything would say. A worker that has read nothing
and whose partitions are all at their end sends them as idle without covering them.

When input partitions move to another worker (a rebalance), the new owner's ticks cover
them; the old owner's last word about them stays true (what it committed was written before
its tick), so the latest time per input partition is kept.

A tick without ``inputs`` (one writer, or ticks written before ``covers`` existed) vouches
for everything at its time.

Examples
--------
>>> from topics.records import ClockTick
>>> from topics.times import from_ms
>>> def tick(minute, covers=None, idle=(), inputs=None):
...     return ClockTick(event_id="c", event_time=from_ms(minute * 60_000), source="ingest",
...                      covers=covers, idle=list(idle), inputs=inputs)
>>> clock = InputClock()
>>> clock.observe(tick(100, ["ocpp_frames/0"], inputs=2)) is None  # ocpp_frames/1 unknown
True
>>> clock.observe(tick(90, ["ocpp_frames/1"], inputs=2)) // 60_000   # the slower writer
90
>>> clock.observe(tick(110, ["ocpp_frames/0"], inputs=2)) // 60_000
90
>>> clock.observe(tick(95, ["ocpp_frames/1"], inputs=2)) // 60_000
95
>>> InputClock().observe(tick(7)) // 60_000                         # one writer
7
"""

from __future__ import annotations

import msgspec

from topics.records import ClockTick
from topics.times import to_ms

__all__ = ["InputClock", "InputClockState"]


class InputClockState(msgspec.Struct, kw_only=True):
    """An :class:`InputClock` as a changelog keeps it (billing's watermark row, detection's
    ``inputs:*`` rows), so that a worker taking a partition over knows what every ingest
    worker's ticks vouched for."""

    latest: dict[str, int] = {}
    idle: list[str] = []


class InputClock:
    """Latest vouched time per input partition, for the ticks of one output partition."""

    __slots__ = ("changed", "idle", "latest")

    def __init__(self, latest: dict[str, int] | None = None, idle: set[str] | None = None) -> None:
        self.latest: dict[str, int] = dict(latest or {})
        self.idle: set[str] = set(idle or ())
        self.changed = False
        """Set when a tick changed what the clock knows (a reader keeping it in a changelog
        writes it then, and clears this)."""

    def state(self) -> InputClockState:
        """What to keep in a changelog."""
        return InputClockState(latest=dict(self.latest), idle=sorted(self.idle))

    @classmethod
    def from_state(cls, state: InputClockState) -> InputClock:
        """The clock a changelog row kept."""
        return cls(state.latest, set(state.idle))

    def observe(self, tick: ClockTick) -> int | None:
        """The time every input partition has reached after ``tick``, ms (None: not known)."""
        at = to_ms(tick.event_time)
        if tick.inputs is None:
            return at
        idle = set(tick.idle)
        before = len(self.idle)
        for name in tick.covers or ():
            if name not in idle and name in self.idle:
                self.idle.discard(name)
                self.changed = True
            if at > self.latest.get(name, -1):
                self.latest[name] = at
                self.changed = True
        self.idle |= idle
        if len(self.idle) != before:
            self.changed = True
        if len(self.idle | self.latest.keys()) < tick.inputs:
            return None
        busy = [ms for name, ms in self.latest.items() if name not in self.idle]
        if busy:
            return min(busy)
        return max(self.latest.values(), default=None)
