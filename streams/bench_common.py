"""What every broker benchmark shares: a fresh local broker, percentiles, the JSON file.

Pure helpers (:func:`percentile`, :func:`summarize_ms`) are unit-tested; :func:`broker`
starts a throw-away :class:`~streams.localkafka.LocalKafka` (or adopts ``--bootstrap-servers``)
with the catalog's topics created.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

__all__ = [
    "Broker",
    "bare_consume_parse",
    "broker",
    "load_average",
    "open_session_events",
    "percentile",
    "summarize_ms",
    "write_json",
]


@dataclass(slots=True)
class Broker:
    """The broker a benchmark runs on; ``pid`` when it started its own (for its CPU)."""

    bootstrap: str
    pid: int | None = None


@contextmanager
def broker(bootstrap_servers: str | None = None, *, prefix: str = "voltguard-bench-",
           heap: str = "1g") -> Iterator[Broker]:  # fmt: skip
    """A broker with the catalog's topics: ``bootstrap_servers`` if given, else a fresh
    local one in a temporary directory, stopped and deleted on exit."""
    from confluent_kafka.admin import AdminClient

    from streams.admin import create_topics
    from streams.localkafka import LocalKafka

    tmp = None
    kafka = None
    try:
        if bootstrap_servers is None:
            tmp = Path(tempfile.mkdtemp(prefix=prefix))
            kafka = LocalKafka(tmp, heap=heap, exit_with_parent=True)
            bootstrap_servers = kafka.start(timeout_s=120)
        create_topics(AdminClient({"bootstrap.servers": bootstrap_servers}))
        yield Broker(bootstrap_servers, kafka.pid if kafka is not None else None)
    finally:
        if kafka is not None:
            kafka.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; NaN when empty.

    >>> percentile([1, 2, 3, 4], 0.5), percentile([10], 0.99), percentile([0, 100], 0.95)
    (2.5, 10.0, 95.0)
    """
    if not values:
        return math.nan
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be within 0..1, got {q}")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def summarize_ms(values_s: Sequence[float]) -> dict[str, Any]:
    """Count, p50/p95/p99 and max of durations given in seconds, in milliseconds.

    >>> summarize_ms([0.010, 0.020, 0.030])
    {'n': 3, 'p50_ms': 20.0, 'p95_ms': 29.0, 'p99_ms': 29.8, 'max_ms': 30.0}
    >>> summarize_ms([])
    {'n': 0, 'p50_ms': None, 'p95_ms': None, 'p99_ms': None, 'max_ms': None}
    """
    if not values_s:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
    }


def bare_consume_parse(bootstrap: str, topics: Sequence[str], expect: int,
                       *, idle_s: float = 5.0) -> tuple[float, int]:  # fmt: skip
    """Messages/s (and the count) of a bare ``consume(1000)`` + ``orjson.loads`` loop over
    ``topics`` (real names, committed records only), from its first batch to its last."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe(list(topics))
    seen = 0
    first = last = None
    loads = orjson.loads
    idle_since = time.monotonic()
    while seen < expect and time.monotonic() - idle_since < idle_s:
        batch = consumer.consume(1000, 1.0)
        if batch:
            idle_since = time.monotonic()
            if first is None:
                first = time.perf_counter()
        for msg in batch:
            if msg.error() is None and msg.value():
                loads(msg.value())
                seen += 1
        if batch:
            last = time.perf_counter()
    elapsed = (last or 0.0) - (first or 0.0)
    consumer.close()
    return (seen / elapsed if elapsed else 0.0), seen


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews figures)."""
    return [round(x, 2) for x in os.getloadavg()]


def write_json(figures: dict[str, Any], path: Path | None) -> None:
    """Write ``figures`` to ``path`` (if given) and say so."""
    if path is None:
        return
    path.write_text(json.dumps(figures, indent=2) + "\n")
    click.echo(f"figures written to {path}")


def synthetic_session_id(n: int) -> str:
    """Session ``n``'s id in :func:`open_session_events`: ids of one length, distinct in their
    first eight characters (so a changelog row can be cloned by replacing them)."""
    return f"{n:08x}-5f0c-4e1a-9b7d-{n:012x}"


def open_session_events(sessions: int, samples: int) -> Iterator[Any]:
    """Synthetic open sessions for the state benchmarks: for each, a started event and then
    ``samples - 1`` readings a minute apart (11 kW, 180 Wh each), 5,000 stations.

    >>> [type(e).__name__ for e in open_session_events(1, 3)]
    ['SessionEvent', 'MeterReading', 'MeterReading']
    """
    from datetime import UTC, datetime, timedelta

    from topics.identity import hash_identifier
    from topics.records import MeterReading, SessionEvent

    t0 = datetime(2024, 5, 6, 8, tzinfo=UTC)
    for n in range(sessions):
        sid = synthetic_session_id(n)
        station = f"VG-{n % 5000:05d}"
        yield SessionEvent(
            event_id=f"s{n}", event_time=t0, source="ocpp1.6", session_id=sid,
            station_id=station, evse_id=1, connector_id=1, transaction_id=str(n),
            kind="started", meter_start_wh=1_000_000 + n, token_type="ISO14443",
            token_hash=hash_identifier(f"tag{n}", b"k"), auth_status="Accepted",
        )  # fmt: skip
        for k in range(1, samples):
            yield MeterReading(
                event_id=f"r{n}-{k}", event_time=t0 + timedelta(minutes=k),
                source="ocpp1.6", session_id=sid, station_id=station, evse_id=1,
                connector_id=1, transaction_id=str(n),
                energy_wh=1_000_000 + n + 180 * k, power_w=11_000.0 + k,
                current_a=16.0, voltage_v=230.0,
            )  # fmt: skip
