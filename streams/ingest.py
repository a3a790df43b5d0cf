"""Ingest: outside input topics -> validated canonical topics, with dead letters.

The ingest is a stateless-by-design, high-volume edge, so it runs as a batch loop on
confluent-kafka rather than as Faust agents (DESIGN.md "Where the time goes": Faust costs
about 100 us per event in its own machinery, a bare consume-and-parse loop about 6 us).

Exactly once: it runs in a :class:`~streams.loop.TransactionalLoop`, so every batch is one
Kafka transaction holding the outputs, the dead letters, the pending-call changelog writes and
the consumed offsets.

The only state, 1.6 StartTransaction calls awaiting the CSMS answer, lives in a dict per
input partition, backed by a compacted changelog topic written in the same transaction and
restored on partition assignment.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from confluent_kafka import OFFSET_END, Consumer, KafkaException, Message, TopicPartition

from streams.dead_letters import dead_letter_summary, refuse
from streams.loop import Output, TransactionalLoop
from streams.metrics import DEAD_LETTERS, INGEST_EVENTS
from streams.settings import DEFAULT_INGEST_GROUP, Settings
from topics.adapters.ocpp import OcppAdapter
from topics.catalog import (
    CATALOG,
    CLOCK_KEY,
    SESSION_PARTITIONS,
    TopicSpec,
    changelog_spec,
    topic,
)
from topics.clock import IDLE_HEARTBEAT_MS
from topics.codec import decode, encode
from topics.exceptions import RecordDecodeError, UnsupportedFrame
from topics.identity import session_id_for, stable_id
from topics.records import (
    ClockTick,
    MeterReading,
    OcppFrame,
    PaymentEvent,
    SessionEvent,
)
from topics.times import from_ms, to_ms

__all__ = [
    "INPUT_TOPICS",
    "IngestLoop",
    "IngestProcessor",
    "Output",
    "TickWatcher",
    "dead_letter_summary",
]

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000


INPUT_TOPICS = ("ocpp_frames", "csms_session_events", "csms_meter_readings", "psp_payment_events")
_INPUT_PARTITIONS = sum(CATALOG[short].partitions for short in INPUT_TOPICS)


@dataclass(slots=True)
class BatchResult:
    outputs: list[Output] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)


class IngestProcessor:
    """Pure message handling: (topic, partition, offset, key, value) -> outputs.

    Holds the pending-call state per partition of the OCPP frames topic. Unit-testable
    without a broker.
    """

    def __init__(self, *, hash_secret: bytes, stage: str = "ingest") -> None:
        self.adapter = OcppAdapter(hash_secret=hash_secret)
        self.pending: dict[int, dict[str, bytes]] = {}
        self.stage = stage
        self._topics = {topic(short): short for short in INPUT_TOPICS}
        self.pending_topic = topic("ocpp_pending_calls")
        self._dead_letters = topic("dead_letters")
        self._out = {
            short: topic(short) for short in ("session_events", "meter_readings", "payment_events")
        }
        self.clock_ms = -1
        """The last minute of input time sent to the clock topic."""
        self.seen_ms: dict[tuple[str, int], int] = {}
        """Latest input time read per input (topic, partition)."""
        self.caught_up: set[tuple[str, int]] = set()
        self.assigned: set[tuple[str, int]] = set()
        """Input partitions assigned to this worker (empty without a consumer, as in replay)."""
        self._idle_sent: list[str] = []
        self._ticked_ms = -IDLE_HEARTBEAT_MS
        """Wall clock of the last tick sent (heartbeats of idle claims count from it)."""
        self._idle_tick_ms = -IDLE_HEARTBEAT_MS
        """Wall clock of the last tick sent only for what is idle (at most one a heartbeat)."""
        self.others: deque[ClockTick] = deque(maxlen=1000)
        """Ticks read back from an output partition (:class:`TickWatcher`), all workers'."""
        self._others_minute: dict[tuple[str, ...], int] = {}
        self._others_moved_ms = -1
        """Newest ``sent_ms`` of a tick saying another ingest worker moved on."""
        self._renewed_for = -1
        """``_others_moved_ms`` when this worker last sent a tick."""
        self._current: tuple[str, int] = ("", 0)
        self._now_ms = 0
        self._future = 0

    def process(
        self,
        messages: Iterable[tuple[str, int, int, bytes | None, bytes | None]],
        *,
        now: datetime,
    ) -> BatchResult:
        """Handle a batch of ``(topic, partition, offset, key, value)``."""
        result = BatchResult()
        self._now_ms = to_ms(now)
        self._future = 0
        for source_topic, partition, offset, key, value in messages:
            short = self._topics.get(source_topic, source_topic)
            self._current = (source_topic, partition)
            self.caught_up.discard(self._current)
            try:
                outcome = self._one(short, partition, value, result.outputs)
            except UnsupportedFrame:
                outcome = "ignored"
            except Exception as exc:  # bad input must never crash the worker
                outcome = refuse(
                    result, (source_topic, partition, offset, key, value), exc,
                    stage=self.stage, now=now, expected=(RecordDecodeError,),
                )  # fmt: skip
            result.counts[(short, outcome)] += 1
        if self._future:
            result.counts[("clock", "future_time_ignored")] += self._future
        self._tick(result, now)
        return result

    def mark_caught_up(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Input partitions read to their end: they no longer hold the clock back."""
        self.caught_up.update(partitions)

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Input partitions this ingest now reads: each holds the clock back until it has
        been read from or read to its end.

        The next tick may then be older than the last one sent: a tick vouches for every
        partition it covers at its one time, and partitions taken over from another worker
        (a rebalance, a worker that died) may have a backlog older than what this one had
        read of its own (readers keep the latest time per partition, so its own lose
        nothing). Sending the newer time for them too would let a reader take the backlog's
        records, read next, for late ones.
        """
        self.assigned.update(partitions)
        self.clock_ms = -1

    def clock_now(self) -> int:
        """The input time every input partition has reached, ms (-1: not known yet).

        The minimum over the partitions still being read of the latest time read from each;
        an assigned partition not read from yet holds it back entirely, and a partition read
        to its end does not hold it back (once all are, it is the latest time read
        anywhere). So when ingest reads one partition or topic ahead of another (a backlog,
        a slow fetch), the clock waits for the slower one.
        """
        behind: list[int] = []
        for tp in self.assigned | self.seen_ms.keys():
            if tp in self.caught_up:
                continue
            at = self.seen_ms.get(tp)
            if at is None:
                return -1
            behind.append(at)
        if behind:
            return min(behind)
        return max(self.seen_ms.values(), default=-1)

    def tick(self, now: datetime) -> BatchResult:
        """Clock ticks only (after partitions were marked caught up, with no new input)."""
        result = BatchResult()
        self._tick(result, now)
        return result

    def _tick(self, result: BatchResult, now: datetime) -> None:
        """Send the minute input time has reached to every output partition, when it moved.

        The tick follows, in each partition, every record this ingest wrote before it, so a
        reader that has seen a tick on all three topics of a partition has seen their input
        up to that minute. The minute is :meth:`clock_now`'s. A worker of a consumer group
        vouches only for the input partitions assigned to it (``covers``; readers combine
        the workers' ticks with :class:`topics.clock.InputClock`); those read to their end
        are sent as ``idle``, a claim it renews every :data:`~topics.clock.IDLE_HEARTBEAT_MS`
        while another worker moves on (readers let a claim lapse when it is not renewed: its
        worker may be dead), and retracts within as long when a partition gets input again.
        One whose partitions are all read to their end without a record says that alone.
        """
        covers, idle = self._vouched()
        wall_ms = to_ms(now)
        self._read_others(covers)
        if idle != self._idle_sent:  # claims made or retracted: rate-limited on their own
            due = wall_ms - self._idle_tick_ms >= IDLE_HEARTBEAT_MS
        else:  # a renewal: while another worker moves on, a heartbeat after the last tick
            due = (
                bool(idle)
                and self._others_moved_ms > self._renewed_for
                and wall_ms - self._ticked_ms >= IDLE_HEARTBEAT_MS
            )
        seen = self.clock_now()
        if seen < 0:
            # Nothing read yet; once every partition of this worker is read to its end (it
            # holds nothing), say so, and renew it while it lasts, without a time.
            if covers is None or idle != covers or not due:
                return
            self._idle_sent = idle
            self._ticked_ms = self._idle_tick_ms = wall_ms
            self._renewed_for = self._others_moved_ms
            self._send_tick(result, ClockTick(
                event_id=stable_id("clock-idle", *idle), event_time=from_ms(0),
                source=self.stage, covers=[], idle=idle, inputs=_INPUT_PARTITIONS,
                sent_ms=wall_ms,
            ))  # fmt: skip
            return
        minute = seen - seen % 60_000
        if minute <= self.clock_ms:
            # The minute did not move, but which partitions are at their end may have, or a
            # claim is due for renewal: a reader combining several workers needs that (a
            # worker at its end no longer holds the clock back, while it says so). At most
            # once a heartbeat (a paced stream flips them at every batch); never a time older
            # than one already sent (but after an assignment, see assign).
            if covers is None or not due:
                return
            self._idle_tick_ms = wall_ms
            minute = self.clock_ms
        self.clock_ms = minute
        self._idle_sent = idle
        self._ticked_ms = wall_ms
        self._renewed_for = self._others_moved_ms
        self._send_tick(result, ClockTick(
            event_id=stable_id("clock", minute, *(covers or ()), "idle", *idle),
            event_time=from_ms(minute),
            source=self.stage,
            covers=covers,
            idle=idle,
            inputs=None if covers is None else _INPUT_PARTITIONS,
            sent_ms=None if covers is None else wall_ms,
        ))  # fmt: skip

    def _read_others(self, covers: list[str] | None) -> None:
        """Note whether another ingest worker moved on (a tick of its with partitions still
        being read, or a newer minute): this worker's idle claims are then due for renewal.
        Renewals themselves (all idle, the same minute) do not count, or idle workers would
        renew each other's forever."""
        while self.others:
            tick = self.others.popleft()
            if tick.covers is None or tick.sent_ms is None or tick.covers == covers:
                continue  # one writer, an older worker, or this worker's own
            writer = tuple(tick.covers)
            minute = to_ms(tick.event_time)
            busy = len(tick.idle) < len(tick.covers)
            if busy or minute > self._others_minute.get(writer, -1):
                self._others_moved_ms = max(self._others_moved_ms, tick.sent_ms)
            self._others_minute[writer] = max(minute, self._others_minute.get(writer, -1))

    def _vouched(self) -> tuple[list[str] | None, list[str]]:
        """(input partitions a tick vouches for, those of them read to their end).

        A tick vouches for every assigned partition (one is only sent when each has been
        read from or read to its end); the ones read to their end do not hold a reader's
        clock back, as they do not hold :meth:`clock_now` back. None without an assignment.
        """
        if not self.assigned:
            return None, []
        covers, idle = [], []
        for tp in sorted(self.assigned):
            name = f"{self._topics.get(tp[0], tp[0])}/{tp[1]}"
            covers.append(name)
            if tp in self.caught_up:
                idle.append(name)
        return covers, idle

    def _send_tick(self, result: BatchResult, tick: ClockTick) -> None:
        encoded = encode(tick)
        for name in self._out.values():
            for p in range(SESSION_PARTITIONS):
                result.outputs.append(Output(name, CLOCK_KEY, encoded, p))

    def _saw(self, moment: datetime) -> None:
        """Input time of the current message; a day or more ahead of ``now`` is ignored."""
        ms = to_ms(moment)
        if ms > self._now_ms + _DAY_MS:
            self._future += 1
            return
        tp = self._current
        if ms > self.seen_ms.get(tp, -1):
            self.seen_ms[tp] = ms

    def _one(self, short: str, partition: int, value: bytes | None, out: list[Output]) -> str:
        if value is None:
            raise RecordDecodeError("message has no value (null)")
        if short == "ocpp_frames":
            envelope = decode(value, OcppFrame)
            self._saw(envelope.received_at)
            pending = self.pending.setdefault(partition, {})
            adapted = self.adapter.adapt(envelope, pending=pending)
            for dest, key, record in adapted.records:
                out.append(Output(self._out[dest], key.encode(), encode(record)))
            if adapted.pending_put is not None:
                pkey, pvalue = adapted.pending_put
                pending[pkey] = pvalue
                out.append(Output(self.pending_topic, pkey.encode(), pvalue, partition))
            if adapted.pending_delete is not None:
                pending.pop(adapted.pending_delete, None)
                out.append(
                    Output(self.pending_topic, adapted.pending_delete.encode(), None, partition)
                )
            return "accepted" if adapted.records else "pending"
        if short == "csms_session_events":
            event = decode(value, SessionEvent)
            self._saw(event.event_time)
            out.append(Output(self._out["session_events"], event.session_id.encode(), value))
            return "accepted"
        if short == "csms_meter_readings":
            reading = decode(value, MeterReading)
            self._saw(reading.event_time)
            out.append(Output(self._out["meter_readings"], reading.session_id.encode(), value))
            return "accepted"
        if short == "psp_payment_events":
            payment = decode(value, PaymentEvent)
            self._saw(payment.event_time)
            if payment.session_id is None and payment.station_id and payment.transaction_id:
                payment = msgspec.structs.replace(
                    payment, session_id=session_id_for(payment.station_id, payment.transaction_id)
                )
                value = encode(payment)
            key = payment.session_id or payment.payment_id
            out.append(Output(self._out["payment_events"], key.encode(), value))
            return "accepted"
        raise RecordDecodeError(f"ingest does not read topic {short!r}")

    def restore(self, partition: int, records: Iterable[tuple[bytes, bytes | None]]) -> int:
        """Rebuild the pending calls of one partition from its changelog records."""
        pending = self.pending.setdefault(partition, {})
        pending.clear()
        for key, value in records:
            if value is None:
                pending.pop(key.decode(), None)
            else:
                pending[key.decode()] = value
        return len(pending)

    def forget(self, partition: int) -> None:
        """Drop the state of a partition this worker no longer owns (of every input topic)."""
        self.pending.pop(partition, None)
        for tp in [tp for tp in self.seen_ms if tp[1] == partition]:
            del self.seen_ms[tp]
        self.caught_up = {tp for tp in self.caught_up if tp[1] != partition}
        self.assigned = {tp for tp in self.assigned if tp[1] != partition}


class IngestStage:
    """Adapts :class:`IngestProcessor` to :class:`~streams.loop.TransactionalLoop`."""

    name = "ingest"
    input_topics = tuple(topic(short) for short in INPUT_TOPICS)
    changelog_source = topic("ocpp_frames")

    def __init__(self, processor: IngestProcessor, *, changelog: TopicSpec | None = None) -> None:
        self.processor = processor
        self.changelog = changelog or CATALOG["ocpp_pending_calls"]
        self.changelog_topic = self.changelog.name
        processor.pending_topic = self.changelog.name

    def process(self, batch: list[Message], now: datetime) -> BatchResult:
        return self.processor.process(
            ((m.topic(), m.partition(), m.offset(), m.key(), m.value()) for m in batch), now=now
        )

    def restore(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> int:
        return self.processor.restore(partition, records)

    def forget(self, partition: int) -> None:
        self.processor.forget(partition)

    def caught_up(self, partitions: list[tuple[str, int]]) -> None:
        self.processor.mark_caught_up(partitions)

    def background(self, settings: Settings) -> TickWatcher:
        return TickWatcher(settings, self.processor.others)

    def assigned(self, partitions: list[tuple[str, int]]) -> None:
        self.processor.assign(partitions)

    def event_times(self) -> dict[str, int]:
        """Latest input time read per input topic (short name), Unix ms."""
        newest: dict[str, int] = {}
        topics = self.processor._topics
        for (name, _), ms in list(self.processor.seen_ms.items()):
            short = topics.get(name, name)
            newest[short] = max(ms, newest.get(short, -1))
        return newest

    def record_metrics(self, result: BatchResult) -> None:
        for (short, outcome), n in result.counts.items():
            INGEST_EVENTS.labels(topic=short, outcome=outcome).inc(n)
        for reason, n in result.dead_letter_reasons.items():
            DEAD_LETTERS.labels(stage="ingest", error=reason).inc(n)


class TickWatcher:
    """Reads back the clock ticks of every ingest worker (each partition of the output topics
    has them all; this reads one, ``payment_events[0]``) into ``sink``, so that a worker
    whose partitions are read to their end renews that claim while another worker moves on
    (:mod:`topics.clock`: a claim not renewed lapses, as a dead worker's must). A thread
    with its own consumer (no group, from the partition's end)."""

    def __init__(self, settings: Settings, sink: deque[ClockTick]) -> None:
        self.sink = sink
        self._consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": f"{settings.ingest_group_id}-ticks",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 50,
            }
        )
        self._consumer.assign([TopicPartition(topic("payment_events"), 0, OFFSET_END)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="voltguard-ticks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self._consumer.consume(1000, 0.2)
            except KafkaException as exc:  # the loop's own calls report a dead cluster
                log.debug("clock tick watcher: %s", exc)
                continue
            for m in messages:
                if m.error() is not None or m.key() != CLOCK_KEY or not m.value():
                    continue
                try:
                    self.sink.append(decode(m.value(), ClockTick))
                except RecordDecodeError:
                    continue  # not a tick: billing and detection dead-letter it

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def IngestLoop(
    settings: Settings, *, on_batch: Callable[[BatchResult], None] | None = None
) -> TransactionalLoop:
    """The ingest worker: :class:`IngestStage` in a :class:`TransactionalLoop`."""
    processor = IngestProcessor(hash_secret=settings.require_hash_secret())
    group = settings.ingest_group_id
    changelog = changelog_spec("ocpp_pending_calls", group, DEFAULT_INGEST_GROUP)
    return TransactionalLoop(
        settings, IngestStage(processor, changelog=changelog), group_id=group, on_batch=on_batch
    )
