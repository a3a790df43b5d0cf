"""The project's real local Kafka broker: round trips, transactions, lifecycle."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.localkafka import KafkaStartError, LocalKafka, find_free_port

pytestmark = pytest.mark.kafka


def _create_topic(admin: AdminClient, partitions: int = 1) -> str:
    """Create a uniquely named topic and wait until it exists."""
    name = f"test.localkafka.{uuid.uuid4().hex[:12]}"
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions)], request_timeout=15)
    futures[name].result(timeout=15)
    return name


@pytest.fixture
def consumer_factory(kafka_bootstrap: str) -> Iterator[Callable[..., Consumer]]:
    """Build consumers on the session broker and close them after the test."""
    made: list[Consumer] = []

    def make(**overrides: object) -> Consumer:
        config: dict[str, object] = {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            **overrides,
        }
        consumer = Consumer(config)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def _drain(
    consumer: Consumer, topic: str, partitions: int, timeout_s: float = 20.0
) -> list[Message]:
    """Consume ``topic`` until every partition's position reaches its high watermark."""
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None:
            if msg.error():
                raise KafkaException(msg.error())
            messages.append(msg)
            continue
        assignment = consumer.assignment()
        if len(assignment) < partitions:
            continue
        # Cached high watermarks come with every fetch response: no extra round trip.
        caught_up = True
        for tp in consumer.position(assignment):
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0 or (tp.offset < high and not (tp.offset < 0 and high == 0)):
                caught_up = False
        if caught_up:
            return messages
    raise AssertionError(f"did not reach the end of {topic} in {timeout_s}s: {len(messages)}")


def test_produce_consume_round_trip(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    consumer_factory: Callable[..., Consumer],
) -> None:
    topic = _create_topic(kafka_admin, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    sent = {f"session-{i}".encode(): f'{{"n": {i}}}'.encode() for i in range(30)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(15) == 0

    received = _drain(consumer_factory(), topic, partitions=3)
    assert {m.key(): m.value() for m in received} == sent
    # Same key, same partition: the co-partitioning the Faust tables rely on.
    by_key = {m.key(): m.partition() for m in received}
    assert len(set(by_key.values())) > 1


def test_transactions_are_atomic_and_commit_offsets(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    consumer_factory: Callable[..., Consumer],
) -> None:
    source = _create_topic(kafka_admin)
    sink = _create_topic(kafka_admin)
    plain = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(4):
        plain.produce(source, key=b"k", value=str(i).encode())
    assert plain.flush(15) == 0

    # Consume-transform-produce with the input offsets committed in the transaction.
    group = f"txn-{uuid.uuid4().hex[:8]}"
    consumer = consumer_factory(**{"group.id": group, "isolation.level": "read_committed"})
    inputs = _drain(consumer, source, partitions=1)
    assert len(inputs) == 4
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"voltguard-test-{uuid.uuid4().hex[:8]}",
            "transaction.timeout.ms": 10000,
        }
    )
    producer.init_transactions(15)
    producer.begin_transaction()
    for msg in inputs:
        producer.produce(sink, key=msg.key(), value=b"rated-" + msg.value())
    producer.send_offsets_to_transaction(
        consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 15
    )
    producer.commit_transaction(15)

    producer.begin_transaction()
    producer.produce(sink, key=b"k", value=b"aborted")
    producer.flush(15)
    producer.abort_transaction(15)

    committed = _drain(consumer_factory(**{"isolation.level": "read_committed"}), sink, 1)
    assert [m.value() for m in committed] == [b"rated-0", b"rated-1", b"rated-2", b"rated-3"]
    uncommitted = _drain(consumer_factory(**{"isolation.level": "read_uncommitted"}), sink, 1)
    assert b"aborted" in [m.value() for m in uncommitted]

    offsets = consumer.committed([TopicPartition(source, 0)], timeout=15)
    assert offsets[0].offset == 4


def test_status_reports_running(local_kafka: LocalKafka | None, kafka_bootstrap: str) -> None:
    if local_kafka is None:
        pytest.skip("VOLTGUARD_TEST_BOOTSTRAP points at an external broker")
    status = local_kafka.status()
    assert status["running"] is True
    assert isinstance(status["pid"], int)
    assert status["bootstrap"] == kafka_bootstrap == local_kafka.bootstrap
    assert status["data_dir"] == str(local_kafka.data_dir)
    assert status["kafka_version"] == "4.0.0"


def test_second_instance_reuses_running_broker(local_kafka: LocalKafka | None) -> None:
    if local_kafka is None:
        pytest.skip("VOLTGUARD_TEST_BOOTSTRAP points at an external broker")
    again = LocalKafka(local_kafka.data_dir)
    assert again.bootstrap == local_kafka.bootstrap  # adopted from the state file
    started = time.monotonic()
    assert again.start(timeout_s=15) == local_kafka.bootstrap
    assert time.monotonic() - started < 5
    assert again.pid == local_kafka.status()["pid"]
    assert again.is_running()

    with pytest.raises(KafkaStartError, match="already runs"):
        LocalKafka(local_kafka.data_dir, port=find_free_port()).start(timeout_s=5)
    assert local_kafka.is_running()


def test_start_failure_includes_log_lines(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        kafka = LocalKafka(tmp_path / "kafka", port=port, heap="256m", exit_with_parent=True)
        with pytest.raises(KafkaStartError) as caught:
            kafka.start(timeout_s=60)
    message = str(caught.value)
    assert "server.log" in message
    assert f"127.0.0.1:{port}" in message
    assert "Address already in use" in message or "bind" in message.lower()
    assert kafka.status()["running"] is False
