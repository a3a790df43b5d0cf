"""`voltguard evaluate` on a tiny hand-made run directory (no simulator, no replay)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from models.rules import RuleConfig, session_alerts
from streams.cli import main
from topics.codec import encode
from topics.records import SessionFeatures
from topics.simulation.faults import SimLabel

T0 = datetime(2024, 5, 6, tzinfo=UTC)


def _alert(session: str, ratio: float, at_s: int) -> bytes:
    f = SessionFeatures(
        event_id=f"f-{session}", event_time=datetime.fromtimestamp(T0.timestamp() + at_s, UTC),
        source="test", session_id=session, station_id="CP1",
        features={"energy_over_capability": ratio, "energy_kwh": 50.0, "duration_min": 60.0,
                  "connector_max_kw": 11.0},
    )  # fmt: skip
    (alert,) = session_alerts(f, RuleConfig())
    return encode(alert)


def _label(kind: str, session: str, *, honest: bool = False) -> bytes:
    label = SimLabel(
        event_id=f"l-{session}", event_time=T0, source="sim", kind=kind, subject_type="session",
        subject_id=session, session_id=session, honest=honest,
    )  # fmt: skip
    return b'{"topic":"sim_labels","key":"%s","value":%s}' % (session.encode(), encode(label))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "alerts.jsonl").write_bytes(
        b"\n".join([_alert("s1", 3.0, 120), _alert("s2", 1.5, 600), _alert("c1", 1.3, 60)]) + b"\n"
    )
    (run / "reconciliation.jsonl").write_bytes(b"")
    (run / "bills.jsonl").write_text("{}\n" * 20)
    labels = [_label("energy_above_capability", s) for s in ("s1", "s2", "s3")]
    labels += [
        _label("anomaly:unusual_hours", "u1"),
        _label("honest:late_events", "h1", honest=True),
    ]
    (run / "labels.jsonl").write_bytes(b"\n".join(labels) + b"\n")
    return run


def _scores(run: Path) -> None:
    rows = [("u1", 0.9), ("c1", 0.2), ("c2", 0.95), ("h1", 0.1), ("s1", 0.99)]
    (run / "scores.jsonl").write_text(
        "".join(
            json.dumps({"session_id": s, "station_id": "CP1", "token_hash": None,
                        "event_time": "2024-05-06T00:00:00Z", "score": v, "threshold": 0.8,
                        "detector": "hst", "model_version": "v1",
                        "parts": {"hst": v, "baseline": 1 - v}}) + "\n"
            for s, v in rows
        )
    )  # fmt: skip


def test_text_table_without_scores(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(run_dir)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "energy_above_capability" in line)
    # 3 labels, 3 alerts, 2 labels found (s1, s2), 2 right; delays 2 and 10 minutes
    assert row.split()[1:7] == ["3", "3", "0.667", "0.667", "6.0m", "9.6m"]
    assert "clean sessions flagged: 1 of 20 (5.00%)" in result.output
    assert "no scores.jsonl" in result.output


def test_json_with_scores_gives_the_anomaly_pr_auc(run_dir: Path) -> None:
    _scores(run_dir)
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    curves = {(c["kind"], c["scorer"]): c for c in summary["curves"]}
    hours = curves[("anomaly:unusual_hours", "online score")]
    # u1 (0.9) ranks below c2 (0.95); negatives c1, c2, h1 (s1 is another fault's session)
    assert (hours["positives"], hours["negatives"]) == (1, 3)
    assert hours["average_precision"] == pytest.approx(0.5)
    assert hours["precision_at_threshold"] == pytest.approx(0.5)
    assert hours["recall_at_threshold"] == 1.0
    # each part of the score gets its own curve, without a deployed threshold
    baseline = curves[("anomaly:unusual_hours", "part baseline")]
    assert baseline["average_precision"] == pytest.approx(1 / 3)  # u1 ranks third of 4
    assert baseline["precision_at_threshold"] is None
    assert curves[("energy_above_capability", "alert score")]["average_precision"] == (
        pytest.approx(2 / 3)
    )
    assert summary["false_positive_kinds"] == {"energy_above_capability": 1}
    assert summary["honest_flagged"] == {"honest:late_events": {"labels": 1, "flagged": 0}}


def test_html_report_has_every_section(run_dir: Path, tmp_path: Path) -> None:
    _scores(run_dir)
    html = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--html", str(html)])
    assert result.exit_code == 0, result.output
    text = html.read_text()
    for section in ('id="summary"', 'id="kinds"', 'id="pr-curves"', 'id="delays"',
                    'id="false-positives"', 'id="honest"'):  # fmt: skip
        assert section in text
    assert text.count("<svg") >= 4  # two PR curves, delays, false positives
    assert "precision-recall curve anomaly:unusual_hours" in text
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "alerts.jsonl").unlink(), "alerts.jsonl not found"),
        (lambda d: (d / "labels.jsonl").unlink(), "give --labels"),
        (
            lambda d: (d / "alerts.jsonl").write_text("{not json\n"),
            "alerts.jsonl:1: not a FraudAlert",
        ),
        (lambda d: (d / "labels.jsonl").write_text(""), "holds no labels"),
        (lambda d: (d / "scores.jsonl").write_text('{"score": 1}\n'), "scores.jsonl:1"),
    ],
)
def test_bad_input_exits_2_with_a_message(run_dir: Path, setup, message: str) -> None:
    setup(run_dir)
    result = CliRunner().invoke(main, ["evaluate", str(run_dir)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_labels_option_and_missing_run_dir(run_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.jsonl"
    (run_dir / "labels.jsonl").rename(moved)
    assert (
        CliRunner().invoke(main, ["evaluate", str(run_dir), "--labels", str(moved)]).exit_code == 0
    )
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a directory" in result.output
