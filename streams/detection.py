"""Fraud detection in the stream: session features and payments -> explained fraud alerts.

Rules about a token, a station or a payment terminal keep state under that key, so their
input is re-keyed first (Faust's ``group_by``, Kafka Streams' repartition): one
:class:`~streams.loop.TransactionalLoop` reads three topics and writes its own repartition
topic in the same transaction as everything else.

* ``session_features`` (keyed by session): a session with a token goes to ``token:<hash>``,
  one without to ``station:<station_id>``;
* ``payment_events`` (keyed by session): an authorisation attempt made at a terminal goes
  to ``terminal:<terminal_id>``, a capture or refund with a card to ``card:<hash>``;
* ``detection_keyed`` (the repartition topic, keyed by entity):

  - ``token:`` runs the token rules (:class:`~models.rules.TokenHistory`: clone overlap,
    impossible travel, offline unknown token), adds the ``token_*`` features and sends the
    session on to ``station:<station_id>``;
  - ``station:`` runs the session rules (:func:`~models.rules.session_alerts`) and the
    anomaly scorers, remembering which alerts it raised;
  - ``terminal:`` runs card testing (:class:`~models.rules.TerminalWindow`);
  - ``card:`` runs refund abuse (:class:`~models.rules.CardHistory`);
  - ``clock:`` carries the payments' event-time clock to every keyed partition: terminal
    and card rules decide once the oldest payment partition's clock has passed.

Every entity's state is a row of the ``detection_state`` changelog (compacted, partition =
the entity's partition of the repartition topic), written once per batch when it changed,
in the batch's transaction. So a worker killed mid-batch redoes the batch from the last
committed state and offsets: no alert is lost, none is published twice (an alert id is a
hash of what it is about, and each entity remembers the ids it raised, so features that
are republished when payments follow the bill raise nothing again).

:class:`DetectionProcessor` is the pure handling of a batch; ``voltguard replay`` runs it
too, feeding the repartition outputs back in, so replay and worker share the code.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec
from confluent_kafka import Message

from models.rules import CardHistory, RuleConfig, TerminalWindow, TokenHistory, session_alerts
from streams.dead_letters import reject
from streams.loop import Output, TransactionalLoop
from streams.metrics import ALERTS, DEAD_LETTERS, DETECTION_EVENTS, DETECTION_SECONDS
from streams.settings import DEFAULT_DETECTION_GROUP, Settings
from topics.catalog import CATALOG, CLOCK_KEY, TopicSpec, changelog_spec, topic
from topics.codec import decode, encode
from topics.exceptions import RecordDecodeError
from topics.records import ClockTick, FraudAlert, PaymentEvent, SessionFeatures

__all__ = [
    "DetectionBatch",
    "DetectionLoop",
    "DetectionProcessor",
    "DetectionStage",
    "InMemoryDetection",
    "KeyedFeatures",
    "KeyedPayment",
    "StationMemory",
]

log = logging.getLogger(__name__)

INPUT_TOPICS: Final = ("session_features", "payment_events", "detection_keyed")
CARD_TESTING_KINDS: Final = frozenset({"authorized", "failed"})
CARD_KINDS: Final = frozenset({"captured", "refunded"})
ALERT_MEMORY_MS: Final = 14 * 86_400_000
"""How long (event time) a station remembers the alerts it raised and the sessions it
scored: longer than billing keeps a session's samples (features are republished only while
it does)."""


class KeyedFeatures(msgspec.Struct, tag="features", frozen=True):
    """A session's features on its way to the token and then the station entity."""

    features: SessionFeatures
    token_features: dict[str, float] = {}


class KeyedPayment(msgspec.Struct, tag="payment", frozen=True):
    """An authorisation attempt on its way to the terminal entity."""

    payment: PaymentEvent


class KeyedClock(msgspec.Struct, tag="clock", frozen=True):
    """A payment partition's clock tick, forwarded to every keyed partition."""

    at_ms: int


Keyed = KeyedFeatures | KeyedPayment | KeyedClock
_keyed_decoder = msgspec.json.Decoder(Keyed)  # type: ignore[arg-type]
_keyed_encode = msgspec.json.Encoder().encode


