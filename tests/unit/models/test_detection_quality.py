"""Rules, reconciliation and online scores against the simulator's ground truth, no broker.

The issue's targets for rule-named kinds (recall >= 0.98 and precision >= 0.95 each, with
the online detectors' alerts added) and for the subtle anomalies (PR-AUC of the online
score >= 0.7 for each kind, against sessions no label mentions) are checked here on a test
seed; the evaluation report uses seeds the tests do not.
"""

from __future__ import annotations

import pytest
from sklearn.metrics import average_precision_score

from models.evaluation import detections, evaluate
from streams.replay import Replay
from topics.codec import decode
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation
from topics.simulation.faults import ANOMALY_KINDS, FAULT_KINDS, SimLabel

SECRET = b"detection-test"


@pytest.fixture(scope="module")
def report():
    config = SimulationConfig(seed=404, sessions=1500, stations=50, fault_scale=5.0)
    records = list(Simulation(config, hash_secret=SECRET).records())
    labels = [decode(v, SimLabel) for t, _, v in records if t == "sim_labels"]
    replay = Replay.with_detection(hash_secret=SECRET).run(records)
    detection = replay.detection
    assert detection is not None
    found = detections(detection.alerts.values(), replay.results.values())
    return evaluate(found, labels, sessions=len(replay.bills)), labels, detection


def test_rule_and_reconciliation_kinds_meet_the_targets(report) -> None:
    result, labels, _ = report
    present = {lab.kind for lab in labels if lab.kind in FAULT_KINDS}
    assert len(present) >= 15, sorted(present)
    below = {
        kind: (s.recall, s.precision, s.labels, s.detections)
        for kind, s in result.kinds.items()
        if kind in present and ((s.recall or 0) < 0.98 or (s.precision or 0) < 0.95)
    }
    # capture_zero_energy on roaming sessions settles days later, after the samples are
    # gone: reconciliation finds those (overcharge of a free session), so it counts too.
    assert below == {}


def test_few_clean_sessions_are_flagged(report) -> None:
    result, _, _ = report
    assert result.clean_flag_rate < 0.005, result.false_positive_kinds


def _positives_and_negatives(labels: list[SimLabel], kind: str) -> tuple[set[str], set[str]]:
    mentioned = {s for lab in labels for s in (lab.session_id, *lab.session_ids) if s}
    positive = {
        s for lab in labels if lab.kind == kind for s in (lab.session_id, *lab.session_ids) if s
    }
    return positive, mentioned


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_online_score_ranks_the_subtle_anomalies_first(report, kind: str) -> None:
    _, labels, detection = report
    positive, mentioned = _positives_and_negatives(labels, kind)
    y, scores = [], []
    for session_id, scored in detection.scores.items():
        if session_id in positive:
            y.append(1)
        elif session_id not in mentioned:
            y.append(0)
        else:
            continue
        scores.append(scored.score)
    assert sum(y) >= 15, sum(y)
    assert average_precision_score(y, scores) >= 0.7


def test_online_alerts_are_explained_and_rarely_about_clean_sessions(report) -> None:
    _, labels, detection = report
    _, mentioned = _positives_and_negatives(labels, "")
    online = [a for a in detection.alerts.values() if a.kind == "anomaly"]
    assert online
    assert {a.detector for a in online} <= {"river-hst", "station-baseline"}
    assert all(a.model_version and a.explanation and a.evidence["top_features"] for a in online)
    clean = {a.session_id for a in online if a.session_id not in mentioned}
    assert len(clean) < 0.01 * len(detection.scores)
