"""The end-to-end benchmark (``make bench``, ``python -m streams.bench pipeline``).

Every phase starts a fresh local broker, produces seeded simulator traffic (OCPP frames,
PSP payment events, stations, tariffs) and runs the whole pipeline as separate worker
processes, exactly as deployed (``voltguard worker --stage ingest|billing|detection|
router``), N of each in one consumer group per stage (the 6 partitions split between them).
The router delivers to a local HTTP receiver playing PagerDuty's Events API.

Phases:

``flat-out``
    The whole input is produced first, then the workers start: sustained input events/s
    is the raw input (frames + payments) divided by the time from the ingest's first
    committed batch to the last commit of any stage (every bill, result, alert and page
    done). With 1 and with 2 workers per stage.
``paced``
    Workers start and join first, then the input is produced at ``--rate`` events/s;
    latency pairs are measured as :mod:`streams.bench_latency` explains (the Kafka
    timestamp of the input frame that made an output due -> a read_committed reader's
    receipt of the bill/result/alert, or the receiver's of the page).

Also in the same run: the bare consume(1000) + orjson.loads ceiling over the same raw
topics, CPU seconds (from /proc, within the measured window) and peak RSS (``wait4``) of
every worker, the broker's CPU, and the billing state per 10,000 open sessions.
Linux only (/proc, wait4).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import click
import orjson

from streams.bench_common import (
    Broker,
    bare_consume_parse,
    broker,
    load_average,
    summarize_ms,
    write_json,
)
from streams.bench_latency import Timeline, ceil_minute
from topics.catalog import CLOCK_KEY, SESSION_PARTITIONS, topic

STAGES = ("ingest", "billing", "detection", "router")
GROUPS = {
    "ingest": ("voltguard-ingest", ("ocpp_frames", "psp_payment_events")),
    "billing": ("voltguard-billing", ("session_events", "meter_readings", "payment_events")),
    "detection": (
        "voltguard-detection",
        ("session_features", "payment_events", "detection_keyed"),
    ),
    "router": ("voltguard-router", ("fraud_alerts", "reconciliation_mismatches")),
}
RAW = ("ocpp_frames", "psp_payment_events")
TARGET_EVENTS_PER_S = 5000
TARGET_P99_MS = 1000.0
TARGET_RATE = 2000
SECRET = "bench-secret"
_TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def peak_rss_kib(pid: int) -> int | None:
    """High-water RSS of ``pid`` (VmHWM; wait4's ru_maxrss would include the RSS the
    parent had when it forked)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Worker:
    stage: str
    instance: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)
    cpu_total_s: float = 0.0
    returncode: int | None = None

    def reap(self, timeout_s: float = 45.0) -> None:
        """Wait for the exit (SIGKILL after ``timeout_s``) and keep its rusage."""
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                pid, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.1)
        self.proc.returncode = self.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_total_s = usage.ru_utime + usage.ru_stime


def start_worker(stage: str, instance: str, env: dict[str, str], log_dir: Path) -> Worker:
    log_path = log_dir / f"{instance}.log"
    handle = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "--log-level", "WARNING", "worker",
         "--stage", stage, "--instance-id", instance],
        env=env, stdout=subprocess.DEVNULL, stderr=handle,
    )  # fmt: skip
    handle.close()
    return Worker(stage, instance, proc, log_path)


# --------------------------------------------------------------------------- receiver


class Receiver:
    """A local PagerDuty Events API: answers 202 and notes (receipt time, dedup key)."""

    def __init__(self) -> None:
        self.pages: list[tuple[float, str, str]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = json.loads(await request.read())
        self.pages.append((time.time(), str(body.get("dedup_key")), str(body.get("event_action"))))
        text = json.dumps({"status": "success", "dedup_key": body.get("dedup_key")})
        return web.Response(status=202, text=text, content_type="application/json")

    def _serve(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the alert receiver did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def router_config(self) -> str:
        return json.dumps(
            {
                "destinations": {
                    "pager": {
                        "type": "pagerduty",
                        "routing_key": "bench",
                        "url": f"http://127.0.0.1:{self.port}/pd",
                        "rate_per_s": 100000,
                        "burst": 100000,
                    },
                },
                "routes": [{"to": "pager"}],
            }
        )


# --------------------------------------------------------------------------- watchers


class Collector(threading.Thread):
    """A read_committed reader of the output topics: (topic short name, value, receipt s)."""

    SHORTS = ("session_bills", "reconciliation", "reconciliation_mismatches", "fraud_alerts")

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-collector-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 20,
            }
        )
        self.names = {topic(s): s for s in self.SHORTS}
        self.consumer.subscribe(list(self.names))
        self.records: list[tuple[str, bytes, float]] = []
        self.last_s = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            batch = self.consumer.consume(1000, 0.05)
            now = time.time()
            for m in batch:
                if m.error() is None and m.value() and m.key() != CLOCK_KEY:
                    self.records.append((self.names[m.topic()], m.value(), now))
                    self.last_s = now
        self.consumer.close()