class PaymentClock(msgspec.Struct, kw_only=True):
    """A keyed partition's view of the payments' event time: the latest tick of every
    payment partition; the watermark is the oldest of them (once all have ticked)."""

    sources: dict[str, int] = {}
    watermark_ms: int = -1


class StationMemory(msgspec.Struct, kw_only=True):
    """What a station entity remembers: alert ids it raised and sessions it scored
    (``id -> event time ms``), pruned after :data:`ALERT_MEMORY_MS`."""

    alerted: dict[str, int] = {}
    scored: dict[str, int] = {}
    latest_ms: int = 0

    def prune(self) -> None:
        horizon = self.latest_ms - ALERT_MEMORY_MS
        if any(t < horizon for t in self.alerted.values()):
            self.alerted = {k: t for k, t in self.alerted.items() if t >= horizon}
        if any(t < horizon for t in self.scored.values()):
            self.scored = {k: t for k, t in self.scored.items() if t >= horizon}


_STATE_TYPES: Final = {
    "token": TokenHistory,
    "terminal": TerminalWindow,
    "card": CardHistory,
    "station": StationMemory,
    "clock": PaymentClock,
}
_CLOCK: Final = b"clock"
_ACCEPTS: Final[dict[str, type]] = {
    "token": KeyedFeatures,
    "station": KeyedFeatures,
    "terminal": KeyedPayment,
    "card": KeyedPayment,
    "clock": KeyedClock,
}
_state_encode = msgspec.msgpack.Encoder().encode
_state_decoders = {kind: msgspec.msgpack.Decoder(t) for kind, t in _STATE_TYPES.items()}


