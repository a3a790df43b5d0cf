"""Benchmarks (``make bench-ingest``, ``make bench-scoring``): figures, not pass/fail tests.

Most run on the real local broker; ``scoring`` needs none.

``ingest``: OCPP 1.6 MeterValues frames -> canonical meter readings through one ingest
worker (transactions on, exactly as ``voltguard worker`` runs), and in the same run a bare
confluent-kafka ``consume(1000)`` + ``orjson.loads`` loop over the same topic as the ceiling.
"""

from __future__ import annotations

import logging
import os
import pickle
import resource
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import click
import orjson
from confluent_kafka import Consumer, Producer

from streams.bench_common import bare_consume_parse, broker, write_json
from streams.ingest import BatchResult, IngestLoop
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
    with broker(bootstrap_servers) as kafka:
        bootstrap_servers = kafka.bootstrap
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
        write_json(figures, json_out)


def _open_session_memory(sessions: int, samples_per_session: int) -> tuple[float, float]:
    """Python heap and changelog bytes per open session (synthetic sessions, 1 sample/min)."""
    import tracemalloc

    from billing.engine import BillingEngine, encoded_size
    from streams.bench_common import open_session_events
    from topics.records import SessionEvent

    engine = BillingEngine()
    events = list(open_session_events(sessions, samples_per_session))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for ev in events:
        if isinstance(ev, SessionEvent):
            engine.on_session_event(ev)
        else:
            engine.on_reading(ev)
    list(engine.take_changes())
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    encoded = sum(encoded_size(c) for c in engine.cases.values())
    return heap / sessions, encoded / sessions


