"""Reference data (stations, tariffs) read whole from their compacted topics, then followed.

:func:`read_reference` reads both topics from the beginning up to the end they had when it
started (their high watermarks) and returns a :class:`ReferenceData`; a
:class:`ReferenceFollower` thread then keeps applying what is produced after that point to
the same object. No consumer group is joined and no offset is ever committed: every process
reads the topics whole (they are small and compacted).

A record with a null value (a tombstone) deletes its key. A record that does not decode is
logged with the reason and skipped: the data was validated when it was loaded
(``voltguard stations load``), so such a record is somebody else's mistake, not a reason to
stop a worker.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    Message,
    TopicPartition,
)

from streams.settings import Settings
from streams.topic_reader import (
    assign_consumer,
    follow,
    handle_error,
    topic_partitions,
    watermarks_until,
)
from topics.catalog import CATALOG
from topics.codec import decode
from topics.exceptions import RecordDecodeError
from topics.records import Station, Tariff

__all__ = ["ReferenceData", "ReferenceFollower", "read_reference", "reference_topics"]

log = logging.getLogger(__name__)

_KINDS: dict[str, tuple[type[Station] | type[Tariff], str]] = {
    "stations": (Station, "station_id"),
    "tariffs": (Tariff, "tariff_id"),
}


def reference_topics() -> dict[str, tuple[str, type[Station] | type[Tariff], str]]:
    """Real topic name -> (attribute of :class:`ReferenceData`, record type, id field).

    >>> sorted(v[0] for v in reference_topics().values())
    ['stations', 'tariffs']
    """
    return {CATALOG[kind].name: (kind, *spec) for kind, spec in _KINDS.items()}


@dataclass
class ReferenceData:
    """Stations and tariffs by id, and how far the topics have been read.

    Updates replace or delete single dict entries (each an atomic operation), so readers in
    other threads may look entries up at any time; to iterate, take a copy first
    (``dict(data.stations)``, a single atomic operation as well).

    Attributes
    ----------
    stations
        Station by ``station_id``.
    tariffs
        Tariff by ``tariff_id``.
    positions
        Next offset to read per (topic, partition); where a follower starts.
    applied
        Number of records (and tombstones) applied so far.
    skipped
        Number of records skipped because they did not decode or had the wrong key.
    """

    stations: dict[str, Station] = field(default_factory=dict)
    tariffs: dict[str, Tariff] = field(default_factory=dict)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    applied: int = 0
    skipped: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def tariff_of(self, station_id: str) -> Tariff | None:
        """The tariff of a station, or None when the station or its tariff is unknown."""
        station = self.stations.get(station_id)
        return None if station is None else self.tariffs.get(station.tariff_id)

    def apply(self, msg: Message) -> None:
        """Apply one message of a reference topic (a record, or a tombstone that deletes).

        A message that does not decode, or whose key is not the record's id, is logged and
        skipped; its offset still counts as read.
        """
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        attribute, record_type, id_field = reference_topics()[topic]
        where = f"{topic}[{partition}]@{offset}"
        raw_key = msg.key()
        key = raw_key.decode("utf-8", "replace") if raw_key is not None else None
        value = msg.value()
        with self._lock:
            self.positions[(topic, partition)] = offset + 1
            table: dict[str, Any] = getattr(self, attribute)
            if value is None:
                if key is None:
                    log.warning("%s: tombstone without a key, skipped", where)
                    self.skipped += 1
                    return
                table.pop(key, None)
                self.applied += 1
                return
            try:
                record = decode(value, record_type)
            except RecordDecodeError as exc:
                log.warning("%s: skipped a record that does not decode: %s", where, exc)
                self.skipped += 1
                return
            record_id = getattr(record, id_field)
            if key is not None and key != record_id:
                log.warning(
                    "%s: skipped a record keyed %r whose %s is %r", where, key, id_field, record_id
                )
                self.skipped += 1
                return
            table[record_id] = record
            self.applied += 1


def read_reference(
    settings: Settings, *, timeout_s: float = 30.0, data: ReferenceData | None = None
) -> ReferenceData:
    """Read the stations and tariffs topics from the beginning to their current end.

    The end is each partition's high watermark when the call starts; records produced later
    may be included too if they arrive in the same fetch (the positions say how far it got).
    An empty topic costs no waiting.

    Parameters
    ----------
    settings
        Kafka connection.
    timeout_s
        Longest time to reach the end of every partition.
    data
        Object to fill (default: a new one).

    Returns
    -------
    ReferenceData
        Stations and tariffs by id; ``positions`` is where a :class:`ReferenceFollower`
        continues.

    Raises
    ------
    TimeoutError
        The end was not reached in time (broker unreachable, or an open transaction holds the
        committed end back).
    RuntimeError
        A reference topic does not exist, or a fatal Kafka error.
    """
    data = ReferenceData() if data is None else data
    deadline = time.monotonic() + timeout_s
    consumer = assign_consumer(settings, "reference")
    try:
        partitions = topic_partitions(consumer, reference_topics(), timeout_s)
        ends: dict[tuple[str, int], int] = {}
        for topic, partition in partitions:
            low, high = watermarks_until(consumer, TopicPartition(topic, partition), deadline)
            ends[(topic, partition)] = high
            data.positions[(topic, partition)] = low
        pending = {tp for tp, end in ends.items() if data.positions[tp] < end}
        if pending:
            consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in sorted(pending)])
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"reference topics not read to their end within {timeout_s:g} s: "
                    + ", ".join(
                        f"{t}[{p}] at {data.positions[(t, p)]} of {ends[(t, p)]}"
                        for t, p in sorted(pending)
                    )
                )
            for msg in consumer.consume(1000, min(remaining, 0.5)):
                tp = (msg.topic(), msg.partition())
                if msg.error() is not None:
                    eof = handle_error(msg, "reference consumer")
                    if eof is not None:
                        # control records (transaction markers) have offsets too: EOF moves past
                        data.positions[tp] = max(data.positions.get(tp, 0), eof)
                else:
                    data.apply(msg)
                if tp in pending and data.positions.get(tp, 0) >= ends[tp]:
                    pending.discard(tp)
    finally:
        consumer.close()
    log.info(
        "reference data: %d stations, %d tariffs (%d skipped)",
        len(data.stations),
        len(data.tariffs),
        data.skipped,
    )
    return data


class ReferenceFollower:
    """A daemon thread applying new records of the reference topics to a :class:`ReferenceData`.

    It starts at ``data.positions`` (where :func:`read_reference` stopped; the beginning for a
    partition not in it) and runs until :meth:`stop`.

    Parameters
    ----------
    settings
        Kafka connection.
    data
        The object to keep up to date (usually the one :func:`read_reference` returned).
    poll_timeout_s
        Longest wait per poll; also the longest :meth:`stop` waits for the loop to notice.

    Examples
    --------
    ::

        data = read_reference(settings)
        follower = ReferenceFollower(settings, data)
        follower.start()
        ...  # data.stations / data.tariffs stay current
        follower.stop()
    """

    def __init__(
        self, settings: Settings, data: ReferenceData, *, poll_timeout_s: float = 0.5
    ) -> None:
        self._settings = settings
        self.data = data
        self._poll_timeout_s = poll_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Assign the partitions at their positions and start the thread.

        Raises
        ------
        RuntimeError
            Already started, or a reference topic does not exist.
        """
        if self._thread is not None:
            raise RuntimeError("ReferenceFollower already started")
        consumer = assign_consumer(self._settings, "reference")
        try:
            partitions = topic_partitions(consumer, reference_topics(), timeout_s)
            consumer.assign(
                [
                    TopicPartition(t, p, self.data.positions.get((t, p), OFFSET_BEGINNING))
                    for t, p in partitions
                ]
            )
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        self._thread = threading.Thread(
            target=self._run, name="voltguard-reference-follower", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and close its consumer (no-op if not started)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("reference follower did not stop within %.1f s", timeout_s)

    def _run(self) -> None:
        assert self._consumer is not None
        follow(
            self._consumer,
            self.data.apply,
            self._stop,
            what="reference follower",
            batch=500,
            poll_timeout_s=self._poll_timeout_s,
        )
