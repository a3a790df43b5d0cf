"""`voltguard retrain` and the model follower on the real broker.

Retrain from files publishes a ModelUpdate on the model updates topic; a follower that is
already running swaps the new version in without a restart; a retrain that is not better
publishes nothing; a version whose file does not match its digest is refused and the old
model keeps serving. A second test reads the inputs from the Kafka topics.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient

from models.offline import SessionModel
from streams.admin import create_topics
from streams.cli import main
from streams.model_follower import ModelFollower, ModelHolder
from streams.registry import ModelRegistry
from streams.retrain import announce
from streams.settings import Settings
from tests.integration.helpers import produce_all, read_all
from tests.retrain_data import synthetic_sessions, write_files
from topics.catalog import CATALOG
from topics.codec import decode, encode
from topics.records import AlertLabel, FraudAlert, ModelUpdate
from topics.simulation.faults import SimLabel

pytestmark = pytest.mark.kafka

SHORTS = ("model_updates", "session_features", "alert_labels", "fraud_alerts", "sim_labels")
SMALL = ["--n-estimators", "30", "--max-samples", "256"]


@pytest.fixture
def fresh_topics(kafka_admin: AdminClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """New, empty topics for this test in place of the catalog's real ones."""
    suffix = uuid.uuid4().hex[:8]
    specs = {
        s: dataclasses.replace(CATALOG[s], name=f"{CATALOG[s].name}.test-{suffix}") for s in SHORTS
    }
    create_topics(kafka_admin, specs=specs)
    for short, spec in specs.items():
        monkeypatch.setitem(CATALOG, short, spec)
    yield
    kafka_admin.delete_topics([spec.name for spec in specs.values()])


def retrain(bootstrap: str, registry: Path, *args: str) -> dict:
    result = CliRunner().invoke(
        main,
        ["retrain", "--bootstrap-servers", bootstrap, "--registry", str(registry),
         "--format", "json", *SMALL, *args],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def updates_on_topic(bootstrap: str) -> list[ModelUpdate]:
    return [decode(v, ModelUpdate) for v in read_all(bootstrap, "model_updates", settle_s=1.0)]


def test_retrain_publishes_and_a_running_follower_swaps_without_restart(
    kafka_bootstrap: str, fresh_topics: None, tmp_path: Path
) -> None:
    features, labels = synthetic_sessions(1200, seed=21)
    f, lab = write_files(tmp_path / "in", features, labels)
    files = ["--features", str(f), "--labels", str(lab)]
    reg_dir = tmp_path / "registry"
    settings = Settings.from_env({}, bootstrap_servers=kafka_bootstrap)

    first = retrain(kafka_bootstrap, reg_dir, *files, "--model", "iforest")
    assert first["decision"] == "published v0001" and first["announced"]

    registry = ModelRegistry(reg_dir)
    holder = ModelHolder()
    follower = ModelFollower(
        settings, registry, holder, model_name="session-anomaly", poll_timeout_s=0.2
    )
    follower.start(timeout_s=30)
    try:
        loaded = holder.current()
        assert loaded is not None and loaded.version == "v0001"  # read whole at start
        assert loaded.model.fitted_kind == "iforest"

        second = retrain(kafka_bootstrap, reg_dir, *files)
        assert second["decision"] == "published v0002", second
        assert holder.wait_for_version("v0002", timeout_s=20), holder.current()
        assert loaded.version == "v0001"  # what a batch held is untouched by the swap
        now = holder.current()
        assert now.model.fitted_kind == "blend" and now.update.replaces == "v0001"
        scores, alerts = now.score_batch(features[:300])
        assert scores.shape == (300,)
        assert alerts and {a.model_version for a in alerts} == {"v0002"}

        third = retrain(kafka_bootstrap, reg_dir, *files)
        assert third["decision"] == "not published" and not third["announced"]
        on_topic = updates_on_topic(kafka_bootstrap)
        assert [u.version for u in on_topic] == ["v0001", "v0002"]
        assert on_topic[1].metrics["heldout_ap"] == pytest.approx(second["heldout_ap_new"], 1e-3)

        # a version whose file does not match its digest: refused, v0002 keeps serving
        bad = registry.publish(
            SessionModel(n_estimators=5).fit_many([f.features for f in features[:100]]),
            model_name="session-anomaly",
            metrics={},
            now=features[0].event_time,
            promote=False,
        )
        (reg_dir / bad.artifact).write_bytes(b"not the announced bytes")
        announce(settings, bad)
        deadline = time.monotonic() + 20
        while follower.rejected < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert follower.rejected == 1
        assert holder.current().version == "v0002" and follower.loaded == 2
    finally:
        follower.stop()
    assert not follower.running


def test_retrain_reads_features_labels_and_alerts_from_kafka(
    kafka_bootstrap: str, fresh_topics: None, tmp_path: Path
) -> None:
    features, labels = synthetic_sessions(600, seed=22)
    at = features[0].event_time
    by_analysts, by_simulator = sorted(labels)[::2], sorted(labels)[1::2]
    alerts = [
        FraudAlert(event_id=f"e-{sid}", event_time=at, source="rules", alert_id=f"a-{sid}",
                   kind="k", severity="warning", score=1.0, subject_type="session",
                   subject_id=sid, session_id=sid, explanation="x", detector="rules")
        for sid in by_analysts
    ]  # fmt: skip
    truth = [
        SimLabel(event_id=f"t-{sid}", event_time=at, source="sim", kind="k",
                 subject_type="session", subject_id=sid, session_id=sid)
        for sid in by_simulator
    ]  # fmt: skip
    verdicts = [
        AlertLabel(event_id=f"l-{a.alert_id}", event_time=at, source="api",
                   alert_id=a.alert_id, label="fraud", analyst="ana")
        for a in alerts
    ]  # fmt: skip
    produce_all(
        kafka_bootstrap, "session_features", [(f.session_id.encode(), encode(f)) for f in features]
    )
    produce_all(kafka_bootstrap, "fraud_alerts", [(a.alert_id.encode(), encode(a)) for a in alerts])
    produce_all(
        kafka_bootstrap, "alert_labels", [(v.alert_id.encode(), encode(v)) for v in verdicts]
    )
    produce_all(kafka_bootstrap, "sim_labels", [(t.subject_id.encode(), encode(t)) for t in truth])

    analysts_only = retrain(kafka_bootstrap, tmp_path / "registry", "--dry-run")
    assert analysts_only["fraud_sessions"] == len(by_analysts) < len(labels)
    out = retrain(
        kafka_bootstrap, tmp_path / "registry", "--model", "iforest", "--kafka-sim-labels"
    )
    assert out["rows"] == len(features)
    assert out["fraud_sessions"] == out["labelled_sessions"] == len(labels)
    assert out["decision"] == "published v0001"
    assert [u.version for u in updates_on_topic(kafka_bootstrap)] == ["v0001"]
