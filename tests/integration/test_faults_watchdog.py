"""The loop's deadline around a librdkafka call that can block past its own timeout
(``send_offsets_to_transaction`` after the broker restarted, confluentinc/librdkafka#5456;
the fault test saw a worker hang there). Pure: no broker."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.loop import _within


def test_a_call_that_returns_in_time_gives_its_value() -> None:
    assert _within(5.0, lambda a, b: a + b, 2, 3) == 5


def test_a_call_that_raises_raises_in_the_caller() -> None:
    def fails() -> None:
        raise KafkaException(KafkaError(KafkaError._FENCED, "fenced"))

    with pytest.raises(KafkaException, match="fenced"):
        _within(5.0, fails)


def test_a_call_still_blocked_at_the_deadline_is_a_timeout() -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(KafkaException, match="still blocked after 0 s") as info:
        _within(0.3, release.wait, 30)
    assert time.monotonic() - started < 5
    assert info.value.args[0].code() == KafkaError._TIMED_OUT
    release.set()