class Monitor(threading.Thread):
    """Every ``interval_s``: each stage group's committed offsets and each process's CPU."""

    def __init__(self, bootstrap: str, pids: dict[str, int], interval_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        self.interval_s = interval_s
        self.pids = pids
        self.readers = {}
        self.partitions = {}
        for stage, (group, shorts) in GROUPS.items():
            self.readers[stage] = Consumer(
                {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
            )
            self.partitions[stage] = [
                TopicPartition(topic(s), p) for s in shorts for p in range(SESSION_PARTITIONS)
            ]
        self.samples: list[tuple[float, dict[str, int], dict[str, float | None]]] = []
        self.peak_rss: dict[str, int] = {}
        """Largest VmHWM seen per process, KiB."""
        self.halt = threading.Event()

    def committed(self, stage: str) -> int:
        try:
            tps = self.readers[stage].committed(self.partitions[stage], timeout=5)
        except Exception:  # the group's coordinator not ready yet: nothing committed
            return 0
        return sum(tp.offset for tp in tps if tp.offset >= 0)

    def run(self) -> None:
        while not self.halt.is_set():
            offsets = {stage: self.committed(stage) for stage in GROUPS}
            cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
            for name, pid in self.pids.items():
                rss = peak_rss_kib(pid)
                if rss is not None:
                    self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
            self.samples.append((time.time(), offsets, cpu))
            self.halt.wait(self.interval_s)
        for reader in self.readers.values():
            reader.close()

    def last_advance_s(self) -> float:
        """When any stage's committed offsets last moved (0: never)."""
        last = 0.0
        for (_, a, _), (t, b, _) in pairwise(self.samples):
            if a != b:
                last = t
        return last


# --------------------------------------------------------------------------- traffic


def _producer(bootstrap: str, paced: bool) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "lz4",
            "linger.ms": 2 if paced else 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "enable.idempotence": True,
        }
    )


class Traffic:
    """The simulator's records, reference data first; raw input produced flat out or paced."""

    def __init__(
        self, bootstrap: str, sessions: int, stations: int, seed: int, fault_scale: float = 1.0
    ) -> None:
        from topics.simulation.config import SimulationConfig
        from topics.simulation.engine import Simulation

        self.bootstrap = bootstrap
        self.sim = Simulation(
            SimulationConfig(
                seed=seed, sessions=sessions, stations=stations, fault_scale=fault_scale
            ),
            hash_secret=SECRET.encode(),
        )
        self.records = self.sim.records()
        self.raw = 0
        self._held: tuple[str, str, bytes] | None = None

    def reference(self) -> None:
        """Produce the stations and tariffs (they come first), so billing starts with them."""
        producer = _producer(self.bootstrap, paced=False)
        for short, key, value in self.records:
            if short not in ("stations", "tariffs"):
                self._held = (short, key, value)
                break
            producer.produce(topic(short), value, key.encode())
        if producer.flush(60):
            raise RuntimeError("reference data not delivered")

    def raw_input(self, rate: float) -> float:
        """Produce the frames and payments (labels are not pipeline input); seconds taken."""
        producer = _producer(self.bootstrap, paced=rate > 0)
        names = {s: topic(s) for s in RAW}
        produce, poll = producer.produce, producer.poll
        started = time.perf_counter()
        pending = [self._held] if self._held else []
        for short, key, value in _chain(pending, self.records):
            name = names.get(short)
            if name is None:
                continue
            while True:
                try:
                    produce(name, value, key.encode())
                    break
                except BufferError:
                    poll(0.05)
            self.raw += 1
            if self.raw % 20 == 0:
                poll(0)
                if rate > 0:
                    ahead = self.raw / rate - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        if producer.flush(120):
            raise RuntimeError("raw input not delivered within 120 s")
        return time.perf_counter() - started


def _chain(first: list[Any], rest: Any) -> Any:
    yield from first
    yield from rest


