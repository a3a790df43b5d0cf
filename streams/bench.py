"""Benchmarks on the real local broker (``make bench-ingest``): figures, not pass/fail tests.

``ingest``: OCPP 1.6 MeterValues frames -> canonical meter readings through one ingest
worker (transactions on, exactly as ``voltguard worker`` runs), and in the same run a bare
confluent-kafka ``consume(1000)`` + ``orjson.loads`` loop over the same topic as the ceiling.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click
import orjson
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.ingest import BatchResult, IngestLoop
from streams.localkafka import LocalKafka
from streams.settings import Settings
from topics import samples
from topics.catalog import topic

log = logging.getLogger(__name__)


def _produce_frames(bootstrap: str, frames: int, stations: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500000,
        }
    )
    name = topic("ocpp_frames")
    started = time.perf_counter()
    for i in range(frames):
        station = f"BENCH-{i % stations}"
        value = samples.meter_values(
            station_id=station, transaction_id=1 + i % (stations * 4), seq=i, energy_wh=i * 7
        )
        while True:
            try:
                producer.produce(name, value, station.encode())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush(60)
    return time.perf_counter() - started


def _bare_ceiling(bootstrap: str, frames: int) -> tuple[float, int]:
    """Frames/s of a bare consume(1000) + orjson.loads loop over the frames topic."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic("ocpp_frames")])
    seen = 0
    first = None
    loads = orjson.loads
    while seen < frames:
        batch = consumer.consume(1000, 1.0)
        if batch and first is None:
            first = time.perf_counter()
        for msg in batch:
            if msg.error() is None:
                loads(msg.value())
                seen += 1
    elapsed = time.perf_counter() - (first or time.perf_counter())
    consumer.close()
    return seen / elapsed, seen


def _worker(bootstrap: str, frames: int) -> tuple[float, int, float]:
    """Frames/s through the ingest loop, from its first batch to the last frame committed."""
    settings = Settings.from_env(
        {},
        bootstrap_servers=bootstrap,
        hash_secret="bench-secret",
        ingest_group_id=f"bench-ingest-{uuid.uuid4().hex[:8]}",
        instance_id="bench",
    )
    state: dict[str, Any] = {"seen": 0, "readings": 0, "first": None}

    def on_batch(result: BatchResult) -> None:
        if state["first"] is None:
            state["first"] = time.perf_counter()
        state["seen"] += sum(result.counts.values())
        state["readings"] += sum(1 for o in result.outputs if o.topic == topic("meter_readings"))
        if state["seen"] >= frames:
            loop.stop()

    loop = IngestLoop(settings, on_batch=on_batch)
    cpu0 = time.process_time()
    loop.run()
    elapsed = time.perf_counter() - state["first"]
    cpu = time.process_time() - cpu0
    return state["seen"] / elapsed, state["readings"], cpu / elapsed


@click.group()
def bench() -> None:
    """voltguard benchmarks (print figures and ratios; never pass/fail)."""


@bench.command("ingest")
@click.option("--frames", default=200_000, show_default=True, help="MeterValues frames to push.")
@click.option("--stations", default=500, show_default=True, help="Distinct stations (keys).")
@click.option("--bootstrap-servers", envvar="VOLTGUARD_BENCH_BOOTSTRAP", default=None,
              help="Use this broker instead of starting a fresh local one.")  # fmt: skip
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")  # fmt: skip
def bench_ingest(
    frames: int, stations: int, bootstrap_servers: str | None, json_out: Path | None
) -> None:
    """OCPP MeterValues -> canonical readings through one worker, beside the bare ceiling."""
    logging.basicConfig(level=logging.WARNING)
    tmp = None
    kafka = None
    if bootstrap_servers is None:
        tmp = Path(tempfile.mkdtemp(prefix="voltguard-bench-"))
        kafka = LocalKafka(tmp, heap="1g", exit_with_parent=True)
        bootstrap_servers = kafka.start(timeout_s=120)
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        create_topics(admin)
        click.echo(f"producing {frames:,} MeterValues frames from {stations} stations ...")
        produce_s = _produce_frames(bootstrap_servers, frames, stations)
        bare_fps, _ = _bare_ceiling(bootstrap_servers, frames)
        worker_fps, readings, cpu_share = _worker(bootstrap_servers, frames)
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures = {
            "frames": frames,
            "produce_frames_per_s": round(frames / produce_s),
            "bare_consume_parse_frames_per_s": round(bare_fps),
            "worker_frames_per_s": round(worker_fps),
            "worker_readings": readings,
            "worker_vs_bare_ratio": round(worker_fps / bare_fps, 3),
            "worker_cpu_share_of_one_core": round(cpu_share, 2),
            "bench_process_peak_rss_mib": round(rss_mib),
            "floor_frames_per_s": 10_000,
            "cores": os.cpu_count(),
        }
        click.echo(
            f"bare confluent-kafka consume+orjson : {figures['bare_consume_parse_frames_per_s']:>9,} frames/s (ceiling)\n"
            f"ingest worker (transactions on)     : {figures['worker_frames_per_s']:>9,} frames/s "
            f"-> {readings:,} readings\n"
            f"worker / ceiling                    : {figures['worker_vs_bare_ratio']:.3f}\n"
            f"worker / floor (10,000 frames/s)    : {worker_fps / 10_000:.2f}\n"
            f"worker CPU (share of one core)      : {cpu_share:.2f}"
        )
        if json_out:
            json_out.write_text(json.dumps(figures, indent=2))
            click.echo(f"figures written to {json_out}")
    finally:
        if kafka is not None:
            kafka.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    bench()
