"""Billing and reconciliation in the stream: canonical topics -> bills and results.

:class:`BillingProcessor` is the pure handling of a batch of ``(topic, partition, offset,
key, value)``: it decodes, feeds one :class:`~billing.engine.BillingEngine` per input
partition and turns what the engines publish into outputs, with the changed cases as
changelog writes. ``voltguard replay`` runs the same processor without a broker;
:class:`BillingStage` runs it in a :class:`~streams.loop.TransactionalLoop`, so every batch
(outputs, dead letters, changelog writes and consumed offsets) is one Kafka transaction.

Why not Faust tables: the floor is 5,000 input events/s per worker, and Faust's own
machinery costs about 100 us per event (DESIGN.md "Where the time goes"); a table write per
event would double that. The loop keeps the table idea (state per partition in memory,
backed by a compacted, co-partitioned changelog, restored on assignment) and writes each
changed case once per batch.

Inputs are the session events, meter readings and payment events (keyed by session id, so
one partition holds a session's whole picture). The ingest interleaves clock ticks (key
:data:`~topics.catalog.CLOCK_KEY`) into every partition of the three topics, after the
records it wrote before them; a partition's watermark is the oldest of the latest ticks of
its three topics, so however the consumer interleaves the topics, a session is not decided
before the input up to its due time has been read (Kafka Streams solves the same problem
by picking the record with the smallest timestamp). Station and tariff reference data come
from their compacted topics through :mod:`streams.reference`, read whole at start and
followed afterwards.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import Message

from billing.engine import BillingEngine, Emit, LateInputError
from billing.reconciliation import ReconciliationConfig
from models.features import session_features
from streams.dead_letters import refuse
from streams.loop import Output, TransactionalLoop
from streams.metrics import (
    BILLING_EVENTS,
    BILLS,
    DEAD_LETTERS,
    LEAKAGE,
    OPEN_SESSIONS,
    RECONCILIATION_RESULTS,
    UNRECONCILED,
    WATERMARK,
)
from streams.settings import DEFAULT_BILLING_GROUP, Settings
from topics.catalog import CLOCK_KEY, TopicSpec, changelog_spec, topic
from topics.codec import decode, encode
from topics.exceptions import RecordDecodeError
from topics.identity import stable_id
from topics.records import (
    ClockTick,
    MeterReading,
    PaymentEvent,
    ReconciliationResult,
    SessionEvent,
    SessionFeatures,
    Station,
    Tariff,
)
from topics.times import from_ms

__all__ = ["INPUT_TOPICS", "BillingBatch", "BillingLoop", "BillingProcessor", "BillingStage"]

log = logging.getLogger(__name__)

INPUT_TOPICS = ("session_events", "meter_readings", "payment_events")


@dataclass(slots=True)
class BillingBatch:
    """What one batch produced: outputs for Kafka and what they were, for metrics and tools."""

    outputs: list[Output] = field(default_factory=list)
    emitted: list[Emit] = field(default_factory=list)
    features: list[SessionFeatures] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)


class BillingProcessor:
    """Pure batch handling with one engine per input partition.

    Parameters
    ----------
    config
        Grace periods and retention.
    tariffs, stations
        Reference data by id; the mappings are read at evaluation time, so a follower
        thread may keep updating them.
    """

    def __init__(
        self,
        *,
        config: ReconciliationConfig | None = None,
        tariffs: Mapping[str, Tariff] | None = None,
        stations: Mapping[str, Station] | None = None,
        stage: str = "billing",
    ) -> None:
        self.config = config or ReconciliationConfig()
        self.tariffs: Mapping[str, Tariff] = tariffs if tariffs is not None else {}
        self.stations: Mapping[str, Station] = stations if stations is not None else {}
        self.stage = stage
        self.engines: dict[int, BillingEngine] = {}
        self._topics = {topic(short): short for short in INPUT_TOPICS}
        self._out = {
            short: topic(short)
            for short in ("session_bills", "reconciliation", "reconciliation_mismatches")
        }
        self.changelog_topic = topic("billing_state")
        self._features_topic = topic("session_features")
        self._features_ticked: dict[int, int] = {}

    def engine(self, partition: int) -> BillingEngine:
        engine = self.engines.get(partition)
        if engine is None:
            engine = self.engines[partition] = BillingEngine(
                config=self.config, tariffs=self.tariffs, stations=self.stations
            )
        return engine

    def process(
        self,
        messages: Iterable[tuple[str, int, int, bytes | None, bytes | None]],
        *,
        now: datetime,
    ) -> BillingBatch:
        """Handle a batch of ``(topic, partition, offset, key, value)``."""
        batch = BillingBatch()
        touched: set[int] = set()
        for source_topic, partition, offset, key, value in messages:
            short = self._topics.get(source_topic, source_topic)
            touched.add(partition)
            try:
                emits = self._one(short, partition, key, value)
                outcome = "accepted"
            except Exception as exc:  # bad input must never crash the worker
                emits = []
                outcome = refuse(
                    batch, (source_topic, partition, offset, key, value), exc,
                    stage=self.stage, now=now, expected=(RecordDecodeError, LateInputError),
                )  # fmt: skip
            batch.counts[(short, outcome)] += 1
            for e in emits:
                if e.topic in ("session_bills", "session_features"):
                    self._features(batch, partition, e)
                if e.record is None:
                    continue
                batch.emitted.append(e)
                batch.outputs.append(Output(self._out[e.topic], e.key.encode(), encode(e.record)))
        for partition in sorted(touched):
            engine = self.engines.get(partition)
            if engine is None:
                continue
            self._features_tick(batch, partition, engine)
            for key, value in engine.take_changes():
                batch.outputs.append(Output(self.changelog_topic, key.encode(), value, partition))
        return batch

    def _features_tick(self, batch: BillingBatch, partition: int, engine: BillingEngine) -> None:
        """A clock tick on the partition's features, after its features: every session that
        ended before it has been published (bills, and so features, wait for the bill
        grace past the session's end). Detection orders sessions by it."""
        at = engine.watermark_ms - self.config.bill_grace_s * 1000
        minute = at - at % 60_000
        if engine.watermark_ms <= 0 or minute <= self._features_ticked.get(partition, -1):
            return
        self._features_ticked[partition] = minute
        tick = ClockTick(
            event_id=stable_id("features-clock", partition, minute),
            event_time=from_ms(minute),
            source=self.stage,
        )
        batch.outputs.append(Output(self._features_topic, CLOCK_KEY, encode(tick), partition))

    def _features(self, batch: BillingBatch, partition: int, e: Emit) -> None:
        """The session's feature record: with each version of its bill, and again when
        events of the finished session were re-sent (a replay detection must see)."""
        case = self.engine(partition).cases.get(e.key)
        session = e.session or (case.session if case is not None else None)
        if case is None or session is None or case.bill is None:
            return
        station = self.stations.get(session.station_id or "")
        features = session_features(
            session,
            price_minor=case.bill.total_minor,
            bill_event_id=case.bill.event_id if case.bill.unrated is None else None,
            payments=case.featured_payments(self.config.sample_retention_s),
            station=station,
        )
        batch.features.append(features)
        batch.outputs.append(Output(self._features_topic, e.key.encode(), encode(features)))

    def _one(
        self, short: str, partition: int, key: bytes | None, value: bytes | None
    ) -> list[Emit]:
        engine = self.engine(partition)
        if key == CLOCK_KEY and value is not None:
            return self._tick(short, partition, engine, decode(value, ClockTick))
        if value is None:
            raise RecordDecodeError("message has no value (null)")
        if short == "meter_readings":
            return engine.on_reading(decode(value, MeterReading))
        if short == "session_events":
            return engine.on_session_event(decode(value, SessionEvent))
        if short == "payment_events":
            return engine.on_payment(decode(value, PaymentEvent))
        raise RecordDecodeError(f"billing does not read topic {short!r}")

    def _tick(
        self, short: str, partition: int, engine: BillingEngine, tick: ClockTick
    ) -> list[Emit]:
        """A clock tick on one input topic; the watermark is the oldest of the three topics'.

        Each topic's time is what the ticks of every ingest worker vouch for together
        (:class:`~topics.clock.InputClock`, kept in the engine's changelog), so one worker
        ahead of another cannot move it.
        """
        return engine.on_tick(short, tick, channels=len(INPUT_TOPICS))

    def restore(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> int:
        """Rebuild one partition's engine from its changelog."""
        engine = self.engines[partition] = BillingEngine(
            config=self.config, tariffs=self.tariffs, stations=self.stations
        )
        return engine.restore(records)

    def forget(self, partition: int) -> None:
        """Drop a partition this worker no longer owns."""
        self.engines.pop(partition, None)


class BillingStage:
    """Adapts :class:`BillingProcessor` to :class:`~streams.loop.TransactionalLoop`."""

    name = "billing"
    input_topics = tuple(topic(short) for short in INPUT_TOPICS)
    changelog_source = topic("session_events")

    def __init__(self, processor: BillingProcessor, *, changelog: TopicSpec) -> None:
        self.processor = processor
        self.changelog = changelog
        self.changelog_topic = changelog.name
        processor.changelog_topic = changelog.name
        self.money = MoneyGauges()

    def process(self, batch: list[Message], now: datetime) -> BillingBatch:
        return self.processor.process(
            ((m.topic(), m.partition(), m.offset(), m.key(), m.value()) for m in batch), now=now
        )

    def restore(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> int:
        restored = self.processor.restore(partition, records)
        self.money.restore(partition, self.processor.engines[partition])
        return restored

    def forget(self, partition: int) -> None:
        self.processor.forget(partition)
        self.money.forget(partition)

    def _partition_of(self, key: str) -> int:
        for partition, engine in self.processor.engines.items():
            if key in engine.cases:
                return partition
        return -1

    def event_times(self) -> dict[str, int]:
        """Billing's clock per input topic (short name): the newest tick of any partition."""
        newest: dict[str, int] = {}
        for engine in list(self.processor.engines.values()):
            for short, ms in list(engine.channel_ticks.items()):
                newest[short] = max(ms, newest.get(short, -1))
        return newest

    def record_metrics(self, result: BillingBatch) -> None:
        for (short, outcome), n in result.counts.items():
            BILLING_EVENTS.labels(topic=short, outcome=outcome).inc(n)
        for reason, n in result.dead_letter_reasons.items():
            DEAD_LETTERS.labels(stage="billing", error=reason).inc(n)
        for e in result.emitted:
            if e.topic == "session_bills":
                BILLS.inc()
            elif e.topic == "reconciliation" and isinstance(e.record, ReconciliationResult):
                RECONCILIATION_RESULTS.labels(outcome=e.record.outcome).inc()
                self.money.publish(self._partition_of(e.key), e.record)
        engines = self.processor.engines
        OPEN_SESSIONS.set(sum(e.open_sessions() for e in engines.values()))
        for partition, engine in engines.items():
            if engine.watermark_ms > 0:
                WATERMARK.labels(partition=str(partition)).set(engine.watermark_ms / 1000)


LEAKAGE_OUTCOMES = frozenset({"undercharged", "missing_payment"})
"""Outcomes whose shortfall is revenue leakage (as ``voltguard replay`` sums it)."""


class MoneyGauges:
    """Leakage and unreconciled amounts per currency from the latest published result of
    each case (a correction replaces its earlier version), kept in the metrics gauges.

    Only cases with a non-zero amount are remembered; a revoked partition's are dropped.

    >>> g = MoneyGauges()
    >>> def result(outcome, delta):
    ...     return ReconciliationResult(event_id="e", event_time=from_ms(0), source="t",
    ...         result_id="r", session_id="s", outcome=outcome, currency="EUR",
    ...         delta_minor=delta)
    >>> g.publish(0, result("undercharged", -120)); g.totals
    {'EUR': (120, 120)}
    >>> g.publish(0, result("overcharged", 30)); g.totals
    {'EUR': (0, 30)}
    >>> g.publish(0, result("matched", 0)); g.totals
    {'EUR': (0, 0)}
    >>> g.publish(0, result("missing_payment", -500)); g.forget(0); g.totals
    {'EUR': (0, 0)}
    """

    def __init__(self) -> None:
        self._cases: dict[int, dict[str, tuple[str, int, int]]] = {}
        self.totals: dict[str, tuple[int, int]] = {}
        """Currency -> (leakage, unreconciled), minor units."""

    def publish(self, partition: int, result: ReconciliationResult) -> None:
        self.set(
            partition,
            result.session_id or result.result_id,
            result.outcome,
            result.currency,
            result.delta_minor,
        )

    def restore(self, partition: int, engine: BillingEngine) -> None:
        """A partition's cases as their restored changelog says they were last published."""
        self.forget(partition)
        for key, case in engine.cases.items():
            if case.result_outcome is not None:
                outcome, currency = case.result_outcome, case.result_currency
                self.set(partition, key, outcome, currency, case.result_delta_minor)

    def set(
        self, partition: int, key: str, outcome: str, currency: str | None, delta_minor: int
    ) -> None:
        cases = self._cases.setdefault(partition, {})
        old = cases.pop(key, None)
        if old is not None:
            self._add(*old, sign=-1)
        leak = -delta_minor if outcome in LEAKAGE_OUTCOMES else 0
        open_minor = 0 if outcome in ("matched", "unrated") else abs(delta_minor)
        if currency is not None and (leak > 0 or open_minor > 0):
            cases[key] = (currency, max(0, leak), open_minor)
            self._add(*cases[key], sign=1)
        elif currency is not None and currency not in self.totals:
            self._add(currency, 0, 0, sign=1)

    def forget(self, partition: int) -> None:
        for case in self._cases.pop(partition, {}).values():
            self._add(*case, sign=-1)

    def _add(self, currency: str, leak: int, open_minor: int, *, sign: int) -> None:
        total_leak, total_open = self.totals.get(currency, (0, 0))
        self.totals[currency] = (total_leak + sign * leak, total_open + sign * open_minor)
        LEAKAGE.labels(currency=currency).set(self.totals[currency][0])
        UNRECONCILED.labels(currency=currency).set(self.totals[currency][1])


def BillingLoop(
    settings: Settings,
    *,
    tariffs: Mapping[str, Tariff],
    stations: Mapping[str, Station],
    on_batch: Callable[[BillingBatch], None] | None = None,
) -> TransactionalLoop:
    """The billing worker: :class:`BillingStage` in a :class:`TransactionalLoop`."""
    processor = BillingProcessor(
        config=settings.reconciliation_config(), tariffs=tariffs, stations=stations
    )
    group = settings.billing_group_id
    changelog = changelog_spec("billing_state", group, DEFAULT_BILLING_GROUP)
    return TransactionalLoop(
        settings, BillingStage(processor, changelog=changelog), group_id=group, on_batch=on_batch
    )