def read_timeline(bootstrap: str) -> Timeline:
    """(received_at, Kafka timestamp) of every OCPP frame, read back from the topic."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-timeline-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    name = topic("ocpp_frames")
    consumer.assign([TopicPartition(name, p, 0) for p in range(SESSION_PARTITIONS)])
    pairs: list[tuple[int, int]] = []
    ends: dict[tuple[str, int], int] = {}
    ended: set[int] = set()
    idle = time.monotonic()
    while len(ended) < SESSION_PARTITIONS and time.monotonic() - idle < 10:
        for m in consumer.consume(5000, 0.5):
            idle = time.monotonic()
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition())
                continue
            envelope = orjson.loads(m.value())
            produced = m.timestamp()[1]
            pairs.append((_ms(envelope["received_at"]), produced))
            end = session_end(envelope)
            if end is not None:
                ends[end] = max(produced, ends.get(end, 0))
    consumer.close()
    timeline = Timeline.build(pairs)
    timeline.ends = ends
    return timeline


def session_end(envelope: dict[str, Any]) -> tuple[str, int] | None:
    """(station id, end time ms) when the frame ends a session (1.6 StopTransaction, 2.0.1
    TransactionEvent Ended), else None.

    >>> session_end({"station_id": "S", "frame": [2, "1", "StopTransaction",
    ...              {"timestamp": "2024-01-01T00:01:00Z"}]})
    ('S', 1704067260000)
    >>> session_end({"station_id": "S", "frame": [2, "1", "Heartbeat", {}]}) is None
    True
    """
    frame = envelope.get("frame")
    if not (isinstance(frame, list) and len(frame) > 3 and frame[0] == 2):
        return None
    payload = frame[3]
    if not isinstance(payload, dict) or not isinstance(payload.get("timestamp"), str):
        return None
    if frame[2] == "StopTransaction" or (
        frame[2] == "TransactionEvent" and payload.get("eventType") == "Ended"
    ):
        try:
            return str(envelope.get("station_id")), _ms(payload["timestamp"])
        except ValueError:
            return None
    return None


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


# --------------------------------------------------------------------------- latency


def latencies(
    records: list[tuple[str, bytes, float]],
    pages: list[tuple[float, str, str]],
    timeline: Timeline,
    *,
    bill_grace_s: int,
    after_ms: int = 0,
) -> dict[str, list[float]]:
    """Seconds from the producing of the input that made each output due to its receipt.

    For a bill that input is the first frame at or past the session's end plus the bill
    grace, or the frame that ended the session when that came later (an offline station's
    replay, late events): the bill could not be published before it arrived.

    The first receipt of each bill (by session), result version (result id, revision),
    fraud alert (alert id) and page (dedup key, action) counts. An alert is due when its
    session's bill is (it is scored from the bill's features). A trigger page is due when
    the first mismatching version of its result (or its alert) is, a resolve page when
    the first version back to ``matched`` is (only the first page of each dedup key and
    action counts, so that is the version that caused it). Outputs whose due
    time no input reached, and alerts about no billed session, are not paired (counted
    under ``unpaired``), nor outputs whose trigger was produced before ``after_ms`` (the
    warm-up).
    """
    from topics.codec import decode
    from topics.records import FraudAlert, ReconciliationResult, SessionBill

    grace_ms = bill_grace_s * 1000
    out: dict[str, list[float]] = {"bills": [], "results": [], "alerts": [], "pages": []}
    unpaired: dict[str, int] = {k: 0 for k in out}
    bill_due: dict[str, int | None] = {}
    """Session id -> produce time of the input that made its bill due."""
    notices: dict[tuple[str, str], int | None] = {}
    """(alert or result id, trigger|resolve) -> produce time of the input that made the
    first version asking it due."""
    seen: set[tuple[str, str]] = set()

    def trigger_of(due_ms: int | None) -> int | None:
        return None if due_ms is None else timeline.trigger_ms(due_ms)

    def pair(kind: str, trigger: int | None, seen_s: float) -> None:
        if trigger is None:
            unpaired[kind] += 1
        elif trigger >= after_ms:
            out[kind].append(seen_s - trigger / 1000)

    ordered = sorted(records, key=lambda r: r[2])
    for short, value, seen_s in ordered:
        if short != "session_bills":
            continue
        bill = decode(value, SessionBill)
        if ("bill", bill.session_id) in seen:
            continue
        seen.add(("bill", bill.session_id))
        end_ms = int(bill.event_time.timestamp() * 1000)
        trigger = trigger_of(ceil_minute(end_ms + grace_ms))
        ended = timeline.ends.get((bill.station_id, end_ms))
        if trigger is not None and ended is not None:
            # A session whose end arrived after its due minute (an offline station, late
            # events): its bill was caused by that frame, not by the first on-time one.
            trigger = max(trigger, ended)
        bill_due[bill.session_id] = trigger
        pair("bills", trigger, seen_s)
    for short, value, seen_s in ordered:
        if short in ("reconciliation", "reconciliation_mismatches"):
            r = decode(value, ReconciliationResult)
            due = None if r.decided_at is None else int(r.decided_at.timestamp() * 1000)
            if short == "reconciliation_mismatches":
                action = "resolve" if r.outcome == "matched" else "trigger"
                notices.setdefault((r.result_id, action), trigger_of(due))
            elif ("result", f"{r.result_id}|{r.revision}") not in seen:
                seen.add(("result", f"{r.result_id}|{r.revision}"))
                pair("results", trigger_of(due), seen_s)
        elif short == "fraud_alerts":
            a = decode(value, FraudAlert)
            due = bill_due.get(a.session_id or "")
            notices.setdefault((a.alert_id, "trigger"), due)
            if ("alert", a.alert_id) not in seen:
                seen.add(("alert", a.alert_id))
                pair("alerts", due, seen_s)
    for seen_s, key, action in sorted(pages):
        if ("page", f"{key}|{action}") in seen:
            continue
        seen.add(("page", f"{key}|{action}"))
        pair("pages", notices.get((key, action)), seen_s)
    out["unpaired"] = [float(unpaired[k]) for k in ("bills", "results", "alerts", "pages")]
    return out


# --------------------------------------------------------------------------- a phase


def _window(monitor: Monitor, stage: str) -> tuple[float, float, int]:
    """(start, end, offsets): from the sample before the stage's first advance to its last."""
    samples = monitor.samples
    start = end = None
    for (t0, a, _), (t1, b, _) in pairwise(samples):
        if b[stage] != a[stage]:
            if start is None:
                start = t0
            end = t1
    if start is None or end is None:
        return 0.0, 0.0, 0
    return start, end, samples[-1][1][stage]


