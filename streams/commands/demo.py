"""``voltguard demo``: the main job on the embedded default, watched from the terminal.

Starts (or reuses) the project's local Kafka, creates the catalog's topics, runs the ingest,
billing and detection workers, feeds them simulated fleet traffic (plus a few real malformed
charger frames) and shows what comes out: sessions starting and ending, bills,
reconciliation mismatches with their evidence, explained fraud alerts, dead letters with
their reasons.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import click
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.billing import BillingLoop
from streams.detection import DetectionLoop
from streams.ingest import IngestLoop
from streams.localkafka import LocalKafka, default_data_dir
from streams.loop import watermarks
from streams.reference import ReferenceFollower, read_reference
from streams.settings import Settings
from topics.catalog import CLOCK_KEY, topic
from topics.codec import decode
from topics.records import (
    DeadLetter,
    FraudAlert,
    MeterReading,
    ReconciliationResult,
    SessionBill,
    SessionEvent,
)

__all__ = ["demo"]

# Malformed frames as real chargers send them (shared/data/ocpp-captures, gnezdilov_real_examples_v16).
MALFORMED_FRAMES = [
    b'{"station_id":"DEMO-BROKEN-1","received_at":"2022-11-21T20:50:00Z","protocol":"ocpp1.6",'
    b'"frame":[2,"15455",{"connectorId":1,"transactionId":0,"meterValue":[{"timestamp":'
    b'"2022-11-21T20:50:00.001Z","sampledValue":[{"value":"19309.971","unit":"Wh"}]}]}]}',
    b'{"station_id":"DEMO-BROKEN-1","received_at":"2022-12-02T15:08:43Z","protocol":"ocpp1.6",'
    b'"frame":[2," 15455","Reset",{"type":"Hard"}]}',
    b'{"station_id":"DEMO-BROKEN-2","frame":[2,"1","Heartbeat"',
]


def produce_demo_traffic(*, bootstrap: str, sessions: int, seed: int, hash_secret: str) -> None:
    """Simulated fleet traffic (OCPP frames, payments, stations, tariffs) at a watchable pace."""
    from streams.commands.simulate import produce_to_kafka
    from topics.simulation.config import SimulationConfig

    # Faults four times as often as the simulator's defaults: a few hundred sessions then
    # show most kinds of fraud and mismatch, not two.
    config = SimulationConfig(
        seed=seed, sessions=sessions, stations=max(5, sessions // 8), fault_scale=4.0
    )
    produce_to_kafka(
        config, hash_secret=hash_secret.encode(), bootstrap_servers=bootstrap, rate=3000.0
    )


def _hash_secret(state_dir: Path) -> str:
    """The demo's hash secret: VOLTGUARD_HASH_SECRET, else one generated once and kept."""
    path = state_dir / "demo-hash-secret"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


