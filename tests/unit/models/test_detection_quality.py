"""Rules and reconciliation against the simulator's ground truth, without a broker.

The issue's targets for rule-named kinds (recall >= 0.98 and precision >= 0.95 each) are
checked here on a test seed; the evaluation report uses seeds the tests do not.
"""

from __future__ import annotations

import pytest

from models.evaluation import detections, evaluate
from streams.replay import Replay
from topics.codec import decode
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation
from topics.simulation.faults import FAULT_KINDS, SimLabel

SECRET = b"detection-test"


@pytest.fixture(scope="module")
def report():
    config = SimulationConfig(seed=404, sessions=1500, stations=50, fault_scale=5.0)
    records = list(Simulation(config, hash_secret=SECRET).records())
    labels = [decode(v, SimLabel) for t, _, v in records if t == "sim_labels"]
    replay = Replay.with_detection(hash_secret=SECRET).run(records)
    assert replay.detection is not None
    found = detections(replay.detection.alerts.values(), replay.results.values())
    return evaluate(found, labels, sessions=len(replay.bills)), labels


def test_rule_and_reconciliation_kinds_meet_the_targets(report) -> None:
    result, labels = report
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
    result, _ = report
    assert result.clean_flag_rate < 0.005, result.false_positive_kinds
