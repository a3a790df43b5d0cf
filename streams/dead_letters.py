"""Dead letters: rejected input kept whole, with where it came from and why.

Every stage that rejects a message builds its dead letter here, so the record and its key
(the source topic) are the same whichever stage refused it.
"""

from __future__ import annotations

from datetime import datetime

from streams.loop import Output
from topics.catalog import topic
from topics.codec import encode
from topics.identity import stable_id
from topics.records import DeadLetter

__all__ = ["dead_letter_output", "dead_letter_summary"]

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


def dead_letter_summary(letter: DeadLetter) -> str:
    """One line for a terminal: where it came from and why."""
    raw = (letter.original_value or b"")[:80].decode("utf-8", "replace")
    return (
        f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset} "
        f"{letter.error_type}: {letter.reason} | {raw}"
    )
