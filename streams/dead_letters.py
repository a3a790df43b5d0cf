"""Dead letters: rejected input kept whole, with where it came from and why.

Every stage that rejects a message builds its dead letter here, so the record and its key
(the source topic) are the same whichever stage refused it.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Protocol

from streams.loop import Output
from topics.catalog import topic
from topics.codec import encode
from topics.identity import stable_id
from topics.records import DeadLetter

__all__ = ["dead_letter_output", "dead_letter_summary", "refuse", "reject"]

log = logging.getLogger(__name__)

Message = tuple[str, int, int, bytes | None, bytes | None]
"""``(topic, partition, offset, key, value)`` as the stage processors take them."""


class _Batch(Protocol):
    outputs: list[Output]
    dead_letter_reasons: Counter[str]


_TOPIC = topic("dead_letters")


def dead_letter_output(
    *,
    stage: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: Exception,
    now: datetime,
) -> Output:
    """The dead-letter record for one rejected message (id: a hash of where it came from)."""
    letter = DeadLetter(
        event_id=stable_id("dead-letter", stage, source_topic, partition, offset),
        event_time=now,
        source=stage,
        original_topic=source_topic,
        original_partition=partition,
        original_offset=offset,
        original_key=key,
        original_value=value,
        stage=stage,
        error_type=type(error).__name__,
        reason=str(error) or type(error).__name__,
    )
    return Output(_TOPIC, source_topic.encode(), encode(letter))


def reject(batch: _Batch, message: Message, error: Exception, *, stage: str, now: datetime) -> None:
    """Send one input message to the dead-letter topic within ``batch`` (so in the batch's
    transaction) and count its error type for the stage's metrics."""
    source_topic, partition, offset, key, value = message
    batch.outputs.append(
        dead_letter_output(
            stage=stage, source_topic=source_topic, partition=partition, offset=offset,
            key=key, value=value, error=error, now=now,
        )
    )  # fmt: skip
    batch.dead_letter_reasons[type(error).__name__] += 1


def refuse(
    batch: _Batch,
    message: Message,
    error: Exception,
    *,
    stage: str,
    now: datetime,
    expected: tuple[type[Exception], ...],
) -> str:
    """:func:`reject` for the ``except Exception`` of a stage's per-message loop (bad input
    must never crash a worker): an error of an ``expected`` type is the input's fault, any
    other is logged with its traceback first. Returns the outcome, ``dead_letter``."""
    if not isinstance(error, expected):
        log.exception("unexpected error on %s[%d]@%d", *message[:3], exc_info=error)
    reject(batch, message, error, stage=stage, now=now)
    return "dead_letter"


def dead_letter_summary(letter: DeadLetter) -> str:
    """One line for a terminal: where it came from and why."""
    raw = (letter.original_value or b"")[:80].decode("utf-8", "replace")
    return (
        f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset} "
        f"{letter.error_type}: {letter.reason} | {raw}"
    )