@dataclass(slots=True)
class DetectionBatch:
    """What one batch produced: outputs for Kafka, the alerts, counts for metrics."""

    outputs: list[Output] = field(default_factory=list)
    alerts: list[FraudAlert] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class DetectionProcessor:
    """Pure batch handling of the detection stage, with the entities' state per partition.

    Parameters
    ----------
    config
        Rule thresholds.
    partitions
        Partition count of the repartition topic (the catalog's): the replay computes the
        partition of a re-keyed record with it, as the producer's partitioner does.
    partition_for
        ``(key, partitions) -> partition`` (librdkafka's CRC32 partitioner).
    model
        Returns the offline model in service (a
        :class:`~streams.model_follower.LoadedModel`) or None; asked once per batch, and
        the batch's newly seen sessions are scored in one ``score_many`` call.
    """

    def __init__(
        self,
        *,
        config: RuleConfig | None = None,
        partition_for: Callable[[bytes, int], int],
        model: Callable[[], Any] | None = None,
        stage: str = "detection",
    ) -> None:
        self.model = model
        self.config = config or RuleConfig()
        self.partition_for = partition_for
        self.stage = stage
        self.partitions = CATALOG["detection_keyed"].partitions
        self.source_partitions = CATALOG["payment_events"].partitions
        self.state: dict[int, dict[bytes, object]] = {}
        self.pending: dict[int, set[bytes]] = {}
        """Per partition: keys of terminal and card entities waiting for the clock."""
        self._topics = {topic(short): short for short in INPUT_TOPICS}
        self.keyed_topic = topic("detection_keyed")
        self.changelog_topic = topic("detection_state")
        self._alerts_topic = topic("fraud_alerts")

    def use_keyed_topic(self, name: str) -> None:
        """Re-key into (and read back from) ``name``: a consumer group's own copy."""
        self._topics.pop(self.keyed_topic, None)
        self.keyed_topic = name
        self._topics[name] = "detection_keyed"

    # ---------------------------------------------------------------- batch

    def process(
        self,
        messages: Iterable[tuple[str, int, int, bytes | None, bytes | None]],
        *,
        now: datetime,
    ) -> DetectionBatch:
        """Handle a batch of ``(topic, partition, offset, key, value)``."""
        batch = DetectionBatch()
        changed: dict[tuple[int, bytes], object] = {}
        self._to_score: list[tuple[StationMemory, SessionFeatures]] = []
        for source_topic, partition, offset, key, value in messages:
            short = self._topics.get(source_topic, source_topic)
            try:
                outcome = self._one(batch, changed, short, partition, key, value)
            except RecordDecodeError as exc:
                outcome = "dead_letter"
                reject(
                    batch,
                    (source_topic, partition, offset, key, value),
                    exc,
                    stage=self.stage,
                    now=now,
                )
            except Exception as exc:  # bad input must never crash the worker
                log.exception("unexpected error on %s[%d]@%d", source_topic, partition, offset)
                outcome = "dead_letter"
                reject(
                    batch,
                    (source_topic, partition, offset, key, value),
                    exc,
                    stage=self.stage,
                    now=now,
                )
            batch.counts[(short, outcome)] += 1
        if self._to_score:
            self._score_offline(batch)
        for (partition, key), state in changed.items():
            batch.outputs.append(Output(self.changelog_topic, key, _state_encode(state), partition))
        return batch

    def _one(
        self,
        batch: DetectionBatch,
        changed: dict[tuple[int, bytes], object],
        short: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
    ) -> str:
        if key == CLOCK_KEY:
            if short != "payment_events" or value is None:
                return "ignored"
            # The payments' event-time clock, on to every keyed partition: terminals decide
            # on the oldest of all payment partitions' latest ticks.
            tick = decode(value, ClockTick)
            forward = _keyed_encode(KeyedClock(_ms(tick.event_time)))
            raw = f"clock:{partition}".encode()
            for target in range(self.partitions):
                batch.outputs.append(Output(self.keyed_topic, raw, forward, target))
            return "clock"
        if value is None:
            raise RecordDecodeError("message has no value (null)")
        if short == "session_features":
            f = decode(value, SessionFeatures)
            target = f"token:{f.token_hash}" if f.token_hash else f"station:{f.station_id}"
            self._rekey(batch, target, KeyedFeatures(f))
            return "accepted"
        if short == "payment_events":
            p = decode(value, PaymentEvent)
            routed = False
            if p.terminal_id and p.kind in CARD_TESTING_KINDS:
                self._rekey(batch, f"terminal:{p.terminal_id}", KeyedPayment(p))
                routed = True
            if p.card_fingerprint_hash and p.kind in CARD_KINDS:
                self._rekey(batch, f"card:{p.card_fingerprint_hash}", KeyedPayment(p))
                routed = True
            return "accepted" if routed else "ignored"
        if short != "detection_keyed":
            raise RecordDecodeError(f"detection does not read topic {short!r}")
        kind, _, entity = (key or b"").decode("utf-8", "replace").partition(":")
        if kind not in _STATE_TYPES or not entity:
            raise RecordDecodeError(f"unknown detection key {key!r}")
        try:
            keyed = _keyed_decoder.decode(value)
        except msgspec.ValidationError as exc:
            raise RecordDecodeError(f"invalid keyed record: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise RecordDecodeError(f"not JSON: {exc}") from exc
        if not isinstance(keyed, _ACCEPTS[kind]):
            raise RecordDecodeError(f"a {type(keyed).__name__} cannot go to a {kind} entity")
        if isinstance(keyed, KeyedClock):
            self._clock(batch, changed, partition, entity, keyed.at_ms)
            return "clock"
        state_key = key or b""
        state = self._state(partition, kind, entity, state_key)
        if isinstance(state, TokenHistory) and isinstance(keyed, KeyedFeatures):
            alerts, token_features = state.observe(keyed.features, self.config)
            self._publish(batch, alerts)
            f = keyed.features
            self._rekey(batch, f"station:{f.station_id}", KeyedFeatures(f, token_features))
        elif isinstance(state, StationMemory) and isinstance(keyed, KeyedFeatures):
            self._station(batch, state, keyed)
        elif isinstance(state, TerminalWindow | CardHistory) and isinstance(keyed, KeyedPayment):
            self._publish(batch, state.observe(keyed.payment, self.config))
            if state.pending:
                self.pending.setdefault(partition, set()).add(state_key)
        changed[(partition, state_key)] = state
        return "accepted"

    def _clock(
        self,
        batch: DetectionBatch,
        changed: dict[tuple[int, bytes], object],
        partition: int,
        source: str,
        at_ms: int,
    ) -> None:
        entities = self.state.setdefault(partition, {})
        clock = entities.get(_CLOCK)
        if not isinstance(clock, PaymentClock):
            clock = entities[_CLOCK] = PaymentClock()
        if at_ms <= clock.sources.get(source, -1):
            return
        clock.sources[source] = at_ms
        changed[(partition, _CLOCK)] = clock
        if len(clock.sources) < self.source_partitions:
            return
        watermark = min(clock.sources.values())
        if watermark <= clock.watermark_ms:
            return
        clock.watermark_ms = watermark
        waiting = self.pending.get(partition, set())
        for key in sorted(waiting):
            state = entities.get(key)
            if isinstance(state, TerminalWindow | CardHistory):
                self._publish(batch, state.advance(watermark, self.config))
                changed[(partition, key)] = state
                if state.pending:
                    continue
            waiting.discard(key)

    def _station(self, batch: DetectionBatch, memory: StationMemory, keyed: KeyedFeatures) -> None:
        f = keyed.features
        at = _ms(f.event_time)
        memory.latest_ms = max(memory.latest_ms, at)
        fresh = []
        for alert in session_alerts(f, self.config):
            if alert.alert_id not in memory.alerted:
                memory.alerted[alert.alert_id] = at
                fresh.append(alert)
        if f.session_id not in memory.scored:
            memory.scored[f.session_id] = at
            if self.model is not None:
                merged = {**f.features, **keyed.token_features}
                self._to_score.append((memory, msgspec.structs.replace(f, features=merged)))
        memory.prune()
        self._publish(batch, fresh)

    def _score_offline(self, batch: DetectionBatch) -> None:
        """The batch's new sessions through the offline model in service, in one call."""
        loaded = self.model() if self.model is not None else None
        if loaded is None:
            return
        memories = {f.session_id: m for m, f in self._to_score}
        _, alerts = loaded.score_batch([f for _, f in self._to_score])
        fresh = []
        for alert in alerts:
            memory = memories.get(alert.session_id or "")
            if memory is not None and alert.alert_id not in memory.alerted:
                memory.alerted[alert.alert_id] = _ms(alert.event_time)
                fresh.append(alert)
        self._publish(batch, fresh)

    # ---------------------------------------------------------------- helpers

    def _state(self, partition: int, kind: str, entity: str, key: bytes) -> object:
        entities = self.state.setdefault(partition, {})
        state = entities.get(key)
        if state is None:
            if kind == "token":
                state = TokenHistory(token_hash=entity)
            elif kind == "terminal":
                state = TerminalWindow(terminal_id=entity)
            elif kind == "card":
                state = CardHistory(card_hash=entity)
            else:
                state = StationMemory()
            entities[key] = state
        return state

    def _rekey(self, batch: DetectionBatch, key: str, record: Keyed) -> None:
        raw = key.encode()
        batch.outputs.append(
            Output(
                self.keyed_topic,
                raw,
                _keyed_encode(record),
                self.partition_for(raw, self.partitions),
            )
        )

    def _publish(self, batch: DetectionBatch, alerts: list[FraudAlert]) -> None:
        for alert in alerts:
            batch.alerts.append(alert)
            batch.outputs.append(Output(self._alerts_topic, alert.alert_id.encode(), encode(alert)))

    # ---------------------------------------------------------------- state

    def restore(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> int:
        """Rebuild one partition's entities from their changelog (latest row per key)."""
        entities: dict[bytes, object] = {}
        for key, value in records:
            if value is None:
                entities.pop(key, None)
                continue
            kind = key.split(b":", 1)[0].decode("utf-8", "replace")  # b"clock" has no ":"
            decoder = _state_decoders.get(kind)
            if decoder is None:
                log.warning("detection changelog: unknown key %r skipped", key)
                continue
            entities[key] = decoder.decode(value)
        self.state[partition] = entities
        self.pending[partition] = {
            k
            for k, v in entities.items()
            if isinstance(v, TerminalWindow | CardHistory) and v.pending
        }
        return len(entities)

    def forget(self, partition: int) -> None:
        """Drop a partition this worker no longer owns."""
        self.state.pop(partition, None)
        self.pending.pop(partition, None)


class InMemoryDetection:
    """Runs a :class:`DetectionProcessor` without a broker (``voltguard replay``, tests).

    Inputs are handed in as the worker would read them; what the processor re-keys is read
    back at once, partition by partition in order, until nothing is left, so each entity
    sees its records in the order a worker would. ``alerts`` keeps every alert by id.
    """

    def __init__(self, processor: DetectionProcessor) -> None:
        self.processor = processor
        self.alerts: dict[str, FraudAlert] = {}
        self.dead_letters: list[Output] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self._offsets: Counter[tuple[str, int]] = Counter()
        self._dead = topic("dead_letters")

    def _offset(self, name: str, partition: int) -> int:
        offset = self._offsets[(name, partition)]
        self._offsets[(name, partition)] += 1
        return offset

    def feed(
        self,
        messages: Iterable[tuple[str, int, bytes | None, bytes | None]],
        *,
        now: datetime,
    ) -> list[FraudAlert]:
        """Process ``(topic, partition, key, value)`` of the stage's inputs (session
        features and payment events as billing and ingest publish them, clock ticks
        included); returns the new alerts."""
        p = self.processor
        batch = [(t, part, self._offset(t, part), k, v) for t, part, k, v in messages]
        new: list[FraudAlert] = []
        while batch:
            result = p.process(batch, now=now)
            self.counts.update(result.counts)
            batch = []
            for o in result.outputs:
                if o.topic == p.keyed_topic:
                    part = o.partition or 0
                    batch.append((o.topic, part, self._offset(o.topic, part), o.key, o.value))
                elif o.topic == self._dead:
                    self.dead_letters.append(o)
            for alert in result.alerts:
                if alert.alert_id not in self.alerts:
                    self.alerts[alert.alert_id] = alert
                    new.append(alert)
            batch.sort(key=lambda m: m[1])  # stable: per partition in produced order
        return new


class DetectionStage:
    """Adapts :class:`DetectionProcessor` to :class:`~streams.loop.TransactionalLoop`.

    The repartition topic and the changelog belong to the consumer group (as a Kafka
    Streams application's internal topics do): a non-default group gets its own pair.
    """

    name = "detection"

    def __init__(
        self, processor: DetectionProcessor, *, changelog: TopicSpec, keyed: TopicSpec
    ) -> None:
        self.processor = processor
        self.changelog = changelog
        self.internal_topics = (keyed, changelog)
        self.changelog_topic = changelog.name
        self.changelog_source = keyed.name
        self.input_topics = (topic("session_features"), topic("payment_events"), keyed.name)
        processor.changelog_topic = changelog.name
        processor.use_keyed_topic(keyed.name)

    def process(self, batch: list[Message], now: datetime) -> DetectionBatch:
        started = time.perf_counter()
        result = self.processor.process(
            ((m.topic(), m.partition(), m.offset(), m.key(), m.value()) for m in batch), now=now
        )
        if batch:
            DETECTION_SECONDS.observe((time.perf_counter() - started) / len(batch))
        return result

    def restore(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> int:
        return self.processor.restore(partition, records)

    def forget(self, partition: int) -> None:
        self.processor.forget(partition)

    def record_metrics(self, result: DetectionBatch) -> None:
        for (short, outcome), n in result.counts.items():
            DETECTION_EVENTS.labels(topic=short, outcome=outcome).inc(n)
        for reason, n in result.dead_letter_reasons.items():
            DEAD_LETTERS.labels(stage="detection", error=reason).inc(n)
        for alert in result.alerts:
            ALERTS.labels(kind=alert.kind, severity=alert.severity).inc()


def DetectionLoop(
    settings: Settings,
    *,
    config: RuleConfig | None = None,
    model: Callable[[], Any] | None = None,
    on_batch: Callable[[DetectionBatch], None] | None = None,
) -> TransactionalLoop:
    """The detection worker: :class:`DetectionStage` in a :class:`TransactionalLoop`.

    ``model`` is usually ``ModelHolder.current`` of a running
    :class:`~streams.model_follower.ModelFollower` (new versions are picked up without a
    restart); None scores with the rules and online detectors only.
    """
    from streams.replay import partition_for

    processor = DetectionProcessor(config=config, partition_for=partition_for, model=model)
    group = settings.detection_group_id
    stage = DetectionStage(
        processor,
        changelog=changelog_spec("detection_state", group, DEFAULT_DETECTION_GROUP),
        keyed=changelog_spec("detection_keyed", group, DEFAULT_DETECTION_GROUP),
    )
    return TransactionalLoop(settings, stage, group_id=group, on_batch=on_batch)