@bench.command("billing")
@click.option("--sessions", default=2000, show_default=True, help="Simulated sessions.")
@click.option("--stations", default=80, show_default=True, help="Simulated stations.")
@click.option("--bootstrap-servers", envvar="VOLTGUARD_BENCH_BOOTSTRAP", default=None,
              help="Use this broker instead of starting a fresh local one.")  # fmt: skip
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")  # fmt: skip
def bench_billing(
    sessions: int, stations: int, bootstrap_servers: str | None, json_out: Path | None
) -> None:
    """Simulator traffic -> ingest -> billing and reconciliation -> detection.

    Prints the billing worker's input events/s beside the bare consume+parse ceiling of the
    same topics and of the raw frames (the ingest ceiling), and the state per open session.
    """
    from streams.billing import BillingBatch, BillingLoop
    from streams.commands.simulate import produce_to_kafka
    from streams.detection import DetectionBatch, DetectionLoop
    from streams.reference import read_reference
    from topics.simulation.config import SimulationConfig

    logging.basicConfig(level=logging.WARNING)
    with broker(bootstrap_servers) as kafka:
        bootstrap_servers = kafka.bootstrap
        secret = "bench-secret"
        config = SimulationConfig(seed=99, sessions=sessions, stations=stations)
        click.echo(f"simulating {sessions:,} sessions at {stations} stations to Kafka ...")
        summary = produce_to_kafka(
            config, hash_secret=secret.encode(), bootstrap_servers=bootstrap_servers
        )
        raw = summary.frames + summary.payments
        frames_ceiling = bare_consume_parse(
            bootstrap_servers, [topic("ocpp_frames")], summary.frames
        )[0]
        settings = Settings.from_env(
            {}, bootstrap_servers=bootstrap_servers, hash_secret=secret, instance_id="bench"
        )
        ingested = {"n": 0}

        def on_ingest(result: BatchResult) -> None:
            ingested["n"] += sum(result.counts.values())
            if ingested["n"] >= raw:
                ingest_loop.stop()

        ingest_loop = IngestLoop(settings, on_batch=on_ingest)
        started = time.perf_counter()
        ingest_loop.run(max_idle_s=15)
        ingest_s = time.perf_counter() - started
        inputs = ["session_events", "meter_readings", "payment_events"]
        billing_ceiling = bare_consume_parse(bootstrap_servers, [topic(s) for s in inputs], 10**12)[
            0
        ]

        reference = read_reference(settings)
        state: dict[str, Any] = {"n": 0, "first": None, "last": None, "peak_open": 0,
                                 "state_bytes": 0.0, "bills": 0, "results": 0}  # fmt: skip

        def on_batch(batch: BillingBatch) -> None:
            now = time.perf_counter()
            if state["first"] is None:
                state["first"] = now
            state["last"] = now
            state["n"] += sum(batch.counts.values())
            state["bills"] += sum(1 for e in batch.emitted if e.topic == "session_bills")
            state["results"] += sum(1 for e in batch.emitted if e.topic == "reconciliation")
            engines = billing_loop.stage.processor.engines.values()  # type: ignore[attr-defined]
            open_cases = [c for e in engines for c in e.cases.values()
                          if c.session is not None and c.session.ended_ms is None]  # fmt: skip
            if len(open_cases) > state["peak_open"]:
                from billing.engine import encoded_size

                state["peak_open"] = len(open_cases)
                state["state_bytes"] = sum(map(encoded_size, open_cases)) / len(open_cases)

        billing_loop = BillingLoop(
            settings, tariffs=reference.tariffs, stations=reference.stations, on_batch=on_batch
        )
        # Detection runs beside billing in the same process (one worker doing both stages,
        # sharing one interpreter: the conservative case), consuming what billing commits.
        detected: dict[str, Any] = {"n": 0, "alerts": 0, "last": None, "cpu": 0.0}

        def on_detection(batch: DetectionBatch) -> None:
            detected["n"] += sum(batch.counts.values())
            detected["alerts"] += len(batch.alerts)
            detected["last"] = time.perf_counter()

        detection_loop = DetectionLoop(settings, on_batch=on_detection)

        def run_detection() -> None:
            cpu_start = time.thread_time()
            detection_loop.run(max_idle_s=8)
            detected["cpu"] = time.thread_time() - cpu_start

        detection_thread = threading.Thread(target=run_detection, daemon=True)
        started_billing = time.perf_counter()
        cpu0 = time.process_time()
        detection_thread.start()
        billing_loop.run(max_idle_s=8)
        detection_thread.join(300)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - started_billing
        elapsed = state["last"] - state["first"]
        events_per_s = state["n"] / elapsed
        pipeline_s = max(state["last"], detected["last"] or 0.0) - started_billing
        pipeline_per_s = state["n"] / pipeline_s
        heap_per_session, bytes_per_session = _open_session_memory(10_000, 60)
        figures = {
            "sessions": sessions,
            "raw_input_records": raw,
            "billing_input_events": state["n"],
            "bills": state["bills"],
            "reconciliation_results": state["results"],
            "ingest_records_per_s": round(raw / ingest_s),
            "bare_frames_ceiling_per_s": round(frames_ceiling),
            "bare_billing_inputs_ceiling_per_s": round(billing_ceiling),
            "billing_worker_events_per_s": round(events_per_s),
            "billing_vs_bare_ratio": round(events_per_s / billing_ceiling, 3),
            "billing_floor_events_per_s": 5_000,
            "detection_input_events": detected["n"],
            "fraud_alerts": detected["alerts"],
            "detection_cpu_s": round(detected["cpu"], 2),
            "detection_cpu_us_per_input_event": round(
                1e6 * detected["cpu"] / max(1, detected["n"]), 1
            ),
            "pipeline_billing_input_events_per_s_with_detection": round(pipeline_per_s),
            "billing_process_cpu_share_of_one_core_incl_idle_exit": round(cpu / wall, 2),
            "peak_open_sessions": state["peak_open"],
            "changelog_bytes_per_open_session_at_peak": round(state["state_bytes"]),
            "synthetic_10k_open_sessions_60_samples_heap_bytes_each": round(heap_per_session),
            "synthetic_10k_open_sessions_60_samples_changelog_bytes_each": round(bytes_per_session),
            "state_target_bytes_per_open_session": 4096,
            "cores": os.cpu_count(),
        }
        click.echo(
            f"billing input (bare consume+orjson) : {figures['bare_billing_inputs_ceiling_per_s']:>9,} events/s (ceiling)\n"
            f"raw frames (bare, ingest ceiling)   : {figures['bare_frames_ceiling_per_s']:>9,} frames/s\n"
            f"ingest worker, whole run            : {figures['ingest_records_per_s']:>9,} records/s\n"
            f"billing worker (transactions on)    : {figures['billing_worker_events_per_s']:>9,} events/s "
            f"-> {state['bills']:,} bills, {state['results']:,} results\n"
            f"billing / ceiling                   : {figures['billing_vs_bare_ratio']:.3f}\n"
            f"billing / floor (5,000 events/s)    : {events_per_s / 5_000:.2f}\n"
            f"detection (same process, beside it) : {detected['n']:>9,} input events, "
            f"{detected['alerts']:,} alerts, {figures['detection_cpu_us_per_input_event']} us CPU each\n"
            f"pipeline with detection             : {figures['pipeline_billing_input_events_per_s_with_detection']:>9,} "
            f"billing input events/s (start of billing to last alert; floor 5,000)\n"
            f"open sessions at peak               : {state['peak_open']:,}, "
            f"{figures['changelog_bytes_per_open_session_at_peak']:,} changelog bytes each\n"
            f"10,000 synthetic open sessions (1 h): {figures['synthetic_10k_open_sessions_60_samples_heap_bytes_each']:,} "
            f"heap bytes, {figures['synthetic_10k_open_sessions_60_samples_changelog_bytes_each']:,} changelog bytes each "
            f"(target < 4,096)"
        )
        write_json(figures, json_out)


