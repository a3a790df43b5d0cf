"""models/offline.py: batch scoring, thresholds, explanations, labels, split, AP, comparison."""

from __future__ import annotations

import math
import pickle
from datetime import UTC, datetime

import numpy as np
import pytest

from models.offline import (
    ALERT_KIND,
    SessionModel,
    alert_for,
    alerts_many,
    average_precision,
    compare,
    is_heldout,
    precision_recall_at,
    retrain,
    session_labels,
)
from tests.retrain_data import synthetic_sessions
from topics.records import AlertLabel, SessionFeatures
from topics.simulation.faults import SimLabel

T = datetime(2024, 5, 6, tzinfo=UTC)
ODD = {
    "energy_kwh": 900.0,
    "energy_over_capability": 9.0,
    "price_per_kwh_minor": 2.0,
    "captured_over_price": 5.0,
}
"""An outlier in four features. IsolationForest does not extrapolate: one absurd feature of
ten only lifts the score from about 0.37 to 0.45 here (the threshold is about 0.62), which is
why the rules, not the model, own the named checks."""


@pytest.fixture(scope="module")
def data() -> tuple[list[SessionFeatures], dict[str, int]]:
    return synthetic_sessions(1500, seed=11)


@pytest.fixture(scope="module")
def iforest(data) -> SessionModel:
    features, _ = data
    return SessionModel(kind="iforest", n_estimators=50, max_samples=256, seed=0).fit_many(
        [f.features for f in features]
    )


def test_score_many_is_a_batch_in_unit_range_and_high_for_outliers(iforest, data) -> None:
    features, _ = data
    rows = [f.features for f in features[:200]]
    scores = iforest.score_many(rows)
    assert isinstance(scores, np.ndarray) and scores.shape == (200,)
    assert ((scores > 0) & (scores <= 1)).all()
    ordinary = dict(rows[0])
    outlier = {**ordinary, **ODD}
    low, high = iforest.score_many([ordinary, outlier])
    assert high > iforest.threshold and high > low


def test_score_one_goes_through_score_many_and_mutates_nothing(iforest, data) -> None:
    features, _ = data
    x = dict(features[5].features)
    before = dict(x)
    assert iforest.score_one(x) == pytest.approx(float(iforest.score_many([x])[0]))
    assert x == before
    assert iforest.score_many([]).shape == (0,)


def test_threshold_is_the_training_quantile(data) -> None:
    features, _ = data
    rows = [f.features for f in features]
    model = SessionModel(kind="iforest", n_estimators=30, max_samples=128, threshold_quantile=0.95)
    model.fit_many(rows)
    share = float((model.score_many(rows) >= model.threshold).mean())
    assert 0.04 <= share <= 0.06
    assert model.severe_threshold >= model.threshold


def test_features_come_from_the_data_missing_take_the_median_unknown_ignored(iforest) -> None:
    assert "energy_kwh" in iforest.feature_names and list(iforest.feature_names) == sorted(
        iforest.feature_names
    )
    typical = {n: float(m) for n, m in zip(iforest.feature_names, iforest.medians, strict=True)}
    full, empty, extra = iforest.score_many([typical, {}, {**typical, "brand_new_feature": 1e9}])
    assert full == pytest.approx(empty) == pytest.approx(extra)


def test_seeded_fits_agree_and_pickling_keeps_the_scores(data) -> None:
    features, labels = data
    rows = [f.features for f in features[:600]]
    y = [labels.get(f.session_id, 0) for f in features[:600]]
    a = SessionModel(n_estimators=20, max_samples=128, seed=4).fit_many(rows, y)
    b = SessionModel(n_estimators=20, max_samples=128, seed=4).fit_many(rows, y)
    np.testing.assert_array_equal(a.score_many(rows[:50]), b.score_many(rows[:50]))
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a.score_many(rows[:50]), c.score_many(rows[:50]))
    assert a.fitted_kind == c.fitted_kind == "blend"
    assert c.threshold == a.threshold and c.feature_names == a.feature_names


def test_fit_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        SessionModel().fit_many([])
    with pytest.raises(ValueError, match="2 labels for 3 rows"):
        SessionModel().fit_many([{"a": 1.0}] * 3, [0, 1])
    with pytest.raises(ValueError, match="blend' needs at least 2 fraud"):
        SessionModel(kind="blend", n_estimators=5).fit_many([{"a": float(i)} for i in range(10)])
    with pytest.raises(ValueError, match="threshold_quantile"):
        SessionModel(threshold_quantile=1.0)
    with pytest.raises(RuntimeError, match="before fit_many"):
        SessionModel().score_many([{"a": 1.0}])


def test_auto_blends_only_with_enough_fraud_labels_and_the_blend_is_better(data) -> None:
    features, labels = data
    few = {k: v for k, v in list(labels.items())[:5]}
    small = dict(n_estimators=50, max_samples=256)
    unsupervised = retrain(features, few, None, model=SessionModel(**small))
    assert unsupervised.model.fitted_kind == "iforest"
    assert unsupervised.model.detector == "sklearn-iforest"
    blended = retrain(features, labels, None, model=SessionModel(**small))
    assert blended.model.fitted_kind == "blend"
    assert blended.model.detector == "sklearn-iforest+hgb"
    plain = retrain(features, labels, None, model=SessionModel(kind="iforest", **small))
    assert blended.comparison.new_ap > plain.comparison.new_ap + 0.2


