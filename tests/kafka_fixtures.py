"""Pytest plugin: one real local Kafka broker per test session.

Enable with ``pytest_plugins = ["tests.kafka_fixtures"]`` (or ``-p tests.kafka_fixtures``).

``VOLTGUARD_TEST_BOOTSTRAP=host:port`` points the tests at an existing broker instead
(tests create their topics explicitly, as the local broker does not auto-create them).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient

from streams.localkafka import LocalKafka

log = logging.getLogger(__name__)

BOOTSTRAP_ENV = "VOLTGUARD_TEST_BOOTSTRAP"


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """Start a :class:`LocalKafka` for the session (``None`` with VOLTGUARD_TEST_BOOTSTRAP).

    The broker runs on free loopback ports from a temporary directory with a 512m heap,
    dies with the test process if that is killed, and is stopped and removed afterwards.
    """
    if os.environ.get(BOOTSTRAP_ENV):
        yield None
        return
    data_dir = tmp_path_factory.mktemp("kafka", numbered=True)
    kafka = LocalKafka(data_dir, heap="512m", exit_with_parent=True)
    started = time.monotonic()
    kafka.start(timeout_s=90)
    log.info("test Kafka %s up in %.1fs", kafka.bootstrap, time.monotonic() - started)
    try:
        yield kafka
    finally:
        kafka.stop(timeout_s=20)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka | None) -> str:
    """Bootstrap servers of the session's broker (``$VOLTGUARD_TEST_BOOTSTRAP`` if set)."""
    if local_kafka is None:
        return os.environ[BOOTSTRAP_ENV]
    return local_kafka.bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    """A confluent_kafka AdminClient connected to the session's broker."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of the test module's own (empty topics, nobody else's data), as bootstrap.

    For tests that read whole topics and compare what they find with an expected set. With
    VOLTGUARD_TEST_BOOTSTRAP set there is no local broker to start: the test is skipped.
    """
    if os.environ.get(BOOTSTRAP_ENV):
        pytest.skip("needs a private local broker (VOLTGUARD_TEST_BOOTSTRAP is set)")
    data_dir = tmp_path_factory.mktemp("kafka-private", numbered=True)
    kafka = LocalKafka(data_dir, heap="512m", exit_with_parent=True)
    kafka.start(timeout_s=90)
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop(timeout_s=20)
        shutil.rmtree(data_dir, ignore_errors=True)