def _synthetic_features(sessions: int, stations: int, seed: int) -> list[tuple[Any, dict]]:
    """Seeded session features with every model input set, spread over ``stations``."""
    import random
    from datetime import UTC, datetime, timedelta

    from models.features import SESSION_FEATURES, TOKEN_FEATURES
    from topics.records import SessionFeatures

    rng = random.Random(seed)
    start = datetime(2024, 5, 6, tzinfo=UTC)
    out = []
    for i in range(sessions):
        hour = rng.uniform(0, 24)
        x = {name: rng.uniform(0, 50) for name in SESSION_FEATURES}
        x.update(
            hour_of_day=hour,
            hours_from_0300=abs((hour - 3 + 12) % 24 - 12),
            energy_over_power_integral=1.0 + rng.gauss(0, 0.005) + 0.15 * (rng.random() < 0.01),
        )
        token = {name: rng.uniform(0, 5) for name in TOKEN_FEATURES}
        token["token_night_share"] = rng.random() * 0.3
        f = SessionFeatures(
            event_id=f"bench-{i}",
            event_time=start + timedelta(minutes=3 * i),
            source="bench",
            session_id=f"s-bench-{i}",
            station_id=f"CP{rng.randrange(stations)}",
            features=x,
            token_hash=f"{rng.randrange(sessions // 4 + 1):032x}",
        )
        out.append((f, token))
    return out