class _View:
    """Reads the canonical and dead-letter topics and prints what happens."""

    def __init__(self, bootstrap: str, *, show_sessions: int) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"voltguard-demo-view-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self.names = {
            topic("session_events"): "session",
            topic("meter_readings"): "reading",
            topic("dead_letters"): "dead",
            topic("session_bills"): "bill",
            topic("reconciliation"): "result",
            topic("reconciliation_mismatches"): "mismatch",
            topic("fraud_alerts"): "alert",
        }
        # Start exactly at today's ends of the topics: nothing earlier, nothing missed.
        assignment = []
        for name in self.names:
            for p in self.consumer.list_topics(name, timeout=10).topics[name].partitions:
                _, high = watermarks(self.consumer, TopicPartition(name, p))
                assignment.append(TopicPartition(name, p, high))
        self.consumer.assign(assignment)
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.alert_kinds: Counter[str] = Counter()
        self.show_sessions = show_sessions
        self.shown = 0

    def poll(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for msg in self.consumer.consume(1000, 0.2):
                if msg.error() is None and msg.value() is not None and msg.key() != CLOCK_KEY:
                    self._show(self.names[msg.topic()], msg.value())

    def _show(self, kind: str, value: bytes) -> None:
        if kind == "bill":
            decode(value, SessionBill)
            self.counts["bills"] += 1
            return
        if kind == "result":
            result = decode(value, ReconciliationResult)
            self.counts["reconciled"] += 1
            self.outcomes[result.outcome] += 1
            return
        if kind == "mismatch":
            r = decode(value, ReconciliationResult)
            self.counts["mismatch publications"] += 1
            what = "CORRECTION" if r.revision else "MISMATCH"
            click.secho(
                f"  {what} {r.outcome:<29} {r.session_id or '-':<36} delta {r.delta_minor:>6} "
                f"{r.currency or ''}: {r.detail}",
                fg="green" if r.outcome == "matched" else "yellow",
            )
            return
        if kind == "alert":
            a = decode(value, FraudAlert)
            self.counts["fraud alerts"] += 1
            self.alert_kinds[a.kind] += 1
            click.secho(
                f"  ALERT {a.severity:<8} {a.kind:<30} {a.subject_type} {a.subject_id[:16]}: "
                f"{a.explanation}",
                fg="magenta",
            )
            return
        if kind == "reading":
            decode(value, MeterReading)
            self.counts["readings"] += 1
            return
        if kind == "dead":
            letter = decode(value, DeadLetter)
            self.counts["dead letters"] += 1
            self.reasons[letter.error_type] += 1
            click.secho(
                f"  DEAD LETTER {letter.original_topic}[{letter.original_partition}]"
                f"@{letter.original_offset}: {letter.reason}",
                fg="red",
            )
            return
        event = decode(value, SessionEvent)
        self.counts[f"sessions {event.kind}"] += 1
        if self.shown < self.show_sessions and event.kind in ("started", "ended"):
            self.shown += 1
            detail = (
                f"meter start {event.meter_start_wh} Wh, auth {event.auth_status or '-'}"
                if event.kind == "started"
                else f"meter stop {event.meter_stop_wh} Wh, {event.stop_reason or '-'}"
            )
            click.echo(
                f"  {event.event_time:%Y-%m-%d %H:%M} {event.station_id:>14} "
                f"{event.kind:7} {event.session_id[:14]} {event.source:16} {detail}"
            )

    def status(self) -> str:
        parts = [f"{k}: {v:,}" for k, v in sorted(self.counts.items())]
        return " | ".join(parts) or "waiting for output ..."

    def close(self) -> None:
        self.consumer.close()


@click.command("demo")
@click.option("--sessions", default=300, show_default=True, envvar="VOLTGUARD_DEMO_SESSIONS",
              help="Simulated charging sessions to send.")  # fmt: skip
@click.option("--seed", default=7, show_default=True, envvar="VOLTGUARD_DEMO_SEED",
              help="Seed of the simulated fleet.")  # fmt: skip
@click.option("--duration", default=60.0, show_default=True, envvar="VOLTGUARD_DEMO_DURATION",
              help="Seconds to watch the output before stopping (the broker keeps running).")  # fmt: skip
@click.option("--show-sessions", default=15, show_default=True, envvar="VOLTGUARD_DEMO_SHOW_SESSIONS",
              help="Session events printed one per line before only counts are shown.")  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="VOLTGUARD_KAFKA_DIR", help="Local Kafka data directory.")  # fmt: skip
