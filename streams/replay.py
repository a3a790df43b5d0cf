"""``voltguard replay``: the ingest and billing processors on files, without a broker.

The records go through the very code the workers run: :class:`~streams.ingest.IngestProcessor`
in batches, its outputs routed to partitions as the Kafka producer's default partitioner does
(CRC32 of the key modulo the partition count, :func:`partition_for`), then
:class:`~streams.billing.BillingProcessor`. What the worker would publish is collected:
bills and reconciliation results (the latest version of each), mismatches and dead letters.

Input: JSONL files of ``{"topic": short_name, "key": ..., "value": record}`` lines, as
``voltguard simulate --out`` writes them; reference data (``stations``/``tariffs``) is read
first, the other files are merged by time (``received_at`` of OCPP frames, ``event_time``
otherwise), each file being in time order.
"""

from __future__ import annotations

import heapq
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from billing.engine import Emit
from billing.reconciliation import ReconciliationConfig
from streams.billing import BillingProcessor
from streams.detection import DetectionProcessor, InMemoryDetection
from streams.ingest import IngestProcessor
from topics.catalog import CATALOG, topic
from topics.codec import decode
from topics.records import (
    DeadLetter,
    ReconciliationResult,
    SessionBill,
    SessionFeatures,
    Station,
    Tariff,
)

__all__ = ["Replay", "partition_for", "read_jsonl", "station_partition", "time_ordered"]

REFERENCE = ("stations", "tariffs")
Line = tuple[str, str | None, bytes]
"""``(topic_short, key, value_bytes)``."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner picks for a non-empty key.

    >>> partition_for(b"session-1", 6)
    4
    """
    return zlib.crc32(key) % partitions


def station_partition(station_id: str) -> int:
    """The detection partition of a station's key ``station:<id>`` (what the stage uses).

    ``voltguard replay`` gives it to :class:`~models.detect.Detector` so that it keeps one
    online scorer per partition, as the workers do.

    >>> station_partition("CP1") == partition_for(b"station:CP1", 6)
    True
    """
    return partition_for(b"station:" + station_id.encode(), CATALOG["detection_keyed"].partitions)


