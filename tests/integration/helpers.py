"""Small helpers for tests against the real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from topics.catalog import CLOCK_KEY, topic


def produce_all(
    bootstrap: str, short: str, values: list[tuple[bytes | None, bytes | None]]
) -> None:
    """Produce (key, value) pairs to a catalog topic and wait until all are acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    errors: list[object] = []
    for key, value in values:
        while True:
            try:
                producer.produce(
                    topic(short), value, key, on_delivery=lambda e, m: e and errors.append(e)
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors


def read_all(
    bootstrap: str,
    short: str,
    *,
    keep: Callable[[bytes], bool] = lambda v: True,
    expect: int | None = None,
    timeout_s: float = 30.0,
    settle_s: float = 1.5,
) -> list[bytes]:
    """Every committed value of a topic that ``keep`` accepts.

    Reads from the beginning until ``expect`` values were kept (then ``settle_s`` more, to
    catch duplicates) or, without ``expect``, until ``settle_s`` passes with no new message.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    name = topic(short)
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.key() == CLOCK_KEY:
                    continue  # the ingest's clock ticks, not records of the topic's contract
                if msg.error() is None and msg.value() is not None and keep(msg.value()):
                    out.append(msg.value())
                    last_new = time.monotonic()
            enough = expect is None or len(out) >= expect
            if enough and time.monotonic() - last_new > settle_s:
                break
    finally:
        consumer.close()
    return out
