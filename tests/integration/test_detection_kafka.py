"""Fraud detection on the real broker, with simulator traffic.

On a broker of its own: the simulator's traffic goes through the ingest and billing loops,
then a detection worker (a subprocess) that is killed (SIGKILL) mid-stream and restarted.
The alerts on the topic must be each alert id once, the same set as the replay's (rules,
online detectors, and the offline model the worker loaded from the registry) over the same
input, and they must find the rule-named fraud the simulator injected.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.billing import BillingLoop
from streams.commands.simulate import produce_to_kafka
from streams.ingest import IngestLoop
from streams.reference import read_reference
from streams.replay import Replay
from streams.settings import Settings
from tests.integration.helpers import produce_all, read_all
from topics.codec import decode, encode
from topics.records import DeadLetter, FraudAlert
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation
from topics.simulation.faults import SimLabel

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "detection-integration"
CONFIG = SimulationConfig(seed=1618, sessions=350, stations=25, fault_scale=6.0)


def _run(loop, idle_s: float) -> None:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=loop.run, kwargs={"max_idle_s": idle_s})
    thread.start()
    thread.join(400)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def billed(private_kafka: str) -> str:
    """Simulator -> ingest -> billing on a private broker: session features on their topic."""
    create_topics(AdminClient({"bootstrap.servers": private_kafka}))
    produce_to_kafka(CONFIG, hash_secret=SECRET.encode(), bootstrap_servers=private_kafka)
    settings = Settings.from_env(
        {}, bootstrap_servers=private_kafka, hash_secret=SECRET, instance_id="it"
    )
    _run(IngestLoop(settings), 8.0)
    reference = read_reference(settings)
    _run(BillingLoop(settings, tariffs=reference.tariffs, stations=reference.stations), 6.0)
    return private_kafka


@pytest.fixture(scope="module")
def model_in_service(billed: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An offline model fitted on the run's own features, in a registry and announced on
    model_updates, as `voltguard retrain` leaves it: the worker must load and use it."""
    from models.offline import SessionModel
    from streams.model_follower import LoadedModel
    from streams.registry import ModelRegistry
    from topics.records import SessionFeatures

    root = tmp_path_factory.mktemp("registry")
    rows = [decode(v, SessionFeatures).features for v in read_all(billed, "session_features")]
    model = SessionModel(seed=3).fit_many(rows)
    registry = ModelRegistry(root)
    update = registry.publish(
        model, model_name="session-anomaly", metrics={}, now=datetime.now(UTC)
    )
    produce_all(billed, "model_updates", [(update.model_name.encode(), encode(update))])
    return root, LoadedModel(model=registry.load(update), update=update)


def detection_process(bootstrap: str, registry: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VOLTGUARD_MODEL_REGISTRY": str(registry),
        "VOLTGUARD_INSTANCE_ID": "detection-restart",
        "VOLTGUARD_INGEST_BATCH_MAX": "10",  # many small transactions: the kill lands mid-stream
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--stage", "detection",
         "--bootstrap-servers", bootstrap, "--exit-when-idle", "6"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_killed_detection_worker_publishes_each_alert_once_and_as_replay(
    billed: str, model_in_service
) -> None:  # type: ignore[no-untyped-def]
    bootstrap = billed
    registry, loaded = model_in_service
    # Poison on every input of the stage: each goes to the dead-letter topic, nothing stops.
    produce_all(bootstrap, "session_features", [(b"s-bad", b"{not json")])
    produce_all(bootstrap, "detection_keyed", [(b"planet:mars", b"{}")])
    worker = detection_process(bootstrap, registry)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(read_all(bootstrap, "fraud_alerts", settle_s=0.0, timeout_s=2)) >= 5:
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    first_log = worker.communicate(timeout=10)[0].decode()
    at_kill = len(read_all(bootstrap, "fraud_alerts", settle_s=0.5))
    worker = detection_process(bootstrap, registry)
    out, _ = worker.communicate(timeout=400)
    assert worker.returncode == 0, out.decode()[-3000:]
    assert "restored" in out.decode(), "the restarted worker restored its state"

    alerts = [decode(v, FraudAlert) for v in read_all(bootstrap, "fraud_alerts")]
    assert 5 <= at_kill < len(alerts), f"not killed mid-stream: {first_log[-2000:]}"
    ids = [a.alert_id for a in alerts]
    assert len(ids) == len(set(ids)), "an alert was published twice"

    records = list(Simulation(CONFIG, hash_secret=SECRET.encode()).records())
    replayed = Replay.with_detection(hash_secret=SECRET.encode(), model=lambda: loaded).run(records)
    assert replayed.detection is not None
    expected = replayed.detection.alerts
    by_id = {a.alert_id: a for a in alerts}
    extra = sorted((by_id[i].kind, by_id[i].explanation) for i in set(by_id) - set(expected))
    missing = sorted(
        (expected[i].kind, expected[i].explanation) for i in set(expected) - set(by_id)
    )
    assert (extra, missing) == ([], [])

    offline = [a for a in alerts if a.detector.startswith("sklearn")]
    assert offline, "the worker scored with the model in service"
    assert {a.model_version for a in offline} == {loaded.version}

    labels = [decode(v, SimLabel) for t, _, v in records if t == "sim_labels"]
    rule_kinds = {"meter_rollback", "meter_reset", "card_testing", "cloned_token_overlap"}
    found = {a.kind for a in alerts}
    assert rule_kinds & {lab.kind for lab in labels} <= found

    letters = [decode(v, DeadLetter) for v in read_all(bootstrap, "dead_letters")]
    detection_letters = [dl for dl in letters if dl.stage == "detection"]
    assert sorted(dl.original_key for dl in detection_letters) == [b"planet:mars", b"s-bad"]