@dataclass
class Replay:
    """Feeds records through ingest and billing and keeps what they published.

    ``results`` holds the latest version of every reconciliation result by ``result_id``,
    ``bills`` the latest bill by session id; ``mismatch_publications`` counts every
    publication on the mismatch topic.
    """

    hash_secret: bytes
    config: ReconciliationConfig = field(default_factory=ReconciliationConfig)
    batch_size: int = 1000
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    tariffs: dict[str, Tariff] = field(default_factory=dict)
    stations: dict[str, Station] = field(default_factory=dict)
    bills: dict[str, SessionBill] = field(default_factory=dict)
    results: dict[str, ReconciliationResult] = field(default_factory=dict)
    features: dict[str, SessionFeatures] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    mismatch_publications: int = 0
    detection: InMemoryDetection | None = None
    """Runs the detection stage (fraud rules and scorers) over what billing and ingest
    publish, when given (:meth:`with_detection`)."""

    @classmethod
    def with_detection(cls, *, model: Callable[[], Any] | None = None, **kw: object) -> Replay:
        """A replay that also runs the detection stage as the worker does (``model``: the
        offline model in service, as :class:`~streams.detection.DetectionProcessor` takes it)."""
        processor = DetectionProcessor(partition_for=partition_for, model=model)
        return cls(detection=InMemoryDetection(processor), **kw)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.ingest = IngestProcessor(hash_secret=self.hash_secret)
        self.billing = BillingProcessor(
            config=self.config, tariffs=self.tariffs, stations=self.stations
        )
        self._offsets: Counter[tuple[str, int]] = Counter()
        self._ingest_inputs = {
            short: topic(short)
            for short in ("ocpp_frames", "csms_session_events", "csms_meter_readings")
        } | {"psp_payment_events": topic("psp_payment_events")}
        self._billing_inputs = {
            topic(s) for s in ("session_events", "meter_readings", "payment_events")
        }
        self._dead = topic("dead_letters")
        self._payments = topic("payment_events")
        self._features_topic = topic("session_features")

    def run(self, lines: Iterable[Line]) -> Replay:
        """Replay every line (reference data first is the caller's order to keep)."""
        batch: list[tuple[str, int, int, bytes | None, bytes | None]] = []
        for short, key, value in lines:
            if short in REFERENCE:
                self._reference(short, value)
                continue
            real = self._ingest_inputs.get(short)
            if real is None:
                self.counts[f"skipped:{short}"] += 1
                continue
            kb = key.encode() if key is not None else None
            partition = partition_for(kb, CATALOG[short].partitions) if kb else 0
            batch.append((real, partition, self._next_offset(real, partition), kb, value))
            if len(batch) >= self.batch_size:
                self._ingest_batch(batch)
                batch = []
        if batch:
            self._ingest_batch(batch)
        # The end of the input: every partition was read to its end, the clock catches up.
        self.ingest.mark_caught_up(list(self.ingest.seen_ms))
        self._ingest_batch([])
        return self

    def _reference(self, short: str, value: bytes) -> None:
        if short == "stations":
            station = decode(value, Station)
            self.stations[station.station_id] = station
        else:
            tariff = decode(value, Tariff)
            self.tariffs[tariff.tariff_id] = tariff
        self.counts[short] += 1

    def _next_offset(self, real: str, partition: int) -> int:
        offset = self._offsets[(real, partition)]
        self._offsets[(real, partition)] += 1
        return offset

    def _ingest_batch(self, batch: list[tuple[str, int, int, bytes | None, bytes | None]]) -> None:
        result = self.ingest.process(batch, now=self.now)
        self.counts["input"] += len(batch)
        downstream: list[tuple[str, int, int, bytes | None, bytes | None]] = []
        detect: list[tuple[str, int, bytes | None, bytes | None]] = []
        for o in result.outputs:
            if o.topic == self._dead:
                self.dead_letters.append(decode(o.value or b"", DeadLetter))
            elif o.topic in self._billing_inputs:
                partition = o.partition
                if partition is None:
                    partition = partition_for(o.key, 6) if o.key else 0
                offset = self._next_offset(o.topic, partition)
                downstream.append((o.topic, partition, offset, o.key, o.value))
                if o.topic == self._payments:
                    detect.append((o.topic, partition, o.key, o.value))
        billed = self.billing.process(downstream, now=self.now)
        for o in billed.outputs:
            if o.topic == self._dead:
                self.dead_letters.append(decode(o.value or b"", DeadLetter))
            elif o.topic == self._features_topic:
                part = o.partition if o.partition is not None else partition_for(o.key, 6)
                detect.append((o.topic, part, o.key, o.value))
        for e in billed.emitted:
            self._collect(e)
        for f in billed.features:
            self.features[f.session_id] = f
        if self.detection is not None and detect:
            self.detection.feed(detect, now=self.now)
            for o in self.detection.dead_letters:
                self.dead_letters.append(decode(o.value or b"", DeadLetter))
            self.detection.dead_letters.clear()

    def _collect(self, e: Emit) -> None:
        record = e.record
        if isinstance(record, SessionBill):
            self.bills[record.session_id] = record
            self.counts["bill_publications"] += 1
        elif e.topic == "reconciliation" and isinstance(record, ReconciliationResult):
            self.results[record.result_id] = record
            self.counts["result_publications"] += 1
        elif e.topic == "reconciliation_mismatches":
            self.mismatch_publications += 1


def read_jsonl(path: Path) -> Iterator[Line]:
    """``(topic_short, key, value_bytes)`` of every line of a ``voltguard simulate`` file.

    A line with ``value_raw`` (a string) sends that string as is, as ``voltguard send`` does.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
                short = line["topic"]
                value = line["value_raw"].encode() if "value_raw" in line else None
                if value is None:
                    value = orjson.dumps(line["value"])
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: not a replay line ({exc})") from None
            key = line.get("key")
            yield short, None if key is None else str(key), value


def _time_key(line: Line) -> str:
    short, _, value = line
    try:
        doc = orjson.loads(value)
        stamp = doc.get("received_at") if short == "ocpp_frames" else doc.get("event_time")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return _normalise(stamp) if isinstance(stamp, str) else ""


def _normalise(stamp: str) -> str:
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    return moment.astimezone(UTC).isoformat()


def time_ordered(paths: Iterable[Path]) -> Iterator[Line]:
    """Reference lines of every file first, then the other lines merged by time."""
    files = list(paths)
    streams: list[Iterator[Line]] = []
    for path in files:
        lines = read_jsonl(path)
        first = next(lines, None)
        if first is None:
            continue
        if first[0] in REFERENCE:
            yield first
            yield from lines
        else:
            streams.append(_chain(first, lines))
    yield from heapq.merge(*streams, key=_time_key)


def _chain(first: Line, rest: Iterator[Line]) -> Iterator[Line]:
    yield first
    yield from rest
