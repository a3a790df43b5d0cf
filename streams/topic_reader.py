"""Read whole topics to the end they had when the read started, without a consumer group.

For small or compacted topics that every process reads in full (model updates) and for batch
jobs that read a topic's retained history once (retraining). The consumer is assigned
partitions directly, reads committed data only (``read_committed``) and never commits an
offset, so it leaves no trace on the cluster.

Examples
--------
::

    consumer = assign_consumer(settings, "retrain")
    positions = read_to_end(consumer, [topic("alert_labels")], on_message, timeout_s=60)
    consumer.close()
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from streams.settings import Settings

__all__ = [
    "assign_consumer",
    "follow",
    "handle_error",
    "read_to_end",
    "topic_partitions",
    "watermarks_until",
]

log = logging.getLogger(__name__)

_TRANSIENT = frozenset(
    {
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


def assign_consumer(settings: Settings, purpose: str) -> Consumer:
    """A consumer for ``assign()`` only: no group membership, no commits, committed data only."""
    return Consumer(
        {
            **settings.kafka.client_config(),
            # assign() never joins the group and nothing is committed: a throwaway name
            "group.id": f"voltguard-{purpose}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )


def topic_partitions(
    consumer: Consumer, topics: Iterable[str], timeout_s: float
) -> list[tuple[str, int]]:
    """Every (topic, partition) of ``topics`` once each partition has a leader.

    Raises
    ------
    RuntimeError
        A topic does not exist (the message says how to create it).
    TimeoutError
        Some partition has no leader after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    out = []
    for name in topics:
        while True:
            remaining = max(deadline - time.monotonic(), 1.0)
            metadata = consumer.list_topics(name, timeout=remaining).topics.get(name)
            error = metadata.error if metadata is not None else None
            if metadata is None or (
                error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            ):
                raise RuntimeError(
                    f"topic {name} does not exist; create it with `voltguard topics create`"
                )
            if (
                error is None
                and metadata.partitions
                and all(p.leader >= 0 for p in metadata.partitions.values())
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"topic {name} has no leader for all partitions after {timeout_s:g} s "
                    f"({error or 'no partitions'})"
                )
            time.sleep(0.1)
        out.extend((name, p) for p in sorted(metadata.partitions))
    return out


def watermarks_until(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """(low, high) watermark of a partition, retrying transient errors until ``deadline``."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                tp, timeout=max(deadline - time.monotonic(), 1.0), cached=False
            )
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code not in _TRANSIENT or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def handle_error(msg: Message, what: str) -> int | None:
    """The offset of a partition-EOF event; other errors are logged, fatal ones raise."""
    error = msg.error()
    if error.code() == KafkaError._PARTITION_EOF:
        return int(msg.offset())
    if error.fatal():
        raise RuntimeError(f"{what}: fatal Kafka error: {error}")
    log.warning("%s: %s", what, error)
    return None


def read_to_end(
    consumer: Consumer,
    topics: Iterable[str],
    on_message: Callable[[Message], None],
    *,
    timeout_s: float = 60.0,
) -> dict[tuple[str, int], int]:
    """Feed every committed message of ``topics`` to ``on_message``, up to their current end.

    The end is each partition's high watermark when the call starts. An empty topic costs no
    waiting. Returns the next offset per (topic, partition): where a follower continues.

    Raises
    ------
    TimeoutError
        The end was not reached in time (broker unreachable, or an open transaction holds
        the committed end back).
    """
    deadline = time.monotonic() + timeout_s
    partitions = topic_partitions(consumer, topics, timeout_s)
    positions: dict[tuple[str, int], int] = {}
    ends: dict[tuple[str, int], int] = {}
    for t, p in partitions:
        low, high = watermarks_until(consumer, TopicPartition(t, p), deadline)
        positions[(t, p)], ends[(t, p)] = low, high
    pending = {tp for tp, end in ends.items() if positions[tp] < end}
    if pending:
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in sorted(pending)])
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"topics not read to their end within {timeout_s:g} s: "
                + ", ".join(
                    f"{t}[{p}] at {positions[(t, p)]} of {ends[(t, p)]}" for t, p in sorted(pending)
                )
            )
        for msg in consumer.consume(1000, min(remaining, 0.5)):
            tp = (msg.topic(), msg.partition())
            if msg.error() is not None:
                eof = handle_error(msg, "topic reader")
                if eof is not None:  # transaction markers have offsets too: EOF moves past
                    positions[tp] = max(positions.get(tp, 0), eof)
            else:
                positions[tp] = msg.offset() + 1
                on_message(msg)
            if tp in pending and positions.get(tp, 0) >= ends[tp]:
                pending.discard(tp)
    return positions


def follow(
    consumer: Consumer,
    on_message: Callable[[Message], None],
    stop: threading.Event,
    *,
    what: str,
    batch: int = 500,
    poll_timeout_s: float = 0.5,
) -> None:
    """Feed every message of an assigned ``consumer`` to ``on_message`` until ``stop`` is set.

    The loop of a follower thread (model updates, reference data): a failed poll or a
    message ``on_message`` raises on is logged with its position and the loop goes on, so
    one bad record never stops the follower. Closes the consumer on the way out.
    """
    try:
        while not stop.is_set():
            try:
                messages = consumer.consume(batch, poll_timeout_s)
            except Exception:  # never let one bad poll kill the follower
                log.exception("%s: consume failed", what)
                stop.wait(poll_timeout_s)
                continue
            for msg in messages:
                try:
                    if msg.error() is not None:
                        handle_error(msg, what)
                    else:
                        on_message(msg)
                except Exception:
                    log.exception(
                        "%s: message at %s[%s]@%s skipped",
                        what,
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                    )
    finally:
        consumer.close()