def test_alert_for_explains_with_the_features_furthest_from_the_medians(iforest, data) -> None:
    features, _ = data
    base = features[0]
    assert alert_for(base, 0.0, iforest, model_name="m", model_version="v0001") is None
    odd = SessionFeatures(
        event_id="f-odd",
        event_time=T,
        source="test",
        session_id="s-odd",
        station_id="CP1",
        features={**base.features, **ODD},
        evidence_event_ids=["bill-1"],
    )
    score = iforest.score_one(odd.features)
    a = alert_for(odd, score, iforest, model_name="m", model_version="v0003")
    assert a is not None
    assert (a.kind, a.subject_type, a.subject_id, a.session_id) == (
        ALERT_KIND,
        "session",
        "s-odd",
        "s-odd",
    )
    assert a.detector == "sklearn-iforest" and a.model_version == "v0003"
    assert a.evidence["unusual"][0]["feature"] == "energy_kwh"
    assert a.evidence["threshold"] == pytest.approx(iforest.threshold, abs=1e-6)
    assert "energy_kwh 900 (typical" in a.explanation and "\n" not in a.explanation
    assert a.evidence_event_ids == ["f-odd", "bill-1"]
    again = alert_for(odd, score, iforest, model_name="m", model_version="v0004")
    assert again is not None and again.alert_id == a.alert_id  # one alert per session and model
    scores, alerts = alerts_many(iforest, [base, odd], model_name="m", model_version="v0003")
    assert scores.shape == (2,) and [x.session_id for x in alerts] == ["s-odd"]


def test_session_labels_from_simulator_and_analysts() -> None:
    def sim(sid: str, *, honest: bool = False, more: list[str] | None = None) -> SimLabel:
        return SimLabel(
            event_id=f"l-{sid}-{honest}",
            event_time=T,
            source="sim",
            kind="k",
            subject_type="session",
            subject_id=sid,
            session_id=sid,
            session_ids=more or [],
            honest=honest,
        )

    def analyst(alert_id: str, label: str) -> AlertLabel:
        return AlertLabel(
            event_id=f"a-{alert_id}", event_time=T, source="api", alert_id=alert_id,
            label=label, analyst="ana",
        )  # fmt: skip

    labels = session_labels(
        sim_labels=[sim("s1", more=["s2"]), sim("s3", honest=True), sim("s1", honest=True)],
        alert_labels=[analyst("a4", "fraud"), analyst("a5", "legitimate"), analyst("a6", "unsure")],
        alert_sessions={"a4": "s4", "a5": "s5", "a6": "s6"},
    )
    assert labels == {"s1": 1, "s2": 1, "s3": 0, "s4": 1, "s5": 0}


def test_heldout_split_is_seeded_stable_and_about_the_fraction() -> None:
    ids = [f"s-{i}" for i in range(5000)]
    held = [s for s in ids if is_heldout(s, fraction=0.25, seed=1)]
    assert 0.23 < len(held) / len(ids) < 0.27
    assert held == [s for s in ids if is_heldout(s, fraction=0.25, seed=1)]
    assert held != [s for s in ids if is_heldout(s, fraction=0.25, seed=2)]
    assert set(held) <= {s for s in ids if is_heldout(s, fraction=0.5, seed=1)}


def test_average_precision_and_precision_at_threshold() -> None:
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(average_precision([0, 0, 0], [0.3, 0.2, 0.1]))
    p, r, n = precision_recall_at([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], 0.75)
    assert (p, r, n) == (0.5, 0.5, 2)
    p, r, n = precision_recall_at([1, 0], [0.1, 0.2], 0.9)
    assert math.isnan(p) and r == 0.0 and n == 0


def test_retrain_holds_out_by_session_and_trains_on_the_rest(data) -> None:
    features, labels = data
    out = retrain(features, labels, None, model=SessionModel(kind="iforest", n_estimators=10))
    held = sum(is_heldout(f.session_id) for f in features)
    assert (out.heldout_rows, out.train_rows) == (held, len(features) - held)
    assert out.fraud_sessions == sum(labels.values())
    assert out.model.train_rows == out.train_rows


def test_compare_publishes_only_what_is_better_by_the_margin(data) -> None:
    features, labels = data
    rows = [f.features for f in features[:800]]
    y = [labels.get(f.session_id, 0) for f in features[:800]]
    good = SessionModel(n_estimators=30, max_samples=256).fit_many(rows, y)
    same = compare(good, good, rows, y, margin=0.0)
    assert same.better  # equal AP, zero margin
    assert not compare(good, good, rows, y, margin=0.01).better
    weak = SessionModel(kind="iforest", n_estimators=2, max_samples=4).fit_many(rows)
    beats = compare(good, weak, rows, y, margin=0.05)
    assert beats.better and beats.current_ap is not None and beats.new_ap > beats.current_ap
    assert not compare(weak, good, rows, y).better
    blind = compare(good, None, rows, [0] * len(rows))
    assert not blind.better and blind.reason.startswith("cannot evaluate: 0 fraud labels")
    metrics = beats.metrics()
    assert metrics["heldout_ap"] == pytest.approx(beats.new_ap, abs=1e-6)
    assert all(math.isfinite(v) for v in metrics.values())
