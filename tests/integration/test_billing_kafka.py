"""Billing and reconciliation on the real broker, with simulator traffic.

On a broker of its own: the simulator's traffic goes through the ingest worker, then a billing
worker that is killed (SIGKILL) mid-stream and restarted. Its published results must be:
every billing fault with the right outcome and exact delta, no clean session mismatched,
no result published twice, and the same final set as an uninterrupted worker and as
``voltguard replay`` on the same input.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from billing.engine import Emit
from streams.admin import create_topics
from streams.billing import BillingBatch, BillingLoop
from streams.commands.simulate import produce_to_kafka
from streams.ingest import BatchResult, IngestLoop
from streams.reference import read_reference
from streams.replay import Replay
from streams.settings import Settings
from tests.integration.helpers import group_lag, read_all
from tests.simcheck import check
from topics.codec import decode
from topics.records import DeadLetter, ReconciliationResult, SessionBill
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation
from topics.simulation.faults import SimLabel

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "billing-integration"
CONFIG = SimulationConfig(seed=2718, sessions=400, stations=30, fault_scale=5.0)


@pytest.fixture(scope="module")
def topics_ready(private_kafka: str) -> str:
    create_topics(AdminClient({"bootstrap.servers": private_kafka}))
    return private_kafka


def ingest_all(bootstrap: str) -> None:
    """The simulator's whole run to Kafka, then the ingest worker over all of it."""
    summary = produce_to_kafka(CONFIG, hash_secret=SECRET.encode(), bootstrap_servers=bootstrap)
    expected = summary.frames + summary.payments
    handled = {"n": 0}
    settings = Settings.from_env(
        {}, bootstrap_servers=bootstrap, hash_secret=SECRET, instance_id="ingest-1"
    )

    by_topic: Counter[str] = Counter()

    def count(result: BatchResult) -> None:
        handled["n"] += sum(n for (t, _), n in result.counts.items() if t != "clock")
        for (t, _), n in result.counts.items():
            by_topic[t] += n

    # Runs until every record was handled, then 5 s more: the partitions' ends (and the
    # ticks they release) follow the last batch. Not an idle exit: CI runs that exited after
    # 8 s, and once after 20 s, without input counted a record or two short, and a record
    # the loop had not read by then would have been counted as lost.
    loop = IngestLoop(settings, on_batch=count)
    thread = threading.Thread(target=loop.run)
    thread.start()
    deadline = time.monotonic() + 240
    while handled["n"] < expected and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.5)
    time.sleep(5.0)
    loop.stop()
    thread.join(60)
    assert not thread.is_alive()
    if handled["n"] != expected:  # say whether records were left unread or read uncounted
        lags = {s: group_lag(bootstrap, "voltguard-ingest", s)
                for s in ("ocpp_frames", "psp_payment_events")}  # fmt: skip
        raise AssertionError(
            f"ingest handled {handled['n']} of {expected} records in 240 s (frames "
            f"{summary.frames}, payments {summary.payments}); handled by topic "
            f"{dict(by_topic)}; not committed per partition {lags}"
        )


def billing_process(bootstrap: str, group: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VOLTGUARD_BILLING_GROUP_ID": group,
        "VOLTGUARD_INSTANCE_ID": "billing-restart",
        "VOLTGUARD_INGEST_BATCH_MAX": "50",  # many small transactions: the kill lands mid-stream
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--stage", "billing",
         "--bootstrap-servers", bootstrap, "--exit-when-idle", "6"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def final(results: list[ReconciliationResult]) -> dict[str, ReconciliationResult]:
    """The latest version of each result (a key's versions share a partition, in order)."""
    latest: dict[str, ReconciliationResult] = {}
    for r in results:
        latest[r.result_id] = r
    return latest


def test_killed_billing_worker_equals_uninterrupted_run_and_replay(topics_ready: str) -> None:
    bootstrap = topics_ready
    ingest_all(bootstrap)
    worker = billing_process(bootstrap, "billing-killed")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = read_all(bootstrap, "reconciliation", settle_s=0.0, timeout_s=3)
        if len(got) >= 20:
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)  # mid-stream: its open transaction must vanish
    first_log = worker.communicate(timeout=10)[0].decode()
    at_kill = len(read_all(bootstrap, "reconciliation", settle_s=0.5))
    worker = billing_process(bootstrap, "billing-killed")  # restores its tables, finishes
    out, _ = worker.communicate(timeout=600)
    assert worker.returncode == 0, out.decode()[-3000:]
    assert "restored" in out.decode(), "the restarted worker restored its state"

    published = [decode(v, ReconciliationResult) for v in read_all(bootstrap, "reconciliation")]
    assert 20 <= at_kill < len(published), f"not killed mid-stream: {first_log[-2000:]}"
    versions = [(r.result_id, r.event_id) for r in published]
    assert len(versions) == len(set(versions)), "a result version was published twice"
    killed = final(published)
    bills = {b.session_id: b for b in map(lambda v: decode(v, SessionBill),
                                          read_all(bootstrap, "session_bills"))}  # fmt: skip

    # Ground truth: every billing fault, exact deltas, clean sessions matched, bills exact.
    sim = Simulation(CONFIG, hash_secret=SECRET.encode(), keep_truth=True)
    records = list(sim.records())
    labels = [decode(v, SimLabel) for t, _, v in records if t == "sim_labels"]
    problems, counts = check(killed.values(), labels, bills=bills, truth=sim.truth)
    assert problems == [], problems[:10]
    assert counts["faults_checked"] >= 15 and counts["clean_checked"] >= 300

    # The same final set as an uninterrupted worker (its own group, in this process) ...
    settings = Settings.from_env(
        {}, bootstrap_servers=bootstrap, billing_group_id="billing-whole", instance_id="whole"
    )
    reference = read_reference(settings)
    emitted: list[Emit] = []

    def collect(batch: BillingBatch) -> None:
        emitted.extend(batch.emitted)

    loop = BillingLoop(
        settings, tariffs=reference.tariffs, stations=reference.stations, on_batch=collect
    )
    thread = threading.Thread(target=loop.run, kwargs={"max_idle_s": 5.0})
    thread.start()
    thread.join(600)
    assert not thread.is_alive()
    whole = final([e.record for e in emitted if e.topic == "reconciliation"])  # type: ignore[misc]
    assert {k: r.event_id for k, r in whole.items()} == {k: r.event_id for k, r in killed.items()}

    # ... and as `voltguard replay` on the simulator's records, without a broker.
    replayed = Replay(hash_secret=SECRET.encode()).run(records)
    assert {k: r.event_id for k, r in replayed.results.items()} == {
        k: r.event_id for k, r in killed.items()
    }
    assert {k: b.event_id for k, b in replayed.bills.items()} == {
        k: b.event_id for k, b in bills.items()
    }
    letters = [decode(v, DeadLetter) for v in read_all(bootstrap, "dead_letters")]
    assert letters == [], [dl.reason for dl in letters[:3]]