@bench.command("scoring")
@click.option("--sessions", default=5000, show_default=True, help="Sessions to score.")
@click.option("--stations", default=200, show_default=True, help="Distinct stations.")
@click.option("--seed", default=1, show_default=True, help="Seed of the synthetic features.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures here as JSON.")  # fmt: skip
def bench_scoring(sessions: int, stations: int, seed: int, json_out: Path | None) -> None:
    """Online scoring on one core: microseconds per observe() and the checkpoint's cost.

    Compares river's own HalfSpaceTrees calls (score_one, then learn_one) with the fused
    walk OnlineScorer uses, then times one partition's OnlineScorer.observe (score, learn,
    alerts) and its to_bytes / from_bytes after the run.
    """
    from river.anomaly import HalfSpaceTrees

    from models.online import FleetHalfSpaceTrees, OnlineConfig, OnlineScorer

    data = _synthetic_features(sessions, stations, seed)
    cfg = OnlineConfig()
    limits = {name: (lo, hi) for name, lo, hi in cfg.fleet_limits}
    rows = [{**f.features, **t} for f, t in data]

    river_hst = HalfSpaceTrees(
        n_trees=cfg.n_trees, height=cfg.height, window_size=cfg.window_size, limits=limits,
        seed=cfg.seed,
    )  # fmt: skip
    projected = [{k: x[k] for k in limits} for x in rows]
    started = time.perf_counter()
    for x in projected:
        river_hst.score_one(x)
        river_hst.learn_one(x)
    river_us = (time.perf_counter() - started) / sessions * 1e6

    fleet = FleetHalfSpaceTrees(
        limits, n_trees=cfg.n_trees, height=cfg.height, window_size=cfg.window_size,
        seed=cfg.seed,
    )  # fmt: skip
    started = time.perf_counter()
    for x in rows:
        fleet.score_learn_one(x)
    fused_us = (time.perf_counter() - started) / sessions * 1e6

    scorer = OnlineScorer(cfg)
    alerts = 0
    started = time.perf_counter()
    for f, t in data:
        alerts += len(scorer.observe(f, t)[1])
    observe_us = (time.perf_counter() - started) / sessions * 1e6

    reps = 20
    started = time.perf_counter()
    for _ in range(reps):
        blob = scorer.to_bytes()
    dump_ms = (time.perf_counter() - started) / reps * 1e3
    started = time.perf_counter()
    for _ in range(reps):
        OnlineScorer.from_bytes(blob)
    load_ms = (time.perf_counter() - started) / reps * 1e3
    river_bytes = len(pickle.dumps(river_hst, protocol=pickle.HIGHEST_PROTOCOL))
    figures = {
        "sessions": sessions,
        "stations": stations,
        "river_hst_score_then_learn_us": round(river_us, 1),
        "fused_hst_score_learn_us": round(fused_us, 1),
        "observe_us_per_session": round(observe_us, 1),
        "observe_target_us": 100,
        "alerts": alerts,
        "checkpoint_bytes": len(blob),
        "checkpoint_bytes_per_station": round(
            (len(blob) - len(OnlineScorer(cfg).to_bytes())) / max(1, len(scorer.stations))
        ),
        "river_hst_pickle_bytes": river_bytes,
        "to_bytes_ms": round(dump_ms, 2),
        "from_bytes_ms": round(load_ms, 2),
        "model_version": scorer.model_version,
    }
    click.echo(
        f"river HST score_one + learn_one : {river_us:8.1f} us/session\n"
        f"fused HST score_learn_one       : {fused_us:8.1f} us/session\n"
        f"OnlineScorer.observe            : {observe_us:8.1f} us/session (target < 100), "
        f"{alerts} alerts\n"
        f"checkpoint                      : {len(blob):,} bytes ({len(scorer.stations)} stations, "
        f"{figures['checkpoint_bytes_per_station']} bytes each; river's HST pickles to "
        f"{river_bytes:,}), to_bytes {dump_ms:.2f} ms, from_bytes {load_ms:.2f} ms"
    )
    write_json(figures, json_out)


def _register() -> None:
    from streams.bench_fleet import bench_fleet
    from streams.bench_pipeline import bench_pipeline
    from streams.bench_recovery import bench_recovery

    bench.add_command(bench_pipeline)
    bench.add_command(bench_recovery)
    bench.add_command(bench_fleet)


_register()

if __name__ == "__main__":  # pragma: no cover
    bench()
