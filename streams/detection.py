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
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec
from confluent_kafka import Message

from models.online import OnlineConfig, OnlineScore, OnlineScorer
from models.rules import CardHistory, RuleConfig, TerminalWindow, TokenHistory, session_alerts
from streams.dead_letters import refuse
from streams.loop import Output, TransactionalLoop
from streams.metrics import (
    ALERTS,
    DEAD_LETTERS,
    DETECTION_EVENTS,
    DETECTION_SECONDS,
    MODEL_LOADED,
    MODEL_VERSION,
    ONLINE_SCORES,
    SCORING_SECONDS,
)
from streams.settings import DEFAULT_DETECTION_GROUP, Settings
from topics.catalog import CATALOG, CLOCK_KEY, TopicSpec, changelog_spec, topic
from topics.clock import InputClock, InputClockState
from topics.codec import decode, encode
from topics.exceptions import RecordDecodeError
from topics.records import ClockTick, FraudAlert, PaymentEvent, SessionFeatures
from topics.times import to_ms

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
_CLOCK_CHANNELS: Final = {"payment_events": "payments", "session_features": "features"}
"""Input topics whose clock ticks detection passes on, and the channel each becomes."""
_CHANNEL_TOPICS: Final = {channel: short for short, channel in _CLOCK_CHANNELS.items()}
CARD_TESTING_KINDS: Final = frozenset({"authorized", "failed"})
CARD_KINDS: Final = frozenset({"captured", "refunded"})
ALERT_MEMORY_MS: Final = 14 * 86_400_000
"""How long (event time) a station remembers the alerts it raised and the sessions it
scored: longer than billing keeps a session's samples (features are republished only while
it does)."""


class KeyedFeatures(msgspec.Struct, tag="features", frozen=True):
    """A session's features on its way to the token (or ``session:``) and then the station
    entity. ``source`` is the partition it comes from (of the features topic, then of the
    keyed topic); ``order_ms`` the event time it is handled at (its end, or for a session
    published after its partition's clock had passed its end, that partition's next tick)."""

    features: SessionFeatures
    token_features: dict[str, float] = {}
    source: int = 0
    order_ms: int | None = None


class KeyedPayment(msgspec.Struct, tag="payment", frozen=True):
    """A payment event on its way to its terminal or card entity (``source``: its payment
    partition)."""

    payment: PaymentEvent
    source: int = 0


class KeyedClock(msgspec.Struct, tag="clock", frozen=True):
    """A clock tick forwarded to every keyed partition: ``channel`` ``payments`` (from a
    payment partition), ``features`` (from a session features partition) or ``stations``
    (from a keyed partition, once it has passed on every session it released)."""

    at_ms: int
    channel: str = "payments"


Keyed = KeyedFeatures | KeyedPayment | KeyedClock
_keyed_decoder = msgspec.json.Decoder(Keyed)  # type: ignore[arg-type]
_keyed_encode = msgspec.json.Encoder().encode


class PartitionClock(msgspec.Struct, kw_only=True):
    """A keyed partition's view of event time, per channel: the latest tick of every
    source partition, and the watermark, the oldest of them once all have ticked."""

    sources: dict[str, dict[str, int]] = {}
    watermarks: dict[str, int] = {}

    def tick(self, channel: str, source: str, at_ms: int, *, sources: int) -> int | None:
        """Record a tick; the channel's new watermark when it moved, else None."""
        latest = self.sources.setdefault(channel, {})
        if at_ms <= latest.get(source, -1):
            return None
        latest[source] = at_ms
        if len(latest) < sources:
            return None
        watermark = min(latest.values())
        if watermark <= self.watermarks.get(channel, -1):
            return None
        self.watermarks[channel] = watermark
        return watermark


