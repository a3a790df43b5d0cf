"""A transaction left open by a producer that died (SIGKILL, with a long transaction timeout
so that the coordinator will not end it soon) holds back read_committed consumers of its
partition; ``abort_stale_transactions`` finds and aborts it, and the consumers go on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.admin import abort_stale_transactions

pytestmark = pytest.mark.kafka


def committed_values(bootstrap: str, name: str, wait_s: float) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})  # fmt: skip
    consumer.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
    found: list[bytes] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for m in consumer.consume(100, 0.2):
            if m.error() is None:
                found.append(m.value())
    consumer.close()
    return found


def test_a_transaction_left_open_is_found_and_aborted(kafka_bootstrap: str) -> None:
    name = f"voltguard-test-stale-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
    # A producer that opens a transaction, writes, and dies without ending it.
    script = textwrap.dedent(f"""
        import os, signal
        from confluent_kafka import Producer
        p = Producer({{"bootstrap.servers": "{kafka_bootstrap}", "transactional.id": "stale-{name}",
                       "transaction.timeout.ms": 900000}})
        p.init_transactions(30)
        p.begin_transaction()
        p.produce("{name}", b"never committed")
        p.flush(30)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    died = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert died.returncode == -9
    after = Producer({"bootstrap.servers": kafka_bootstrap})
    after.produce(name, b"committed after it")
    assert after.flush(30) == 0
    assert committed_values(kafka_bootstrap, name, 2.0) == []  # held back by the open one

    assert abort_stale_transactions(kafka_bootstrap, [name], min_age_s=600) == []  # too young
    found = abort_stale_transactions(kafka_bootstrap, [name], min_age_s=0.5, dry_run=True)
    assert [ln.split()[:3] for ln in found] == [["open", name, "0"]]
    aborted = abort_stale_transactions(kafka_bootstrap, [name], min_age_s=0.5)
    assert [ln.split()[:3] for ln in aborted] == [["aborted", name, "0"]]
    assert committed_values(kafka_bootstrap, name, 3.0) == [b"committed after it"]
    assert abort_stale_transactions(kafka_bootstrap, [name], min_age_s=0.5) == []
