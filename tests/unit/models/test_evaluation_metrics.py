"""The pure metrics of models/evaluation.py on cases small enough to compute by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models.evaluation import (
    Detection,
    KindScore,
    SessionScore,
    alert_curves,
    average_precision,
    evaluate,
    precision_recall,
    quantile,
    score_curves,
)
from topics.simulation.faults import SimLabel


def _label(kind: str, session: str, *, at_s: int = 0, honest: bool = False) -> SimLabel:
    return SimLabel(
        event_id=f"l-{kind}-{session}", event_time=datetime.fromtimestamp(at_s, UTC),
        source="test", kind=kind, subject_type="session", subject_id=session,
        session_id=session, honest=honest,
    )  # fmt: skip


def test_quantile_interpolates_between_order_statistics() -> None:
    assert quantile([10.0, 0.0, 20.0, 30.0], 0.5) == 15.0
    assert quantile([0.0, 100.0], 0.95) == pytest.approx(95.0)
    assert quantile([3.0, 1.0, 2.0], 1.0) == 3.0
    with pytest.raises(ValueError, match="no values"):
        quantile([], 0.5)


def test_kind_score_delay_p95() -> None:
    s = KindScore(delays_s=[float(v) for v in range(0, 101, 10)])  # 0, 10, ..., 100
    assert s.delay_s == 50.0 and s.delay_p95_s == pytest.approx(95.0)


def test_precision_recall_groups_ties_and_orders_by_score() -> None:
    p, r, t = precision_recall([0.2, 0.9, 0.5, 0.5], [False, True, True, False])
    assert t == [0.9, 0.5, 0.2]
    assert p == [1.0, 2 / 3, 0.5]
    assert r == [0.5, 1.0, 1.0]


def test_precision_recall_with_unreached_positives() -> None:
    p, r, _ = precision_recall([0.9, 0.1], [True, False], positives=4)
    assert p == [1.0, 0.5] and r == [0.25, 0.25]
    assert precision_recall([0.3], [False]) == ([], [], [])


def test_average_precision_by_hand_and_against_scikit_learn() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    truth = [True, False, True, False, False, True]
    # recall steps at ranks 1, 3, 6: 1/3 * (1 + 2/3 + 1/2)
    assert average_precision(scores, truth) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert average_precision([0.1, 0.9], [False, False]) is None
    from sklearn.metrics import average_precision_score

    tied = [0.5, 0.5, 0.9, 0.1, 0.5, 0.7]
    assert average_precision(tied, truth) == pytest.approx(average_precision_score(truth, tied))


def test_score_curves_positives_are_the_kind_negatives_the_unlabelled() -> None:
    labels = [_label("anomaly:energy_inflation", "a"), _label("overcharge", "x"),
              _label("honest:late_events", "h", honest=True)]  # fmt: skip
    scores = [
        SessionScore("a", "hst", 0.4, 0.5),  # positive, scored twice: best 0.8, flagged once
        SessionScore("a", "hst", 0.8, 0.9),
        SessionScore("b", "hst", 0.6, 0.5),  # clean, above its threshold
        SessionScore("h", "hst", 0.1, 0.5),  # honest oddity: a negative
        SessionScore("x", "hst", 0.99, 0.5),  # another fault: left out
    ]
    (curve,) = score_curves(scores, labels, kinds=["anomaly:energy_inflation"])
    assert (curve.positives, curve.negatives) == (1, 2)
    assert curve.average_precision == 1.0
    assert curve.precision_at_threshold == 0.0
    # "a" was never at or above the threshold it was scored against: only "b" is flagged.
    assert curve.recall_at_threshold == 0.0


def test_alert_curves_only_for_kinds_whose_score_measures_something() -> None:
    labels = [_label("energy_above_capability", s) for s in ("s1", "s2", "s3")]
    found = [
        Detection("energy_above_capability", ("s1",), "s1", (), 10.0, 3.0),
        Detection("energy_above_capability", ("s2",), "s2", (), 10.0, 1.5),
        Detection("energy_above_capability", ("n1",), "n1", (), 10.0, 1.3),
        Detection("meter_reset", ("s9",), "s9", (), 10.0, 1.0),
    ]
    (curve,) = alert_curves(found, [*labels, _label("meter_reset", "s9")])
    assert curve.thresholds == (3.0, 1.5, 1.3)
    assert curve.recall == (1 / 3, 2 / 3, 2 / 3)
    assert curve.precision == (1.0, 1.0, 2 / 3)
    assert curve.average_precision == pytest.approx(2 / 3)


def test_evaluate_counts_flagged_honest_oddities() -> None:
    labels = [_label("honest:late_events", "h1", honest=True),
              _label("honest:late_events", "h2", honest=True)]  # fmt: skip
    found = [Detection("seqno_gap", ("h1",), "h1", (), 5.0)]
    report = evaluate(found, labels, sessions=10)
    assert report.honest_flagged == {"honest:late_events": 1}
    assert report.clean_sessions_flagged == 0  # a labelled session is not "clean"


def test_an_online_anomaly_alert_matches_any_anomaly_kind() -> None:
    labels = [_label("anomaly:energy_inflation", "a"), _label("anomaly:unusual_hours", "b"),
              _label("meter_reset", "m")]  # fmt: skip
    found = [
        Detection("anomaly", ("a",), "a", (), 60.0, 0.9),
        Detection("anomaly", ("m",), "m", (), 60.0, 0.8),  # a fault, but not an anomaly kind
        Detection("anomaly", ("c",), "c", (), 60.0, 0.7),  # a clean session
    ]
    report = evaluate(found, labels, sessions=10)
    assert report.kinds["anomaly:energy_inflation"].recall == 1.0
    assert report.kinds["anomaly:unusual_hours"].recall == 0.0
    assert report.kinds["anomaly"].precision == pytest.approx(1 / 3)
    assert report.clean_sessions_flagged == 1 and report.false_positive_kinds == {"anomaly": 1}