class Held(msgspec.Struct, array_like=True, frozen=True):
    """A session held at its token (channel ``features``) or station (``stations``) until
    that channel's clock passes its end: sessions are then handled in event-time order,
    whatever order the partitions were read in."""

    target: str
    at_ms: int
    """When it is released: -1 while it waits for ``after_tick_of``'s next tick."""
    keyed: KeyedFeatures
    after_tick_of: int | None = None


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
    "inputs": InputClockState,
    "token": TokenHistory,
    "terminal": TerminalWindow,
    "card": CardHistory,
    "station": StationMemory,
    "clock": PartitionClock,
    "held": Held,
}
_CLOCK: Final = b"clock"
_HELD_CHANNEL: Final = {"token": "features", "session": "features", "station": "stations"}
_ONLINE: Final = b"online"
"""Key of a partition's :class:`~models.online.OnlineScorer` (one per keyed partition: the
fleet model and the baselines of the stations whose key falls in it)."""
_ACCEPTS: Final[dict[str, type]] = {
    "token": KeyedFeatures,
    "session": KeyedFeatures,
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
    scores: list[OnlineScore] = field(default_factory=list)
    """Online scores of the sessions scored in this batch."""
    token_features: dict[str, dict[str, float]] = field(default_factory=dict)
    """The token features of the sessions that reached their station in this batch."""
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    scoring_seconds: list[tuple[str, float]] = field(default_factory=list)
    """``(detector, seconds per session)`` of each online scoring and offline batch call."""


def _channel_of(item: Held) -> str:
    return _HELD_CHANNEL[item.target.partition(":")[0]]


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
    online
        Settings of the online detectors (:class:`~models.online.OnlineConfig`); None
        turns them off.
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
        online: OnlineConfig | None = OnlineConfig(),  # noqa: B008 (frozen)
        model: Callable[[], Any] | None = None,
        stage: str = "detection",
    ) -> None:
        self.online = online
        self.model = model
        self.config = config or RuleConfig()
        self.partition_for = partition_for
        self.stage = stage
        self.partitions = CATALOG["detection_keyed"].partitions
        self.source_partitions = CATALOG["payment_events"].partitions
        self.state: dict[int, dict[bytes, object]] = {}
        self.pending: dict[int, set[bytes]] = {}
        """Per partition: keys of terminal and card entities waiting for the clock."""
        self.held: dict[int, dict[bytes, Held]] = {}
        self.input_clocks: dict[tuple[str, int], InputClock] = {}
        """Per partition: sessions waiting for their channel's clock (also in the state
        changelog, one row each, removed when released)."""
        self.features_partitions = CATALOG["session_features"].partitions
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
        self._now = now
        changed: dict[tuple[int, bytes], object | None] = {}
        self._to_score: list[tuple[StationMemory, SessionFeatures]] = []
        for source_topic, partition, offset, key, value in messages:
            short = self._topics.get(source_topic, source_topic)
            try:
                outcome = self._one(batch, changed, short, partition, key, value)
            except Exception as exc:  # bad input must never crash the worker
                outcome = refuse(
                    batch, (source_topic, partition, offset, key, value), exc,
                    stage=self.stage, now=now, expected=(RecordDecodeError,),
                )  # fmt: skip
            batch.counts[(short, outcome)] += 1
        if self._to_score:
            self._score_offline(batch)
        for (partition, key), state in changed.items():
            if state is None:
                value = None  # a tombstone: a released session
            elif isinstance(state, OnlineScorer):
                value = state.to_bytes()
            else:
                value = _state_encode(state)
            batch.outputs.append(Output(self.changelog_topic, key, value, partition))
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
            channel = _CLOCK_CHANNELS.get(short)
            if channel is None or value is None:
                return "ignored"
            # Event time, on to every keyed partition: terminals and cards decide on the
            # oldest payment partition's clock, tokens on the oldest features partition's.
            # Several ingest workers: a payments tick vouches only for the inputs its
            # sender reads; the partition's time is what all of them vouch for together.
            tick = decode(value, ClockTick)
            clock = self._input_clock(short, partition)
            before = clock.reached
            at_ms = clock.observe(tick)
            if clock.changed:
                clock.changed = False
                kept = clock.state()
                key = f"inputs:{short}".encode()
                self.state.setdefault(partition, {})[key] = kept
                changed[(partition, key)] = kept
            if at_ms is not None and at_ms > before:  # not for renewals (topics.clock)
                self._forward_clock(batch, channel, partition, at_ms)
            return "clock"
        if value is None:
            raise RecordDecodeError("message has no value (null)")
        if short == "session_features":
            f = decode(value, SessionFeatures)
            target = f"token:{f.token_hash}" if f.token_hash else f"session:{f.session_id}"
            self._rekey(batch, target, KeyedFeatures(f, source=partition))
            return "accepted"
        if short == "payment_events":
            p = decode(value, PaymentEvent)
            routed = False
            if p.terminal_id and p.kind in CARD_TESTING_KINDS:
                self._rekey(batch, f"terminal:{p.terminal_id}", KeyedPayment(p, partition))
                routed = True
            if p.card_fingerprint_hash and p.kind in CARD_KINDS:
                self._rekey(batch, f"card:{p.card_fingerprint_hash}", KeyedPayment(p, partition))
                routed = True
            return "accepted" if routed else "ignored"
        if short != "detection_keyed":
            raise RecordDecodeError(f"detection does not read topic {short!r}")
        kind, _, entity = (key or b"").decode("utf-8", "replace").partition(":")
        if kind not in _ACCEPTS or not entity:
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
            source = entity.rpartition("/")[2]
            self._clock(batch, changed, partition, keyed.channel, source, keyed.at_ms)
            return "clock"
        state_key = key or b""
        if isinstance(keyed, KeyedFeatures):
            # Held until its channel's clock passes, then handled in event-time order. A
            # session its own source partition's clock had already passed (published late)
            # waits for that partition's next tick: where it falls in the order then depends
            # on that partition alone, not on how far the others were read.
            clock = self._partition_clock(partition)
            channel = _HELD_CHANNEL[kind]
            at = keyed.order_ms if keyed.order_ms is not None else to_ms(keyed.features.event_time)
            after = None
            if at <= clock.sources.get(channel, {}).get(str(keyed.source), -1):
                at, after = -1, keyed.source
            held_key = b"held:" + state_key + b"|" + keyed.features.event_id.encode()
            item = Held(state_key.decode(), at, keyed, after)
            self.held.setdefault(partition, {})[held_key] = item
            changed[(partition, held_key)] = item
            return "held"
        if isinstance(keyed, KeyedPayment) and kind == "terminal":
            clock = self._partition_clock(partition)
            latest = clock.sources.get("payments", {}).get(str(keyed.source), -1)
            if to_ms(keyed.payment.event_time) <= latest:
                return "late"  # decided without it, whatever the other partitions' pace
        self._deliver(batch, changed, partition, kind, entity, state_key, keyed)
        return "accepted"

    def _deliver(
        self,
        batch: DetectionBatch,
        changed: dict[tuple[int, bytes], object],
        partition: int,
        kind: str,
        entity: str,
        state_key: bytes,
        keyed: Keyed,
    ) -> None:
        state = None if kind == "session" else self._state(partition, kind, entity, state_key)
        if isinstance(keyed, KeyedFeatures) and kind in ("token", "session"):
            token_features: dict[str, float] = {}
            if isinstance(state, TokenHistory):
                alerts, token_features = state.observe(keyed.features, self.config)
                self._publish(batch, alerts)
                changed[(partition, state_key)] = state
            f = keyed.features
            order = keyed.order_ms if keyed.order_ms is not None else to_ms(f.event_time)
            self._rekey(
                batch,
                f"station:{f.station_id}",
                KeyedFeatures(f, token_features, source=partition, order_ms=order),
            )
            return
        elif isinstance(state, StationMemory) and isinstance(keyed, KeyedFeatures):
            self._station(batch, changed, partition, state, keyed)
        elif isinstance(state, TerminalWindow | CardHistory) and isinstance(keyed, KeyedPayment):
            self._publish(batch, state.observe(keyed.payment, self.config))
            if state.pending:
                self.pending.setdefault(partition, set()).add(state_key)
        changed[(partition, state_key)] = state

    def _input_clock(self, short: str, partition: int) -> InputClock:
        """The ingest workers' ticks on one input partition, combined; restored from the
        changelog row of the same-numbered partition when there is one."""
        clock = self.input_clocks.get((short, partition))
        if clock is None:
            kept = self.state.get(partition, {}).get(f"inputs:{short}".encode())
            if isinstance(kept, InputClockState):
                clock = InputClock.from_state(kept)
            else:
                clock = InputClock()
            self.input_clocks[(short, partition)] = clock
        return clock

    def _forward_clock(self, batch: DetectionBatch, channel: str, source: int, at_ms: int) -> None:
        raw = f"clock:{channel}/{source}".encode()
        forward = _keyed_encode(KeyedClock(at_ms, channel))
        for target in range(self.partitions):
            batch.outputs.append(Output(self.keyed_topic, raw, forward, target))

    def _partition_clock(self, partition: int) -> PartitionClock:
        entities = self.state.setdefault(partition, {})
        clock = entities.get(_CLOCK)
        if not isinstance(clock, PartitionClock):
            clock = entities[_CLOCK] = PartitionClock()
        return clock

    def _clock(
        self,
        batch: DetectionBatch,
        changed: dict[tuple[int, bytes], object],
        partition: int,
        channel: str,
        source: str,
        at_ms: int,
    ) -> None:
        clock = self._partition_clock(partition)
        count = {"payments": self.source_partitions, "features": self.features_partitions}
        if at_ms > clock.sources.get(channel, {}).get(source, -1):
            self._schedule_late(changed, partition, channel, int(source), at_ms)
        watermark = clock.tick(channel, source, at_ms, sources=count.get(channel, self.partitions))
        changed[(partition, _CLOCK)] = clock
        if watermark is None:
            return
        if channel == "payments":
            entities = self.state.setdefault(partition, {})
            waiting = self.pending.get(partition, set())
            for key in sorted(waiting):
                state = entities.get(key)
                if isinstance(state, TerminalWindow | CardHistory):
                    self._publish(batch, state.advance(watermark, self.config))
                    changed[(partition, key)] = state
                    if state.pending:
                        continue
                waiting.discard(key)
            return
        self._release(batch, changed, partition, channel, watermark)
        if channel == "features":
            # Every session this partition held for its tokens up to here is on its way
            # to its station: the stations' clock may pass.
            self._forward_clock(batch, "stations", partition, watermark)

    def _schedule_late(
        self,
        changed: dict[tuple[int, bytes], object],
        partition: int,
        channel: str,
        source: int,
        at_ms: int,
    ) -> None:
        """Sessions that waited for ``source``'s next tick are handled at its time."""
        held = self.held.get(partition, {})
        for key, item in list(held.items()):
            if item.at_ms < 0 and item.after_tick_of == source and _channel_of(item) == channel:
                late = msgspec.structs.replace(item, at_ms=at_ms, after_tick_of=None)
                held[key] = late
                changed[(partition, key)] = late

    def _release(
        self,
        batch: DetectionBatch,
        changed: dict[tuple[int, bytes], object],
        partition: int,
        channel: str,
        watermark: int,
    ) -> None:
        """The held sessions of ``channel`` the watermark passed, in event-time order."""
        held = self.held.get(partition, {})
        due = sorted(
            (item.at_ms, item.keyed.features.session_id, key)
            for key, item in held.items()
            if 0 <= item.at_ms <= watermark and _channel_of(item) == channel
        )
        for _, _, key in due:
            item = held.pop(key)
            changed[(partition, key)] = None
            kind, _, entity = item.target.partition(":")
            keyed = msgspec.structs.replace(item.keyed, order_ms=item.at_ms)
            try:
                self._deliver(batch, changed, partition, kind, entity, item.target.encode(), keyed)
            except Exception as exc:  # one bad session must not stop the clock or the others
                # Not at an offset of its own: a negative one named after the held row.
                offset = -1 - zlib.crc32(key)
                message = (self.keyed_topic, partition, offset, item.target.encode(),
                           _keyed_encode(keyed))  # fmt: skip
                refuse(batch, message, exc, stage=self.stage, now=self._now, expected=())

    def _station(
        self,
        batch: DetectionBatch,
        changed: dict[tuple[int, bytes], object],
        partition: int,
        memory: StationMemory,
        keyed: KeyedFeatures,
    ) -> None:
        """Session rules, then (the first time the session is seen) the online scorer and
        the offline model; every alert the station raises, once."""
        f = keyed.features
        at = to_ms(f.event_time)
        memory.latest_ms = max(memory.latest_ms, at)
        fresh = []
        for alert in session_alerts(f, self.config):
            if alert.alert_id not in memory.alerted:
                memory.alerted[alert.alert_id] = at
                fresh.append(alert)
        if keyed.token_features:
            batch.token_features[f.session_id] = keyed.token_features
        if f.session_id not in memory.scored:
            memory.scored[f.session_id] = at
            if self.online is not None:
                scorer = self._scorer(partition)
                started = time.perf_counter()
                scored, online_alerts = scorer.observe_scored(f, keyed.token_features)
                batch.scoring_seconds.append(("online", time.perf_counter() - started))
                changed[(partition, _ONLINE)] = scorer
                batch.scores.append(scored)
                for alert in online_alerts:
                    if alert.alert_id not in memory.alerted:
                        memory.alerted[alert.alert_id] = at
                        fresh.append(alert)
            if self.model is not None:
                merged = {**f.features, **keyed.token_features}
                self._to_score.append((memory, msgspec.structs.replace(f, features=merged)))
        memory.prune()
        self._publish(batch, fresh)

    def _scorer(self, partition: int) -> OnlineScorer:
        entities = self.state.setdefault(partition, {})
        scorer = entities.get(_ONLINE)
        if not isinstance(scorer, OnlineScorer):
            scorer = entities[_ONLINE] = OnlineScorer(self.online)
        return scorer

    def _score_offline(self, batch: DetectionBatch) -> None:
        """The batch's new sessions through the offline model in service, in one call."""
        loaded = self.model() if self.model is not None else None
        if loaded is None:
            return
        memories = {f.session_id: m for m, f in self._to_score}
        started = time.perf_counter()
        _, alerts = loaded.score_batch([f for _, f in self._to_score])
        per_session = (time.perf_counter() - started) / len(self._to_score)
        batch.scoring_seconds.append(("offline", per_session))
        fresh = []
        for alert in alerts:
            memory = memories.get(alert.session_id or "")
            if memory is not None and alert.alert_id not in memory.alerted:
                memory.alerted[alert.alert_id] = to_ms(alert.event_time)
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
        for stale in [k for k in self.input_clocks if k[1] == partition]:
            del self.input_clocks[stale]  # the changelog's row is at least as new
        entities: dict[bytes, object] = {}
        for key, value in records:
            if value is None:
                entities.pop(key, None)
                continue
            if key == _ONLINE:
                try:
                    entities[key] = OnlineScorer.from_bytes(value)
                except ValueError:
                    log.warning("detection changelog: online scorer of another format dropped")
                continue
            kind = key.split(b":", 1)[0].decode("utf-8", "replace")  # b"clock" has no ":"
            decoder = _state_decoders.get(kind)
            if decoder is None:
                log.warning("detection changelog: unknown key %r skipped", key)
                continue
            entities[key] = decoder.decode(value)
        self.held[partition] = {k: v for k, v in list(entities.items()) if isinstance(v, Held)}
        for k in self.held[partition]:
            del entities[k]
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
        self.held.pop(partition, None)
        for key in [k for k in self.input_clocks if k[1] == partition]:
            del self.input_clocks[key]


