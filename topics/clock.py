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
its tick), so the latest time per input partition is kept. The new owner's first ticks may
be older than its last ones (:meth:`streams.ingest.IngestProcessor.assign`): it vouches for
a partition taken over only as far as it has read it.

"Read to its end" is only true when it is said, so an idle claim is a lease: a reader stops
honouring a claim not renewed for :data:`IDLE_LEASE_MS`, measured on the newest ``sent_ms``
(the writers' wall clock) any worker's tick carried. A worker renews its claim, at most
every :data:`IDLE_HEARTBEAT_MS`, while another worker moves on (it reads the ticks back,
:class:`streams.ingest.TickWatcher`), so the claims of live workers stay good and nothing is
sent while every worker is idle. Without that, a worker that died at its end (SIGKILL, a
lost host) kept its partitions idle until another worker took them over, a session timeout
later, while the other workers' ticks moved the clock on past the records that reached the
dead worker's partitions meanwhile. A lapsed
claim holds the clock at the partition's latest vouched time, as a partition still being
read does, until its new owner covers it. Ticks without ``sent_ms`` (one writer, older
workers) keep their claims until a later tick retracts them.

Both gaps showed in the fault test: a second ingest worker SIGKILLed near the end of a
stream whose last records (chargebacks) lie weeks ahead, and billing dead-lettered 201 meter
readings of one session as arriving after its bill was final.

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

A worker at its end stops renewing its claim (it died): the clock waits for its partition.

>>> def leased(minute, covers, idle=(), sent_s=0):
...     return ClockTick(event_id="c", event_time=from_ms(minute * 60_000), source="ingest",
...                      covers=covers, idle=list(idle), inputs=2, sent_ms=sent_s * 1000)
>>> clock = InputClock()
>>> _ = clock.observe(leased(50, ["ocpp_frames/1"], idle=["ocpp_frames/1"], sent_s=10))
>>> clock.observe(leased(120, ["ocpp_frames/0"], sent_s=10)) // 60_000  # 1 is idle
120
>>> clock.observe(leased(130, ["ocpp_frames/0"], sent_s=12)) // 60_000  # its lease lapsed
50
"""

from __future__ import annotations

import msgspec

from topics.records import ClockTick
from topics.times import to_ms

__all__ = ["IDLE_HEARTBEAT_MS", "IDLE_LEASE_MS", "InputClock", "InputClockState"]

IDLE_HEARTBEAT_MS = 250
"""While another ingest worker moves on, a worker with partitions read to their end renews
that claim with a tick this often (wall clock)."""
IDLE_LEASE_MS = 1_000
"""A reader honours an idle claim this long after its last renewal (on the newest ``sent_ms``
seen): four heartbeats, so a worker late by a few hundred milliseconds only delays the clock
(a lapsed claim holds it until the renewal comes). Hosts' clocks must agree to well within
this (NTP does)."""


class InputClockState(msgspec.Struct, kw_only=True):
    """An :class:`InputClock` as a changelog keeps it (billing's watermark row, detection's
    ``inputs:*`` rows), so that a worker taking a partition over knows what every ingest
    worker's ticks vouched for."""

    latest: dict[str, int] = {}
    idle: list[str] = []
    renewed: dict[str, int] = {}
    """Idle claims that are leases: when each was last renewed (``sent_ms`` scale)."""
    wall_ms: int = -1
    """The newest ``sent_ms`` seen."""


class InputClock:
    """Latest vouched time per input partition, for the ticks of one output partition."""

    __slots__ = ("changed", "idle", "latest", "reached", "renewed", "wall_ms")

    def __init__(
        self,
        latest: dict[str, int] | None = None,
        idle: set[str] | None = None,
        renewed: dict[str, int] | None = None,
        wall_ms: int = -1,
    ) -> None:
        self.latest: dict[str, int] = dict(latest or {})
        self.idle: set[str] = set(idle or ())
        self.renewed: dict[str, int] = dict(renewed or {})
        """Per idle claim made with a lease, the newest ``sent_ms`` seen when it was renewed."""
        self.wall_ms = wall_ms
        """The newest ``sent_ms`` any tick carried: the readers' measure of the lease."""
        self.changed = False
        """Set when a tick changed which partitions are idle or their times (a reader keeping
        the clock in a changelog writes it then, and clears this). Renewals alone do not set
        it: a restored clock has older renewals, which lapse until the next ones, so the
        clock only waits for them (a reader writes no changelog row per heartbeat)."""
        self.reached = -1
        """The newest time :meth:`observe` answered (not kept: a restored clock starts over)."""

    def state(self) -> InputClockState:
        """What to keep in a changelog."""
        return InputClockState(
            latest=dict(self.latest), idle=sorted(self.idle), renewed=dict(self.renewed),
            wall_ms=self.wall_ms,
        )  # fmt: skip

    @classmethod
    def from_state(cls, state: InputClockState) -> InputClock:
        """The clock a changelog row kept."""
        return cls(state.latest, set(state.idle), state.renewed, state.wall_ms)

    def observe(self, tick: ClockTick) -> int | None:
        """The time every input partition has reached after ``tick``, ms (None: not known)."""
        at = to_ms(tick.event_time)
        if tick.inputs is None:
            return at
        sent = tick.sent_ms
        if sent is not None and sent > self.wall_ms:
            self.wall_ms = sent
        idle = set(tick.idle)
        for name in tick.covers or ():
            if name not in idle and name in self.idle:
                self.idle.discard(name)
                self.renewed.pop(name, None)
                self.changed = True
            if at > self.latest.get(name, -1):
                self.latest[name] = at
                self.changed = True
        for name in idle:
            if name not in self.idle:
                self.idle.add(name)
                self.changed = True
            if sent is None:
                self.renewed.pop(name, None)
            else:
                self.renewed[name] = self.wall_ms
        idle_now = {
            name
            for name in self.idle
            if name not in self.renewed or self.wall_ms - self.renewed[name] <= IDLE_LEASE_MS
        }
        if len(idle_now | self.latest.keys()) < tick.inputs:
            return None
        busy = [ms for name, ms in self.latest.items() if name not in idle_now]
        now = min(busy) if busy else max(self.latest.values(), default=-1)
        self.reached = max(self.reached, now)
        return now if now >= 0 else None