def demo(
    sessions: int, seed: int, duration: float, show_sessions: int, data_dir: Path | None
) -> None:
    """Run voltguard on a local Kafka with simulated fleet traffic and show the results."""
    data_dir = data_dir or default_data_dir()
    click.secho("1/4 local Kafka", bold=True)
    kafka = LocalKafka(data_dir)
    bootstrap = kafka.start(timeout_s=120)
    click.echo(f"  broker at {bootstrap} (data in {data_dir}; `voltguard kafka down` stops it)")

    click.secho("2/4 topics", bold=True)
    states = create_topics(AdminClient({"bootstrap.servers": bootstrap}))
    click.echo(f"  {len(states)} catalog topics, {sum(s.created for s in states)} created now")

    click.secho("3/4 ingest, billing and detection workers", bold=True)
    secret = os.environ.get("VOLTGUARD_HASH_SECRET") or _hash_secret(data_dir.parent)
    settings = Settings.from_env(
        {}, bootstrap_servers=bootstrap, hash_secret=secret, instance_id="demo",
        ingest_group_id="voltguard-demo-ingest",
    )  # fmt: skip
    loop = IngestLoop(settings)
    worker = threading.Thread(target=loop.run, name="ingest", daemon=True)
    worker.start()
    billing_settings = Settings.from_env(
        {}, bootstrap_servers=bootstrap, instance_id="demo",
        billing_group_id="voltguard-demo-billing",
    )  # fmt: skip
    reference = read_reference(billing_settings)
    follower = ReferenceFollower(billing_settings, reference)
    follower.start()
    billing = BillingLoop(billing_settings, tariffs=reference.tariffs, stations=reference.stations)
    billing_worker = threading.Thread(target=billing.run, name="billing", daemon=True)
    billing_worker.start()
    detection = DetectionLoop(
        Settings.from_env(
            {}, bootstrap_servers=bootstrap, instance_id="demo",
            detection_group_id="voltguard-demo-detection",
        )
    )  # fmt: skip
    detection_worker = threading.Thread(target=detection.run, name="detection", daemon=True)
    detection_worker.start()
    view = _View(bootstrap, show_sessions=show_sessions)
    click.echo("  running (tokens hashed with the demo secret; nothing raw leaves ingest)")

    click.secho(
        f"4/4 traffic: {sessions} simulated sessions (seed {seed}) + 3 malformed frames", bold=True
    )
    sender = threading.Thread(
        target=produce_demo_traffic,
        kwargs={"bootstrap": bootstrap, "sessions": sessions, "seed": seed, "hash_secret": secret},
        name="traffic",
        daemon=True,
    )
    sender.start()
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in MALFORMED_FRAMES:
        producer.produce(topic("ocpp_frames"), value, b"DEMO-BROKEN")
    producer.flush(10)

    started = time.monotonic()
    try:
        while time.monotonic() - started < duration:
            view.poll(5.0)
            click.secho(f"  [{time.monotonic() - started:4.0f}s] {view.status()}", fg="cyan")
            if not sender.is_alive() and view.counts and time.monotonic() - started > 20:
                before = sum(view.counts.values())
                view.poll(3.0)
                if sum(view.counts.values()) == before:
                    break
    except KeyboardInterrupt:
        click.echo("interrupted")
    finally:
        loop.stop()
        billing.stop()
        detection.stop()
        worker.join(30)
        billing_worker.join(30)
        detection_worker.join(30)
        follower.stop()
        view.close()
    click.secho("summary", bold=True)
    click.echo(f"  {view.status()}")
    if view.outcomes:
        click.echo(
            "  reconciliation (every publication, corrections included): "
            + ", ".join(f"{k} {v}" for k, v in view.outcomes.most_common())
        )
        click.echo(
            "  results wait for their grace in event time (30 min after the end with "
            "payments, 7 days without: roaming settles late)"
        )
    if view.alert_kinds:
        click.echo(
            "  fraud alerts: " + ", ".join(f"{k} {v}" for k, v in view.alert_kinds.most_common())
        )
    if view.reasons:
        click.echo(
            "  dead letters by error: " + ", ".join(f"{k} {v}" for k, v in view.reasons.items())
        )
    click.echo(f"  Kafka still runs at {bootstrap}: `voltguard tail reconciliation_mismatches` to look, "
               "`voltguard kafka down` to stop it")  # fmt: skip
