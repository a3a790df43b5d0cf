"""`voltguard retrain` from files into a registry, without Kafka (--no-announce)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from click.testing import CliRunner

from streams.cli import main
from streams.registry import ModelRegistry
from tests.retrain_data import synthetic_sessions, write_files
from topics.records import AlertLabel, FraudAlert

SMALL = ["--n-estimators", "30", "--max-samples", "256"]


def retrain(registry: Path, *args: str) -> dict:
    result = CliRunner().invoke(
        main,
        ["retrain", "--registry", str(registry), "--no-announce", "--format", "json", *args],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_publishes_when_better_and_nothing_when_not(tmp_path: Path) -> None:
    features, labels = synthetic_sessions(1200, seed=5)
    f, lab = write_files(tmp_path / "in", features, labels)
    reg = tmp_path / "reg"
    files = ["--features", str(f), "--labels", str(lab), *SMALL]

    weak = retrain(reg, *files, "--model", "iforest")
    assert weak["published"] and weak["decision"] == "published v0001"
    assert weak["current_version"] is None and weak["model"] == "iforest"
    assert weak["heldout_ap_new"] > weak["heldout_ap_baseline"] + 0.01

    dry = retrain(reg, *files, "--dry-run")
    assert not dry["published"] and dry["decision"] == "dry run: nothing published (would publish)"
    assert ModelRegistry(reg).versions("session-anomaly") == ["v0001"]

    better = retrain(reg, *files)
    assert better["model"] == "blend" and better["current_version"] == "v0001"
    assert better["heldout_ap_new"] > better["heldout_ap_current"] + 0.01
    assert better["decision"] == "published v0002"
    assert better["model_update"]["replaces"] == "v0001"

    again = retrain(reg, *files)  # the same data and seed: the same model, not better
    assert not again["published"] and again["decision"] == "not published"
    assert again["heldout_ap_new"] == again["heldout_ap_current"]
    assert "not better" in again["reason"]
    registry = ModelRegistry(reg)
    assert registry.versions("session-anomaly") == ["v0001", "v0002"]
    assert registry.current("session-anomaly").version == "v0002"


def test_analyst_labels_reach_their_sessions_through_the_alerts(tmp_path: Path) -> None:
    features, labels = synthetic_sessions(800, seed=6)
    f, _ = write_files(tmp_path / "in", features, {})
    enc = msgspec.json.Encoder().encode
    at = features[0].event_time
    alerts, verdicts = [], []
    for sid in labels:
        alerts.append(
            FraudAlert(event_id=f"e-{sid}", event_time=at, source="rules", alert_id=f"a-{sid}",
                       kind="k", severity="warning", score=1.0, subject_type="session",
                       subject_id=sid, session_id=sid, explanation="x", detector="rules")
        )  # fmt: skip
        verdicts.append(
            AlertLabel(event_id=f"l-{sid}", event_time=at, source="api", alert_id=f"a-{sid}",
                       label="fraud", analyst="ana")
        )  # fmt: skip
    (tmp_path / "alerts.jsonl").write_bytes(b"".join(enc(a) + b"\n" for a in alerts))
    (tmp_path / "verdicts.jsonl").write_bytes(
        b"".join(
            enc({"topic": "alert_labels", "key": v.alert_id, "value": v}) + b"\n" for v in verdicts
        )
    )
    out = retrain(
        tmp_path / "reg",
        "--features", str(f),
        "--labels", str(tmp_path / "verdicts.jsonl"),
        "--alerts", str(tmp_path / "alerts.jsonl"),
        "--dry-run", *SMALL,
    )  # fmt: skip
    assert out["fraud_sessions"] == len(labels) and out["labelled_sessions"] == len(labels)


def test_a_bad_label_line_names_file_and_line(tmp_path: Path) -> None:
    features, _ = synthetic_sessions(50, seed=7)
    f, _ = write_files(tmp_path, features, {})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    result = CliRunner().invoke(
        main,
        ["retrain", "--registry", str(tmp_path / "r"), "--no-announce",
         "--features", str(f), "--labels", str(bad)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"{bad}:1: neither a simulator label" in result.output