class InMemoryDetection:
    """Runs a :class:`DetectionProcessor` without a broker (``voltguard replay``, tests).

    Inputs are handed in as the worker would read them; what the processor re-keys is read
    back at once, partition by partition in order, until nothing is left, so each entity
    sees its records in the order a worker would. ``alerts`` keeps every alert by id.
    """

    def __init__(self, processor: DetectionProcessor) -> None:
        self.processor = processor
        self.alerts: dict[str, FraudAlert] = {}
        self.scores: dict[str, OnlineScore] = {}
        """The online score of every scored session."""
        self.token_features: dict[str, dict[str, float]] = {}
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
            self.scores.update((s.session_id, s) for s in result.scores)
            self.token_features.update(result.token_features)
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
        self._versions: dict[str, str] = {}
        MODEL_LOADED.labels(detector="offline").set_function(
            lambda: float(processor.model is not None and processor.model() is not None)
        )

    def event_times(self) -> dict[str, int]:
        """Detection's clock per input (payment_events, session_features): the newest
        watermark of any keyed partition."""
        newest: dict[str, int] = {}
        for entities in list(self.processor.state.values()):
            clock = entities.get(_CLOCK)
            if not isinstance(clock, PartitionClock):
                continue
            for channel, ms in list(clock.watermarks.items()):
                short = _CHANNEL_TOPICS.get(channel)
                if short is not None:
                    newest[short] = max(ms, newest.get(short, -1))
        return newest

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
        for scored in result.scores:
            ONLINE_SCORES.observe(scored.score)
        for detector, seconds in result.scoring_seconds:
            SCORING_SECONDS.labels(detector=detector).observe(seconds)
        versions = {"online": result.scores[-1].model_version} if result.scores else {}
        loaded = self.processor.model() if self.processor.model is not None else None
        if loaded is not None:
            versions["offline"] = f"{loaded.model_name}/{loaded.version}"
        for detector, version in versions.items():
            if self._versions.get(detector) != version:
                if detector in self._versions:
                    MODEL_VERSION.remove(detector, self._versions[detector])
                MODEL_VERSION.labels(detector=detector, version=version).set(1)
                self._versions[detector] = version


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
