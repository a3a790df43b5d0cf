"""Ingest: outside input topics -> validated canonical topics, with dead letters.

The ingest is a stateless-by-design, high-volume edge, so it runs as a batch loop on
confluent-kafka rather than as Faust agents (DESIGN.md "Where the time goes": Faust costs
about 100 us per event in its own machinery, a bare consume-and-parse loop about 6 us).

Exactly once: every batch is one Kafka transaction holding the outputs, the dead letters,
the pending-call changelog writes and the consumed offsets. A worker killed mid-batch leaves
an open transaction that its restarted self (same transactional id) aborts, and the batch is
redone; consumers of the outputs read with ``isolation.level=read_committed``.

The only state, 1.6 StartTransaction calls awaiting the CSMS answer, lives in a dict per
input partition, backed by a compacted changelog topic written in the same transaction and
restored on partition assignment.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.metrics import DEAD_LETTERS, INGEST_BATCH_SECONDS, INGEST_EVENTS
from streams.settings import Settings
from topics.adapters.ocpp import OcppAdapter
from topics.catalog import topic
from topics.codec import decode, encode
from topics.exceptions import RecordDecodeError, UnsupportedFrame
from topics.identity import session_id_for, stable_id
from topics.records import DeadLetter, MeterReading, OcppFrame, PaymentEvent, SessionEvent

__all__ = ["INPUT_TOPICS", "IngestLoop", "IngestProcessor", "Output"]

log = logging.getLogger(__name__)

INPUT_TOPICS = ("ocpp_frames", "csms_session_events", "csms_meter_readings", "psp_payment_events")


@dataclass(slots=True)
class Output:
    """One message to produce: topic (real name), key, value (None = tombstone), partition."""

    topic: str
    key: bytes
    value: bytes | None
    partition: int | None = None


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
        self._pending_topic = topic("ocpp_pending_calls")
        self._dead_letters = topic("dead_letters")
        self._out = {
            short: topic(short) for short in ("session_events", "meter_readings", "payment_events")
        }

    def process(
        self,
        messages: Iterable[tuple[str, int, int, bytes | None, bytes | None]],
        *,
        now: datetime,
    ) -> BatchResult:
        """Handle a batch of ``(topic, partition, offset, key, value)``."""
        result = BatchResult()
        for source_topic, partition, offset, key, value in messages:
            short = self._topics.get(source_topic, source_topic)
            try:
                outcome = self._one(short, partition, value, result.outputs)
            except UnsupportedFrame:
                outcome = "ignored"
            except RecordDecodeError as exc:
                outcome = "dead_letter"
                self._dead_letter(result, source_topic, partition, offset, key, value, exc, now)
            except Exception as exc:  # bad input must never crash the worker
                log.exception("unexpected error on %s[%d]@%d", source_topic, partition, offset)
                outcome = "dead_letter"
                self._dead_letter(result, source_topic, partition, offset, key, value, exc, now)
            result.counts[(short, outcome)] += 1
        return result

    def _dead_letter(
        self,
        result: BatchResult,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        exc: Exception,
        now: datetime,
    ) -> None:
        reason = str(exc) or type(exc).__name__
        letter = DeadLetter(
            event_id=stable_id("dead-letter", source_topic, partition, offset),
            event_time=now,
            source=self.stage,
            original_topic=source_topic,
            original_partition=partition,
            original_offset=offset,
            original_key=key,
            original_value=value,
            stage=self.stage,
            error_type=type(exc).__name__,
            reason=reason,
        )
        result.outputs.append(Output(self._dead_letters, source_topic.encode(), encode(letter)))
        result.dead_letter_reasons[type(exc).__name__] += 1

    def _one(self, short: str, partition: int, value: bytes | None, out: list[Output]) -> str:
        if value is None:
            raise RecordDecodeError("message has no value (null)")
        if short == "ocpp_frames":
            envelope = decode(value, OcppFrame)
            pending = self.pending.setdefault(partition, {})
            adapted = self.adapter.adapt(envelope, pending=pending)
            for dest, key, record in adapted.records:
                out.append(Output(self._out[dest], key.encode(), encode(record)))
            if adapted.pending_put is not None:
                pkey, pvalue = adapted.pending_put
                pending[pkey] = pvalue
                out.append(Output(self._pending_topic, pkey.encode(), pvalue, partition))
            if adapted.pending_delete is not None:
                pending.pop(adapted.pending_delete, None)
                out.append(
                    Output(self._pending_topic, adapted.pending_delete.encode(), None, partition)
                )
            return "accepted" if adapted.records else "pending"
        if short == "csms_session_events":
            event = decode(value, SessionEvent)
            out.append(Output(self._out["session_events"], event.session_id.encode(), value))
            return "accepted"
        if short == "csms_meter_readings":
            reading = decode(value, MeterReading)
            out.append(Output(self._out["meter_readings"], reading.session_id.encode(), value))
            return "accepted"
        if short == "psp_payment_events":
            payment = decode(value, PaymentEvent)
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
        """Drop the state of a partition this worker no longer owns."""
        self.pending.pop(partition, None)


class IngestLoop:
    """The Kafka shell around :class:`IngestProcessor`: one transaction per batch."""

    def __init__(
        self, settings: Settings, *, on_batch: Callable[[BatchResult], None] | None = None
    ):
        self.settings = settings
        self.processor = IngestProcessor(hash_secret=settings.require_hash_secret())
        self.on_batch = on_batch
        self._stop = threading.Event()
        base = settings.kafka.client_config()
        self.consumer = Consumer(
            {
                **base,
                "group.id": settings.ingest_group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 5),
                "fetch.wait.max.ms": 50,
                "queued.max.messages.kbytes": 65536,
            }
        )
        self.producer = Producer(
            {
                **base,
                "transactional.id": f"{settings.ingest_group_id}-{settings.instance_id}",
                "transaction.timeout.ms": settings.transaction_timeout_ms,
                "linger.ms": 5,
                "batch.num.messages": 10000,
                "compression.type": "lz4",
            }
        )
        self._restore_base = base
        self._frames_topic = topic("ocpp_frames")
        self._pending_topic = topic("ocpp_pending_calls")

    def stop(self) -> None:
        """Ask the loop to finish its current batch and exit."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    # ---------------------------------------------------------------- partitions

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        frames = [tp.partition for tp in partitions if tp.topic == self._frames_topic]
        if frames:
            started = time.perf_counter()
            restored = self._restore(frames)
            log.info(
                "restored %d pending OCPP calls for partitions %s in %.2f s",
                restored, frames, time.perf_counter() - started,
            )  # fmt: skip
        self._assigned_at = time.monotonic()  # after the restore: its time is not idle time

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self._frames_topic:
                self.processor.forget(tp.partition)

    def _restore(self, partitions: list[int]) -> int:
        restorer = Consumer(
            {
                **self._restore_base,
                "group.id": f"{self.settings.ingest_group_id}-restore",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        total = 0
        try:
            for p in partitions:
                tp = TopicPartition(self._pending_topic, p)
                low, high = _watermarks(restorer, tp)
                records: list[tuple[bytes, bytes | None]] = []
                if high > low:
                    restorer.assign([TopicPartition(self._pending_topic, p, OFFSET_BEGINNING)])
                    idle_since = time.monotonic()
                    while True:
                        msg = restorer.poll(0.2)
                        if msg is not None and msg.error() is not None:
                            if msg.error().code() == KafkaError._PARTITION_EOF:
                                break  # the end, past any trailing transaction markers
                        elif msg is not None:
                            records.append((msg.key() or b"", msg.value()))
                            idle_since = time.monotonic()
                            if msg.offset() >= high - 1:
                                break
                        position = restorer.position([TopicPartition(self._pending_topic, p)])
                        if position and position[0].offset >= high:
                            break
                        if time.monotonic() - idle_since > 2.0:
                            # The tail is transaction markers only (no more data records).
                            break
                total += self.processor.restore(p, records)
        finally:
            restorer.close()
        return total

    # ---------------------------------------------------------------- loop

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Consume until :meth:`stop` (or ``max_idle_s`` without input, for tools and tests)."""
        self.producer.init_transactions(30)
        self.consumer.subscribe(
            [topic(short) for short in INPUT_TOPICS],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        last_input = time.monotonic()
        self._assigned_at: float | None = None
        try:
            while not self._stop.is_set():
                messages = self.consumer.consume(
                    self.settings.ingest_batch_max, self.settings.ingest_batch_timeout_s
                )
                batch = [m for m in messages if self._usable(m)]
                if not batch:
                    # Idle time counts from the later of the last input and the assignment,
                    # so a slow group join is not mistaken for an idle stream.
                    since = max(last_input, self._assigned_at or time.monotonic())
                    if max_idle_s is not None and time.monotonic() - since > max_idle_s:
                        break
                    continue
                last_input = time.monotonic()
                self._transact(batch)
        finally:
            self.consumer.close()
            self.producer.flush(10)

    @staticmethod
    def _usable(msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer error: %s", err)
        return False

    def _transact(self, batch: list[Message]) -> None:
        started = time.perf_counter()
        result = self.processor.process(
            ((m.topic(), m.partition(), m.offset(), m.key(), m.value()) for m in batch),
            now=datetime.now(UTC),
        )
        producer = self.producer
        producer.begin_transaction()
        produce = producer.produce
        for o in result.outputs:
            while True:
                try:
                    if o.partition is None:
                        produce(o.topic, o.value, o.key)
                    else:
                        produce(o.topic, o.value, o.key, partition=o.partition)
                    break
                except BufferError:
                    producer.poll(0.05)  # local queue full: let deliveries drain
        offsets: dict[tuple[str, int], int] = {}
        for m in batch:
            offsets[(m.topic(), m.partition())] = m.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            self.consumer.consumer_group_metadata(),
            30,
        )
        producer.commit_transaction(30)
        for (short, outcome), n in result.counts.items():
            INGEST_EVENTS.labels(topic=short, outcome=outcome).inc(n)
        for reason, n in result.dead_letter_reasons.items():
            DEAD_LETTERS.labels(stage="ingest", error=reason).inc(n)
        INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)
        if self.on_batch is not None:
            self.on_batch(result)


def _watermarks(consumer: Consumer, tp: TopicPartition, attempts: int = 50) -> tuple[int, int]:
    """Low and high offsets, retrying while a new partition's leader is being elected."""
    for attempt in range(attempts):
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() not in _TRANSIENT:
                raise
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


_TRANSIENT = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
)


def dead_letter_summary(letter: DeadLetter) -> str:
    """One line for a terminal: where it came from and why."""
    raw = (letter.original_value or b"")[:80].decode("utf-8", "replace")
    return (
        f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset} "
        f"{letter.error_type}: {letter.reason} | {raw}"
    )
