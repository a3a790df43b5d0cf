"""A Kafka stage loop with exactly-once output and changelog-backed state.

The loop consumes a batch, hands it to a pure :class:`Stage`, and writes everything the stage
returns (outputs, dead letters, changelog writes of its state) in one Kafka transaction
together with the consumed offsets. A worker killed mid-batch leaves an open transaction
that its restarted self (same transactional id) aborts; the batch is then redone. Readers use
``isolation.level=read_committed``.

State lives in the stage, per input partition, and in a compacted changelog topic with the
same partition count as the inputs (co-partitioned): on assignment the loop replays the
changelog partition into the stage, on revocation the stage forgets it. This is what a Faust
table does; here it costs one changelog write per changed key per batch rather than one per
event (DESIGN.md "Where the time goes").
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.metrics import BATCH_SECONDS, CONSUMER_LAG, EVENT_TIME, STAGE_INPUT, STAGE_OUTPUT
from streams.settings import Settings
from topics.catalog import CATALOG
from topics.clock import IDLE_HEARTBEAT_MS

__all__ = ["ConnectError", "Output", "Stage", "TransactionalLoop", "watermarks"]

log = logging.getLogger(__name__)


class ConnectError(RuntimeError):
    """The worker could not start its Kafka transactions; the message says what the
    cluster or the client reported (refused credentials, a certificate not trusted)."""


_CONNECT_ERRORS = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
     KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}
)  # fmt: skip


class _ConnectErrors:
    """librdkafka's ``error_cb`` (served by poll): keeps the last connection error for the
    message of a failed start; librdkafka retries all of them itself."""

    __slots__ = ("last", "stage")

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.last: str | None = None

    def __call__(self, err: KafkaError) -> None:
        if err.code() in _CONNECT_ERRORS:
            self.last = err.str()
        log.debug("%s: Kafka client error: %s", self.stage, err)


@dataclass(slots=True)
class Output:
    """One message to produce: topic (real name), key, value (None = tombstone), partition."""

    topic: str
    key: bytes
    value: bytes | None
    partition: int | None = None


class Stage(Protocol):
    """The pure part of a loop: what to read, how to handle a batch, where its state lives.

    ``process`` returns an object with an ``outputs: list[Output]`` attribute.
    """

    name: str
    input_topics: Sequence[str]
    changelog_topic: str | None
    changelog_source: str | None
    """Input topic whose assigned partitions own the changelog partitions of the same number."""

    def process(self, batch: list[Message], now: datetime) -> Any: ...
    def restore(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> int: ...
    def forget(self, partition: int) -> None: ...
    def record_metrics(self, result: Any) -> None: ...

    # Optional: ``event_times() -> dict[str, int]``, the newest event time (Unix ms) the
    # stage has handled per topic short name, sampled with the consumer lag;
    # ``split(batch) -> list[list[Message]]``, consecutive parts of a batch to commit as
    # transactions of their own (the router keeps a trigger and its resolve apart); and
    # ``background(settings)``, started when the loop runs and ``stop()``-ed when it ends
    # (the ingest reads the other ingest workers' clock ticks back).


class TransactionalLoop:
    """Runs a :class:`Stage` on Kafka: one transaction per batch, state restored on assignment.

    Parameters
    ----------
    settings
        Kafka connection, batch sizes, timeouts, instance id.
    stage
        The pure handling of a batch plus its changelog-backed state.
    group_id
        Consumer group; with the instance id it forms the transactional id, so a restarted
        instance fences its predecessor and aborts its open transaction.
    on_batch
        Called after each committed batch with the stage's result (benchmarks, demo, tests).
    """

    def __init__(
        self,
        settings: Settings,
        stage: Stage,
        *,
        group_id: str,
        on_batch: Callable[[Any], None] | None = None,
    ):
        self.settings = settings
        self.stage = stage
        self.group_id = group_id
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._errors = _ConnectErrors(stage.name)  # not a bound method: no reference cycle
        base = {**settings.kafka.client_config(), "error_cb": self._errors}
        self.consumer = Consumer(
            {
                **base,
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 5),
                "fetch.wait.max.ms": 50,
                "enable.partition.eof": True,
                "queued.max.messages.kbytes": 65536,
            }
        )
        self.producer = Producer(
            {
                **base,
                "transactional.id": f"{group_id}-{settings.instance_id}",
                "transaction.timeout.ms": settings.transaction_timeout_ms,
                "linger.ms": 5,
                "batch.num.messages": 10000,
                "compression.type": "lz4",
            }
        )
        self._restore_base = {k: v for k, v in base.items() if k != "error_cb"}
        self._sampled_at = 0.0
        self._short = {spec.name: short for short, spec in CATALOG.items()}

    def _init_transactions(self) -> None:
        try:
            self.producer.init_transactions(30)
        except KafkaException as exc:
            self.producer.poll(0)  # serve the queued error events: the cause, if any
            kafka = self.settings.kafka
            last = self._errors.last
            cause = f"; the last connection error: {last}" if last else ""
            raise ConnectError(
                f"{self.stage.name}: could not start Kafka transactions on "
                f"{kafka.bootstrap_servers} ({kafka.security_protocol}"
                f"{', ' + kafka.sasl_mechanism if kafka.sasl_mechanism else ''}): "
                f"{exc.args[0].str() if exc.args else exc}{cause}"
            ) from exc

    def stop(self) -> None:
        """Ask the loop to finish its current batch and exit."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    # ---------------------------------------------------------------- partitions

    def _partitions(self, partitions: list[TopicPartition]) -> str:
        """``"meter_readings 0-2,5; session_events 0-2,5"``: a rebalance in one log line."""
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(self._name(tp.topic), []).append(tp.partition)
        return (
            "; ".join(
                f"{name} {_ranges(sorted(numbers))}" for name, numbers in sorted(by_topic.items())
            )
            or "nothing"
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s: assigned %s", self.stage.name, self._partitions(partitions))
        if hasattr(self.stage, "assigned"):
            self.stage.assigned([(tp.topic, tp.partition) for tp in partitions])
        source = self.stage.changelog_source
        frames = [tp.partition for tp in partitions if tp.topic == source]
        if frames and self.stage.changelog_topic:
            started = time.perf_counter()
            restored = self._restore(frames)
            log.info(
                "%s: restored %d state entries for partitions %s in %.2f s",
                self.stage.name,
                restored, frames, time.perf_counter() - started,
            )  # fmt: skip
        self._assigned_at = time.monotonic()  # after the restore: its time is not idle time

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s: revoked %s", self.stage.name, self._partitions(partitions))
        for tp in partitions:
            labels = (self.stage.name, self._name(tp.topic), str(tp.partition))
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(*labels)
            if tp.topic == self.stage.changelog_source:
                self.stage.forget(tp.partition)

    def _restore(self, partitions: list[int]) -> int:
        restorer = Consumer(
            {
                **self._restore_base,
                "group.id": f"{self.group_id}-restore",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        total = 0
        changelog = self.stage.changelog_topic
        assert changelog is not None
        try:
            for p in partitions:
                tp = TopicPartition(changelog, p)
                low, high = watermarks(restorer, tp)
                records: list[tuple[bytes, bytes | None]] = []
                if high > low:
                    restorer.assign([TopicPartition(changelog, p, OFFSET_BEGINNING)])
                    idle_since = time.monotonic()
                    while True:
                        msg = restorer.poll(0.2)
                        if msg is not None and msg.partition() not in (p, -1, None):
                            continue  # left over from the partition restored before
                        if msg is not None and msg.error() is not None:
                            if msg.error().code() == KafkaError._PARTITION_EOF:
                                break  # the end, past any trailing transaction markers
                        elif msg is not None:
                            records.append((msg.key() or b"", msg.value()))
                            idle_since = time.monotonic()
                            if msg.offset() >= high - 1:
                                break
                        position = restorer.position([TopicPartition(changelog, p)])
                        if position and position[0].offset >= high:
                            break
                        if time.monotonic() - idle_since > _RESTORE_IDLE_S:
                            # Only a fallback: the partition-EOF event above ends a tail of
                            # transaction markers. Two seconds were too few on a loaded
                            # machine (a slow fetch cut a restore short: state was lost).
                            log.warning(
                                "%s: restore of %s[%d] idle for %.0f s at %d of %d; stopping",
                                self.stage.name, changelog, p, _RESTORE_IDLE_S,
                                len(records), high,
                            )  # fmt: skip
                            break
                total += self.stage.restore(p, records)
        finally:
            restorer.close()
        return total

    # ---------------------------------------------------------------- loop

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Consume until :meth:`stop` (or ``max_idle_s`` without input, for tools and tests)."""
        self._ensure_internal_topics()
        self._init_transactions()
        self.consumer.subscribe(
            list(self.stage.input_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        for name in self.stage.input_topics:  # series from the first scrape on (rate())
            STAGE_INPUT.labels(stage=self.stage.name, topic=self._name(name))
        last_input = time.monotonic()
        self._assigned_at: float | None = None
        self._ticked_at = time.monotonic()
        background = getattr(self.stage, "background", None)
        companion = background(self.settings) if background is not None else None
        try:
            while not self._stop.is_set():
                messages = self.consumer.consume(
                    self.settings.ingest_batch_max, self.settings.ingest_batch_timeout_s
                )
                batch = [m for m in messages if self._usable(m)]
                ends = [(m.topic(), m.partition()) for m in messages if _is_eof(m)]
                if batch:
                    split = getattr(self.stage, "split", None)
                    for part in [batch] if split is None else split(batch):
                        self._transact(part)
                    # Idle time counts from the end of the last batch: one that took longer
                    # than max_idle_s (a slow destination, many parts) is not idle time, and
                    # counting it could end a run with input still unread.
                    last_input = time.monotonic()
                if ends and hasattr(self.stage, "caught_up"):
                    # After the batch: partitions read to their end (e.g. the ingest clock
                    # stops waiting for them), and whatever that releases, in its own
                    # transaction.
                    self.stage.caught_up(ends)
                    self._transact([])
                    self._ticked_at = time.monotonic()
                elif (
                    not batch
                    and hasattr(self.stage, "caught_up")
                    and time.monotonic() - self._ticked_at >= _IDLE_TICK_S
                ):
                    # Quiet: let the stage send what it held back (the ingest rate-limits
                    # ticks that only say which partitions are at their end).
                    self._transact([])
                    self._ticked_at = time.monotonic()
                if time.monotonic() - self._sampled_at >= _SAMPLE_S:
                    self._sample()
                if not batch:
                    # Idle time counts from the later of the last batch's end and the
                    # assignment, so a slow group join is not mistaken for an idle stream.
                    since = max(last_input, self._assigned_at or time.monotonic())
                    if max_idle_s is not None and time.monotonic() - since > max_idle_s:
                        break
        finally:
            if companion is not None:
                companion.stop()
            self.consumer.close()
            self.producer.flush(10)

    def _name(self, topic_name: str) -> str:
        """The catalog short name of a topic (metric label), else its real name."""
        return self._short.get(topic_name, topic_name)

    def _sample(self) -> None:
        """Consumer lag per assigned partition and the stage's event times, every few
        seconds: position and cached high watermark are local reads (no broker round trip)."""
        self._sampled_at = time.monotonic()
        stage = self.stage.name
        try:
            assigned = self.consumer.assignment()
            positions = self.consumer.position(assigned) if assigned else []
            for tp in positions:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue  # no fetch response yet
                lag = high - tp.offset if tp.offset >= 0 else high
                labels = (stage, self._name(tp.topic), str(tp.partition))
                CONSUMER_LAG.labels(*labels).set(max(0, lag))
        except KafkaException as exc:  # metrics never stop the loop
            log.debug("consumer lag not sampled: %s", exc)
        event_times = getattr(self.stage, "event_times", None)
        if event_times is not None:
            for short, ms in event_times().items():
                if ms > 0:
                    EVENT_TIME.labels(stage=stage, topic=short).set(ms / 1000)

    def _ensure_internal_topics(self) -> None:
        """Create the stage's internal topics (changelog, repartition) when its group has
        its own (the default group's are in the catalog)."""
        specs = getattr(self.stage, "internal_topics", None)
        if specs is None:
            changelog = getattr(self.stage, "changelog", None)
            specs = () if changelog is None else (changelog,)
        catalog = {s.name for s in CATALOG.values()}
        own = {spec.name: spec for spec in specs if spec.name not in catalog}
        if not own:
            return
        from confluent_kafka.admin import AdminClient

        from streams.admin import create_topics

        create_topics(AdminClient(self._restore_base), specs=own)

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
        result = self.stage.process(batch, datetime.now(UTC))
        if not batch and not result.outputs:
            return
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
        consumed: dict[str, int] = {}
        for m in batch:
            t = m.topic()
            offsets[(t, m.partition())] = m.offset() + 1
            consumed[t] = consumed.get(t, 0) + 1
        if offsets:
            _within(
                _OFFSETS_DEADLINE_S,
                producer.send_offsets_to_transaction,
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                self.consumer.consumer_group_metadata(),
                30,
            )
        _within(_OFFSETS_DEADLINE_S, producer.commit_transaction, 30)  # can block the same way
        self.stage.record_metrics(result)
        self._count(consumed, result.outputs)
        BATCH_SECONDS.labels(stage=self.stage.name).observe(time.perf_counter() - started)
        if self.on_batch is not None:
            self.on_batch(result)

    def _count(self, consumed: dict[str, int], outputs: list[Output]) -> None:
        stage = self.stage.name
        for t, n in consumed.items():
            STAGE_INPUT.labels(stage=stage, topic=self._name(t)).inc(n)
        produced: dict[str, int] = {}
        for o in outputs:
            produced[o.topic] = produced.get(o.topic, 0) + 1
        for t, n in produced.items():
            STAGE_OUTPUT.labels(stage=stage, topic=self._name(t)).inc(n)


def _ranges(numbers: list[int]) -> str:
    """Sorted partition numbers as ranges.

    >>> _ranges([0, 1, 2, 5, 7, 8])
    '0-2,5,7-8'
    """
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _within(deadline_s: float, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` in a thread; KafkaException(_TIMED_OUT) if it has not returned after
    ``deadline_s``.

    For ``send_offsets_to_transaction`` (and ``commit_transaction``, which waits on the same
    coordinator), which librdkafka (2.16) can block in forever, past
    its own timeout, when the group coordinator went away (the broker restarted): see
    confluentinc/librdkafka#5456. The fault test saw a worker hang there for minutes. A
    worker that raises exits and is restarted (its open transaction is then aborted, the
    batch redone); one that hangs holds its partitions and never recovers.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call(*args)))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="voltguard-kafka-call", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if not outcome:
        raise KafkaException(
            KafkaError(
                KafkaError._TIMED_OUT, f"{call.__name__} still blocked after {deadline_s:.0f} s"
            )
        )
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _is_eof(msg: Message) -> bool:
    err = msg.error()
    return err is not None and err.code() == KafkaError._PARTITION_EOF


def watermarks(consumer: Consumer, tp: TopicPartition, attempts: int = 50) -> tuple[int, int]:
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


_OFFSETS_DEADLINE_S = 45.0
"""Longest wait for send_offsets_to_transaction (its own timeout is 30 s), see _within."""
_SAMPLE_S = 5.0
"""Seconds between samples of the consumer lag and the stage's event times."""
_IDLE_TICK_S = IDLE_HEARTBEAT_MS / 1000
"""Seconds without input after which the ingest may send a tick it held back (or renew its
claim that its partitions are read to their end, :mod:`topics.clock`)."""

_RESTORE_IDLE_S = 30.0
"""Seconds without a record or an end-of-partition event before a restore gives up."""

_TRANSIENT = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,  # the broker gone: its metadata with it (a restart)
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
)