def _cpu_between(monitor: Monitor, name: str, start: float, end: float) -> float:
    """CPU seconds of ``name`` between the samples at or before ``start`` and ``end``."""
    values = [(t, c) for t, _, cpu in monitor.samples if (c := cpu.get(name)) is not None]
    if not values:
        return 0.0
    before = [c for t, c in values if t <= start] or [values[0][1]]
    after = [c for t, c in values if t <= end] or [values[0][1]]
    return max(0.0, after[-1] - before[-1])


def _crossing(monitor: Monitor, stage: str, level: int) -> float | None:
    for t, offsets, _ in monitor.samples:
        if offsets[stage] >= level:
            return t
    return None


def run_phase(
    kafka: Broker,
    *,
    name: str,
    workers: int,
    sessions: int,
    stations: int,
    rate: float,
    seed: int,
    quiet_s: float,
    timeout_s: float,
    warmup_s: float = 0.0,
    fault_scale: float = 1.0,
) -> dict[str, Any]:
    """One phase on ``kafka`` (its topics empty); its figures. In a paced phase, outputs
    due to input produced in its first ``warmup_s`` seconds are not paired."""
    from streams.settings import Settings

    click.echo(f"-- {name}: {workers} worker(s) per stage, {sessions:,} sessions, "
               f"{'flat out' if rate <= 0 else f'{rate:,.0f} events/s'}")  # fmt: skip
    load_before = load_average()
    bill_grace_s = Settings.from_env({}).bill_grace_s
    with tempfile.TemporaryDirectory(prefix="voltguard-bench-pipeline-") as tmp_dir:
        tmp = Path(tmp_dir)
        receiver = Receiver()
        receiver.start()
        config_path = tmp / "routes.json"
        config_path.write_text(receiver.router_config())
        env = {
            **os.environ,
            "VOLTGUARD_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "VOLTGUARD_HASH_SECRET": SECRET,
            "VOLTGUARD_ROUTER_CONFIG": str(config_path),
            "VOLTGUARD_MODEL_REGISTRY": str(tmp / "registry"),
        }
        traffic = Traffic(kafka.bootstrap, sessions, stations, seed, fault_scale)
        traffic.reference()
        produce_s = None
        if rate <= 0:
            produce_s = traffic.raw_input(0)
        procs = [
            start_worker(stage, f"bench-{stage}-{i}", env, tmp)
            for i in range(workers) for stage in STAGES
        ]  # fmt: skip
        pids = {w.instance: w.proc.pid for w in procs}
        if kafka.pid is not None:
            pids["broker"] = kafka.pid
        pids["bench"] = os.getpid()
        collector = Collector(kafka.bootstrap)
        collector.start()
        monitor = Monitor(kafka.bootstrap, pids)
        monitor.start()
        try:
            if rate > 0:
                _wait_joined(kafka.bootstrap, workers, procs)
                paced_from = time.time()
                produce_s = traffic.raw_input(rate)
            raw = traffic.raw
            deadline = time.monotonic() + timeout_s
            complete = False
            while time.monotonic() < deadline:
                time.sleep(0.5)
                _check_alive(procs)
                if not monitor.samples or monitor.samples[-1][1]["ingest"] < raw:
                    continue
                last = max(monitor.last_advance_s(), collector.last_s)
                if last and time.time() - last > quiet_s:
                    complete = True
                    break
        finally:
            for w in procs:
                if w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGTERM)
            for w in procs:
                w.reap()
            monitor.halt.set()
            collector.halt.set()
            monitor.join(30)
            collector.join(30)
            receiver.stop()
        ceiling, ceiling_n = bare_consume_parse(kafka.bootstrap, [topic(s) for s in RAW], raw)
        restores = measure_restores(kafka.bootstrap)
        timeline = read_timeline(kafka.bootstrap) if rate > 0 else None
    start, _, _ = _window(monitor, "ingest")
    end = monitor.last_advance_s()
    window = end - start if end > start else float("nan")
    stages = {}
    for stage in STAGES:
        s0, s1, offsets = _window(monitor, stage)
        stages[stage] = {
            "committed_offsets": offsets,
            "active_s": round(s1 - s0, 2),
            "offsets_per_s": round(offsets / (s1 - s0)) if s1 > s0 else None,
        }
    t10, t90 = _crossing(monitor, "ingest", raw // 10), _crossing(monitor, "ingest", raw * 9 // 10)
    ingest_10_90 = (0.8 * raw / (t90 - t10)) if t10 and t90 and t90 > t10 else None
    worker_rows = []
    for w in procs:
        cpu = _cpu_between(monitor, w.instance, start, end)
        worker_rows.append(
            {
                "stage": w.stage,
                "instance": w.instance,
                "cpu_s_in_window": round(cpu, 2),
                "cpu_share_of_one_core": round(cpu / window, 2) if window == window else None,
                "cpu_s_whole_life": round(w.cpu_total_s, 2),
                "peak_rss_mib": round(monitor.peak_rss.get(w.instance, 0) / 1024, 1),
                "exit_code": w.returncode,
            }
        )
    broker_cpu = _cpu_between(monitor, "broker", start, end) if kafka.pid else None
    bench_cpu = _cpu_between(monitor, "bench", start, end)
    counts: dict[str, int] = {}
    for short, _, _ in collector.records:
        counts[short] = counts.get(short, 0) + 1
    counts["pages"] = len(receiver.pages)
    digests = output_digests(collector.records, receiver.pages)
    figures: dict[str, Any] = {
        "name": name,
        "workers_per_stage": workers,
        "mode": "flat_out" if rate <= 0 else "paced",
        "target_rate_events_per_s": rate if rate > 0 else None,
        "sessions": sessions,
        "stations": stations,
        "fault_scale": fault_scale,
        "raw_input_events": raw,
        "produce_s": round(produce_s or 0.0, 2),
        "complete": complete,
        "window_s": round(window, 2),
        "pipeline_events_per_s": round(raw / window) if window == window else None,
        "ingest_events_per_s_10_to_90pct": round(ingest_10_90) if ingest_10_90 else None,
        "bare_consume_parse_events_per_s": round(ceiling),
        "bare_consume_parse_events": ceiling_n,
        "stages": stages,
        "workers": worker_rows,
        "broker_cpu_share_of_one_core": round(broker_cpu / window, 2)
        if broker_cpu is not None and window == window
        else None,
        "bench_process_cpu_share_of_one_core": round(bench_cpu / window, 2)
        if window == window
        else None,
        "outputs": counts,
        "output_digests": digests,
        "restore_after_run": restores,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if figures["pipeline_events_per_s"] and ceiling:
        figures["pipeline_vs_ceiling"] = round(figures["pipeline_events_per_s"] / ceiling, 3)
    if timeline is not None:
        lat = latencies(
            collector.records, receiver.pages, timeline, bill_grace_s=bill_grace_s,
            after_ms=int((paced_from + warmup_s) * 1000),
        )  # fmt: skip
        unpaired = dict(zip(("bills", "results", "alerts", "pages"), lat.pop("unpaired"),
                            strict=True))  # fmt: skip
        everything = [x for v in lat.values() for x in v]
        figures["latency"] = {k: summarize_ms(v) for k, v in lat.items()}
        figures["latency"]["all_outputs"] = summarize_ms(everything)
        figures["latency"]["unpaired"] = {k: int(v) for k, v in unpaired.items()}
        figures["latency"]["warmup_s_not_paired"] = warmup_s
        figures["achieved_rate_events_per_s"] = round(raw / produce_s) if produce_s else None
    _echo_phase(figures)
    return figures


def reset_broker(bootstrap: str, timeout_s: float = 90.0) -> None:
    """Delete every topic and the stages' groups, then create the catalog's topics again:
    the next phase starts empty on a broker whose JVM is already warm."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from streams.admin import create_topics

    admin = AdminClient({"bootstrap.servers": bootstrap})
    groups = [g for g, _ in GROUPS.values()] + [f"{g}-restore" for g, _ in GROUPS.values()]
    for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
        with contextlib.suppress(KafkaException):  # a group that never committed: none
            future.result()
    names = [t for t in admin.list_topics(timeout=10).topics if not t.startswith("__")]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()
    deadline = time.monotonic() + timeout_s
    while True:
        left = set(names) & set(admin.list_topics(timeout=10).topics)
        if not left:
            try:
                create_topics(admin)
                return
            except KafkaException:  # still marked for deletion
                if time.monotonic() > deadline:
                    raise
        elif time.monotonic() > deadline:
            raise RuntimeError(f"topics not deleted after {timeout_s} s: {sorted(left)}")
        time.sleep(0.5)


def measure_restores(bootstrap: str) -> dict[str, Any]:
    """Entries and seconds to restore all 6 partitions of the billing and the detection
    changelogs the phase left (what a worker taking over every partition replays)."""
    from streams.billing import BillingLoop
    from streams.detection import DetectionLoop
    from streams.settings import Settings

    settings = Settings.from_env(
        {}, bootstrap_servers=bootstrap, instance_id=f"bench-restore-{os.getpid()}"
    )
    out: dict[str, Any] = {}
    for stage, loop in (
        ("billing", BillingLoop(settings, tariffs={}, stations={})),
        ("detection", DetectionLoop(settings)),
    ):
        started = time.perf_counter()
        entries = loop._restore(list(range(SESSION_PARTITIONS)))
        out[stage] = {"entries": entries, "seconds": round(time.perf_counter() - started, 2)}
        if stage == "billing":
            engines = loop.stage.processor.engines  # type: ignore[attr-defined]
            out[stage]["open_sessions"] = sum(e.open_sessions() for e in engines.values())
        loop.consumer.close()
    return out


def _wait_joined(bootstrap: str, workers: int, procs: list[Worker], timeout_s: float = 120) -> None:
    """Until every stage's group is stable with all its members (before paced traffic)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    pending = {group for group, _ in GROUPS.values()}
    while pending and time.monotonic() < deadline:
        _check_alive(procs)
        for group in list(pending):
            try:
                desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
            except Exception:
                continue
            if desc.state == ConsumerGroupState.STABLE and len(desc.members) == workers:
                pending.discard(group)
        time.sleep(0.5)
    if pending:
        raise RuntimeError(f"groups not stable after {timeout_s} s: {sorted(pending)}")
    time.sleep(2)  # the restores after assignment (empty changelogs) and the first polls


def _check_alive(procs: list[Worker]) -> None:
    for w in procs:
        if w.proc.poll() is not None:
            tail = w.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{w.instance} exited with {w.proc.returncode}:\n{tail}")


def _echo_phase(f: dict[str, Any]) -> None:
    click.echo(
        f"   input {f['raw_input_events']:,} events; pipeline {f['pipeline_events_per_s']:,} "
        f"events/s over {f['window_s']} s (bare consume+parse {f['bare_consume_parse_events_per_s']:,}"
        f"/s, ratio {f.get('pipeline_vs_ceiling')}); ingest 10-90% "
        f"{f['ingest_events_per_s_10_to_90pct']}/s; complete={f['complete']}"
    )
    for w in f["workers"]:
        click.echo(
            f"   {w['instance']:<20} CPU {w['cpu_share_of_one_core']} core "
            f"({w['cpu_s_in_window']} s), peak RSS {w['peak_rss_mib']} MiB"
        )
    click.echo(
        f"   broker CPU {f['broker_cpu_share_of_one_core']} core, bench process "
        f"{f['bench_process_cpu_share_of_one_core']} core; outputs {f['outputs']}; "
        f"load {f['load_average_before']} -> {f['load_average_after']}"
    )
    for kind, s in (f.get("latency") or {}).items():
        if isinstance(s, dict) and "p50_ms" in s:
            click.echo(
                f"   latency {kind:<12} n={s['n']:<6} p50 {s['p50_ms']} p95 {s['p95_ms']} "
                f"p99 {s['p99_ms']} max {s['max_ms']} ms"
            )


# --------------------------------------------------------------------------- summary


def summarize(phases: list[dict[str, Any]], state: dict[str, Any], cores: int) -> dict[str, Any]:
    """Figures against the targets, and the reason when two workers fall short of 2x."""
    measured = [p for p in phases if not p.get("warmup")]
    flat = {p["workers_per_stage"]: p for p in measured if p["mode"] == "flat_out"}
    paced = [p for p in measured if p["mode"] == "paced" and p["workers_per_stage"] == 1]
    out: dict[str, Any] = {"cores": cores}
    one = flat.get(1, {}).get("pipeline_events_per_s")
    if one:
        out["one_worker_events_per_s"] = one
        out["one_worker_vs_target_5000"] = round(one / TARGET_EVENTS_PER_S, 2)
    if paced and paced[0].get("latency"):
        lat = paced[0]["latency"]
        out["paced_rate_events_per_s"] = paced[0].get("achieved_rate_events_per_s")
        for kind in ("pages", "alerts", "all_outputs"):
            p99 = lat[kind]["p99_ms"]
            out[f"p99_{kind}_ms"] = p99
            out[f"p99_{kind}_vs_target_1000ms"] = None if p99 is None else round(p99 / 1000, 3)
    two = flat.get(2, {}).get("pipeline_events_per_s")
    if one and two:
        out["two_workers_events_per_s"] = two
        out["two_vs_one_ratio"] = round(two / one, 2)
        out["two_workers_within_10pct_of_2x"] = two >= 1.8 * one
        busy = sum(w["cpu_share_of_one_core"] or 0 for w in flat[1]["workers"])
        busy += flat[1]["broker_cpu_share_of_one_core"] or 0
        busy += flat[1]["bench_process_cpu_share_of_one_core"] or 0
        out["one_worker_phase_cpu_cores_used"] = round(busy, 2)
        if two < 1.8 * one:
            out["reason"] = (
                f"one worker per stage already kept {busy:.2f} of {cores} cores busy "
                f"(workers, broker and the benchmark's own reader); a second worker per stage "
                f"can only share the same cores, so it cannot double the throughput here"
                if busy >= 0.8 * cores
                else f"one worker per stage used {busy:.2f} of {cores} cores: the shortfall "
                "is not CPU alone (see the per-stage windows)"
            )
        same = flat[2].get("output_digests") == flat[1].get("output_digests")
        out["outputs_identical_one_vs_two_workers"] = same
        if not same:
            out["outputs_one_vs_two_workers"] = {
                "one": flat[1]["outputs"],
                "two": flat[2]["outputs"],
                "differing": sorted(
                    k for k, v in flat[1].get("output_digests", {}).items()
                    if flat[2].get("output_digests", {}).get(k) != v
                ),
            }  # fmt: skip
            out["outputs_note"] = (
                "the same input gave different outputs with two workers per stage (every "
                "published version's event id, and every page's dedup key and action, are "
                "compared): the two-worker figure did other work, and a difference is a bug"
            )
    out.update(state)
    return out


def output_digests(
    records: list[tuple[str, bytes, float]], pages: list[tuple[float, str, str]]
) -> dict[str, str]:
    """Per output topic, a digest of the event ids of every version published (with how
    many), and of the pages' (dedup key, action): equal digests mean the same outputs,
    whatever order they came in. The event ids hash the records' content (bill lines,
    verdicts, alert evidence), not when they were published.

    >>> a = [("session_bills", b'{"event_id":"b1"}', 1.0), ("session_bills", b'{"event_id":"b2"}', 2.0)]
    >>> output_digests(a, []) == output_digests(a[::-1], [])
    True
    >>> output_digests(a, [])["session_bills"] != output_digests(a[:1], [])["session_bills"]
    True
    """
    ids: dict[str, list[str]] = {}
    for short, value, _ in records:
        try:
            event_id = str(orjson.loads(value).get("event_id"))
        except (orjson.JSONDecodeError, AttributeError):
            event_id = "undecodable:" + hashlib.sha256(value).hexdigest()
        ids.setdefault(short, []).append(event_id)
    ids["pages"] = [f"{key}|{action}" for _, key, action in pages]
    return {
        short: f"{len(found)}:" + hashlib.sha256("\n".join(sorted(found)).encode()).hexdigest()[:16]
        for short, found in sorted(ids.items())
    }


def state_per_open_session() -> dict[str, Any]:
    """Billing state of 10,000 synthetic open sessions (1 h of 1-minute samples each)."""
    from streams.bench import _open_session_memory

    heap, changelog = _open_session_memory(10_000, 60)
    return {
        "state_10k_open_sessions_heap_mib": round(heap * 10_000 / 2**20, 1),
        "state_10k_open_sessions_changelog_mib": round(changelog * 10_000 / 2**20, 1),
        "state_bytes_per_open_session_changelog": round(changelog),
        "state_bytes_per_open_session_heap": round(heap),
    }


@click.command("pipeline")
@click.option("--sessions", default=1000, show_default=True,
              help="Simulated sessions of each flat-out phase (about 300 input events each).")  # fmt: skip
@click.option("--paced-sessions", default=600, show_default=True,
              help="Simulated sessions of the paced phase.")  # fmt: skip
@click.option("--stations", default=80, show_default=True, help="Simulated stations.")
@click.option("--rate", default=float(TARGET_RATE), show_default=True,
              help="Input events/s of the paced phase (0: no paced phase).")  # fmt: skip
@click.option("--workers", default="1,2", show_default=True,
              help="Workers per stage of the flat-out phases, comma-separated.")  # fmt: skip
@click.option(
    "--paced-workers",
    default="1",
    show_default=True,
    help="Workers per stage of the paced phases, comma-separated.",
)
@click.option(
    "--warmup-sessions",
    default=60,
    show_default=True,
    help="Sessions of a first, unreported flat-out phase (warms the broker's JVM).",
)
@click.option(
    "--warmup-s",
    default=5.0,
    show_default=True,
    help="Paced phases: outputs due to input of the first N seconds are not paired.",
)
@click.option(
    "--bootstrap-servers",
    envvar="VOLTGUARD_BENCH_BOOTSTRAP",
    default=None,
    help="Use this broker (its topics are DELETED between phases) instead of a fresh local one.",
)
@click.option("--paced-fault-scale", default=4.0, show_default=True,
              help="Paced phases: the simulator's fault and fraud rates times this, so that "
              "the alert and page latencies rest on more samples.")  # fmt: skip
@click.option("--seed", default=99, show_default=True, help="Simulator seed.")
@click.option("--quiet-s", default=8.0, show_default=True,
              help="A phase ends this long after the last commit of any stage.")  # fmt: skip
@click.option("--timeout-s", default=600.0, show_default=True, help="Longest phase.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")  # fmt: skip
def bench_pipeline(
    sessions: int,
    paced_sessions: int,
    stations: int,
    rate: float,
    workers: str,
    paced_workers: str,
    warmup_sessions: int,
    warmup_s: float,
    bootstrap_servers: str | None,
    paced_fault_scale: float,
    seed: int,
    quiet_s: float,
    timeout_s: float,
    json_out: Path | None,
) -> None:
    """Simulator traffic through ingest, billing, detection and the router, as processes.

    Prints sustained input events/s with 1 and 2 workers per stage, latency at a paced
    rate, CPU and peak memory per worker, the bare consume+parse ceiling of the same run,
    and the state per 10,000 open sessions; ratios to the targets at the end.
    """
    import logging

    logging.basicConfig(level=logging.WARNING)
    cores = os.cpu_count() or 1
    started = datetime.now(UTC)
    phases = []
    common = {"stations": stations, "seed": seed, "quiet_s": quiet_s, "timeout_s": timeout_s}
    plan: list[tuple[str, int, int, float]] = []
    if warmup_sessions:
        plan.append(("warmup", 1, warmup_sessions, 0.0))
    plan += [(f"flat-out-{n}", n, sessions, 0.0) for n in _counts(workers)]
    if rate > 0:
        plan += [(f"paced-{rate:g}-{n}", n, paced_sessions, rate) for n in _counts(paced_workers)]
    with broker(bootstrap_servers) as kafka:
        for i, (name, n, count, r) in enumerate(plan):
            if i:
                reset_broker(kafka.bootstrap)
            phase = run_phase(
                kafka, name=name, workers=n, sessions=count, rate=r, warmup_s=warmup_s,
                fault_scale=paced_fault_scale if r > 0 else 1.0, **common,
            )  # fmt: skip
            phase["warmup"] = name == "warmup"
            phases.append(phase)
    state = state_per_open_session()
    summary = summarize(phases, state, cores)
    figures = {
        "benchmark": "pipeline",
        "format": 1,
        "started_at": started.isoformat(),
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "cores": cores,
        "bench_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "targets": {
            "one_worker_events_per_s": TARGET_EVENTS_PER_S,
            "p99_produce_to_alert_ms_at_2000_per_s": TARGET_P99_MS,
            "two_workers_vs_one": 2.0,
        },
        "phases": phases,
        "summary": summary,
    }
    _echo_summary(summary)
    write_json(figures, json_out)


def _echo_summary(s: dict[str, Any]) -> None:
    rows = [
        ("1 worker/stage, input events/s", s.get("one_worker_events_per_s"), "5,000",
         s.get("one_worker_vs_target_5000")),
        ("p99 produce -> page (ms)", s.get("p99_pages_ms"), "< 1,000",
         s.get("p99_pages_vs_target_1000ms")),
        ("p99 produce -> alert on topic (ms)", s.get("p99_alerts_ms"), "< 1,000",
         s.get("p99_alerts_vs_target_1000ms")),
        ("p99 produce -> any output (ms)", s.get("p99_all_outputs_ms"), "< 1,000",
         s.get("p99_all_outputs_vs_target_1000ms")),
        ("2 workers/stage, input events/s", s.get("two_workers_events_per_s"), "2x one",
         s.get("two_vs_one_ratio")),
        ("changelog MiB per 10k open sessions", s.get("state_10k_open_sessions_changelog_mib"),
         "", None),
        ("heap MiB per 10k open sessions", s.get("state_10k_open_sessions_heap_mib"), "", None),
    ]  # fmt: skip
    click.echo("\n== pipeline summary ==")
    click.echo(f"{'figure':<38}{'measured':>12}{'target':>10}{'ratio':>8}")
    for label, value, target, ratio in rows:
        shown = "-" if value is None else f"{value:,}"
        click.echo(f"{label:<38}{shown:>12}{target:>10}{'' if ratio is None else ratio:>8}")
    if "reason" in s:
        click.echo(f"two workers: {s['reason']}")
    if "outputs_note" in s:
        click.echo(f"outputs: {s['outputs_note']}: {s['outputs_one_vs_two_workers']}")
    elif s.get("outputs_identical_one_vs_two_workers"):
        click.echo("outputs: one and two workers per stage published the same versions and pages")


def _counts(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``.

    >>> _counts("1, 2"), _counts("")
    ([1, 2], [])
    """
    return [int(x) for x in text.split(",") if x.strip()]


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
