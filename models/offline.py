"""Offline scikit-learn session models, their explained alerts, and how retraining judges them.

Pure: no Kafka, no files, no clock (``now`` and ids are arguments). The stream stage and
``voltguard retrain`` are the shells around it.

:class:`SessionModel` scores per-session feature dicts (``SessionFeatures.features``) in
**batches**: :meth:`SessionModel.score_many` takes a list of dicts and returns a numpy array,
one score per row, in ``[0, 1]``, **high = suspicious**. It is an IsolationForest (the
anomaly score of Liu et al., ``-score_samples``: about 0.5 for an ordinary session, towards 1
for an isolated one) or, when enough sessions are labelled, a blend of that score with the
fraud probability of a HistGradientBoosting classifier trained on the labelled sessions
(``blend_weight`` of the supervised part). :meth:`SessionModel.score_one` exists for river
compatibility and goes through ``score_many``: it costs a whole sklearn call per row, so the
stream stage must not use it.

The input columns are the sorted feature names seen in training (``feature_names``), so a
feature added upstream is picked up at the next retrain without a code change; at scoring
time a missing feature takes its training median and an unknown one is ignored.

The alert threshold is a quantile of the training scores (``threshold_quantile``, 0.99 by
default: about 1 % of ordinary sessions alert), never a guess. :func:`alert_for` turns a
score over the threshold into an explained :class:`~topics.records.FraudAlert` whose
evidence lists the features furthest from their training medians.

Evaluation: :func:`is_heldout` splits sessions deterministically by a seeded hash of their
id (a session is held out in every retrain or in none, so a model in service never trained
on the rows it is judged on), :func:`average_precision` and :func:`precision_recall_at` score
against labels, and :func:`compare` decides whether a new model beats the one in service.

Examples
--------
>>> import random
>>> rng = random.Random(0)
>>> rows = [{"energy_kwh": rng.gauss(20, 4), "price_minor": rng.gauss(800, 90)}
...         for _ in range(300)]
>>> model = SessionModel(n_estimators=20, seed=1).fit_many(rows)
>>> model.feature_names
('energy_kwh', 'price_minor')
>>> scores = model.score_many([{"energy_kwh": 20.0, "price_minor": 800.0},
...                            {"energy_kwh": 95.0, "price_minor": 20.0}])
>>> bool(scores[1] > model.threshold > scores[0])
True
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import ThreadpoolController

from models.features import MODEL_INPUT_VERSION
from topics.identity import stable_id
from topics.records import AlertLabel, FraudAlert, SessionFeatures
from topics.simulation.faults import SimLabel

__all__ = [
    "ALERT_KIND",
    "Comparison",
    "RetrainOutcome",
    "SessionModel",
    "alert_for",
    "alerts_many",
    "average_precision",
    "compare",
    "is_heldout",
    "precision_recall_at",
    "retrain",
    "session_labels",
]

ALERT_KIND: Final = "session_anomaly"
"""``FraudAlert.kind`` of a model alert (the model says *unusual*, not which fraud)."""

Kind = Literal["auto", "iforest", "blend"]


class SessionModel:
    """IsolationForest (optionally blended with a supervised classifier) over session features.

    Parameters
    ----------
    kind
        ``"iforest"``: unsupervised only. ``"blend"``: IsolationForest score blended with a
        HistGradientBoosting fraud probability trained on the labelled rows (needs labels of
        both classes). ``"auto"``: blend when the training rows hold at least
        ``min_positive_labels`` fraud labels, else iforest.
    n_estimators, max_samples
        IsolationForest size (trees, rows per tree).
    threshold_quantile
        Quantile of the training scores that becomes :attr:`threshold`.
    severe_quantile
        Quantile above which an alert is ``error`` rather than ``warning``.
    blend_weight
        Weight of the supervised probability in the blended score, in [0, 1].
    min_positive_labels
        Fraud labels ``"auto"`` needs before it trains the supervised part.
    threshold_folds
        With the supervised part, the threshold comes from its out-of-fold probabilities on
        the training rows (this many folds): in-sample probabilities are overconfident, and
        a quantile of them would put the threshold where no unseen session reaches it.
    n_threads
        OpenMP threads of HistGradientBoosting while fitting and scoring. On a busy 2-core
        machine 2 threads made one fit 2.7-3.7 s against 0.5 s with 1 (spinning workers),
        so 1 is the default.
    seed
        The only source of randomness.

    Attributes (after :meth:`fit_many`)
    -----------------------------------
    feature_names
        Sorted input columns.
    model_input_version
        :data:`models.features.MODEL_INPUT_VERSION` of the training rows.
    threshold, severe_threshold
        Alert thresholds on :meth:`score_many`'s scale.
    medians, scales
        Per-feature training median and robust scale, for imputation and explanations.
    fitted_kind
        ``"iforest"`` or ``"blend"``: what was actually trained.
    fit_seconds
        Wall time of the fit (``time.perf_counter`` differences, not the clock).
    """

    def __init__(
        self,
        *,
        kind: Kind = "auto",
        n_estimators: int = 100,
        max_samples: int = 1024,
        threshold_quantile: float = 0.99,
        severe_quantile: float = 0.999,
        blend_weight: float = 0.5,
        min_positive_labels: int = 20,
        threshold_folds: int = 5,
        n_threads: int = 1,
        seed: int | None = 0,
    ) -> None:
        if not 0.0 < threshold_quantile < 1.0:
            raise ValueError(f"threshold_quantile must be in (0, 1), got {threshold_quantile}")
        if not 0.0 <= blend_weight <= 1.0:
            raise ValueError(f"blend_weight must be in [0, 1], got {blend_weight}")
        self.kind = kind
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.threshold_quantile = threshold_quantile
        self.severe_quantile = max(severe_quantile, threshold_quantile)
        self.blend_weight = blend_weight
        self.min_positive_labels = min_positive_labels
        self.threshold_folds = threshold_folds
        self.n_threads = n_threads
        self.seed = seed
        self.feature_names: tuple[str, ...] = ()
        self.model_input_version: int = MODEL_INPUT_VERSION
        self.threshold: float = math.inf
        self.severe_threshold: float = math.inf
        self.medians: np.ndarray = np.zeros(0)
        self.scales: np.ndarray = np.ones(0)
        self.fitted_kind: str | None = None
        self.fit_seconds: float = 0.0
        self.train_rows: int = 0
        self.train_positives: int = 0
        self._forest: IsolationForest | None = None
        self._classifier: HistGradientBoostingClassifier | None = None

    def __repr__(self) -> str:
        state = f"fitted={self.fitted_kind}" if self.fitted_kind else "unfitted"
        return f"SessionModel(kind={self.kind!r}, n_estimators={self.n_estimators}, {state})"

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"n_estimators": 10, "max_samples": 64, "seed": 0}

    @property
    def detector(self) -> str:
        """``FraudAlert.detector`` of this model's alerts."""
        return "sklearn-iforest+hgb" if self.fitted_kind == "blend" else "sklearn-iforest"

    # ------------------------------------------------------------------ fitting

    def fit_many(
        self,
        rows: Sequence[Mapping[str, float]],
        labels: Sequence[int | None] | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        model_input_version: int | None = None,
    ) -> SessionModel:
        """Fit on a batch of feature dicts; returns ``self``.

        Parameters
        ----------
        rows
            One feature dict per session (``SessionFeatures.features``). Not mutated.
        labels
            Optional, aligned with ``rows``: 1 fraud, 0 legitimate, None unknown. Only the
            supervised part uses them; the IsolationForest sees every row.
        feature_names
            Input columns (default: the sorted union of the rows' keys).
        model_input_version
            Recorded with the model (default: :data:`MODEL_INPUT_VERSION`).
        """
        with _threads(self.n_threads):
            return self._fit(rows, labels, feature_names, model_input_version)

    def _fit(
        self,
        rows: Sequence[Mapping[str, float]],
        labels: Sequence[int | None] | None,
        feature_names: Sequence[str] | None,
        model_input_version: int | None,
    ) -> SessionModel:
        if not rows:
            raise ValueError("fit_many needs at least one row")
        if labels is not None and len(labels) != len(rows):
            raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
        started = time.perf_counter()
        names = tuple(sorted(feature_names or {k for r in rows for k in r}))
        if not names:
            raise ValueError("fit_many needs at least one feature")
        self.feature_names = names
        if model_input_version is not None:
            self.model_input_version = model_input_version
        raw = _matrix(rows, names)
        self.medians = np.nan_to_num(np.nanmedian(raw, axis=0), nan=0.0) if raw.size else raw
        x = _impute(raw, self.medians)
        self.scales = _robust_scales(x)
        self._forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(rows)),
            random_state=self.seed,
            n_jobs=1,
        ).fit(x)
        y = [-1 if v is None else int(v) for v in (labels or [None] * len(rows))]
        known = np.array([v >= 0 for v in y])
        positives = sum(v == 1 for v in y)
        negatives = sum(v == 0 for v in y)
        self.train_rows, self.train_positives = len(rows), positives
        want_blend = self.kind == "blend" or (
            self.kind == "auto" and positives >= self.min_positive_labels
        )
        self._classifier = None
        unsupervised = -self._forest.score_samples(x)
        scores = unsupervised
        folds = min(self.threshold_folds, positives, negatives)
        if want_blend and folds >= 2:
            y_known = np.array(y)[known]
            self._classifier = self._new_classifier().fit(raw[known], y_known)
            # out-of-fold probabilities: what the classifier says of sessions it has not seen
            proba = np.zeros(len(rows))
            proba[known] = cross_val_predict(
                self._new_classifier(),
                raw[known],
                y_known,
                cv=StratifiedKFold(folds, shuffle=True, random_state=self.seed),
                method="predict_proba",
            )[:, 1]
            if (~known).any():
                proba[~known] = self._classifier.predict_proba(raw[~known])[:, 1]
            w = self.blend_weight
            scores = w * proba + (1.0 - w) * unsupervised
        elif self.kind == "blend":
            raise ValueError(
                f"kind='blend' needs at least 2 fraud and 2 legitimate labels, got "
                f"{positives} and {negatives}"
            )
        self.fitted_kind = "blend" if self._classifier is not None else "iforest"
        self.threshold = float(np.quantile(scores, self.threshold_quantile))
        self.severe_threshold = float(np.quantile(scores, self.severe_quantile))
        self.fit_seconds = time.perf_counter() - started
        return self

    # ------------------------------------------------------------------ scoring

    def _new_classifier(self) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.1, l2_regularization=1.0, random_state=self.seed
        )

    def score_many(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Scores of a batch of feature dicts: float64 array, one per row, in [0, 1].

        High means suspicious; compare with :attr:`threshold`. Missing features take their
        training median, unknown ones are ignored, rows are not mutated. This is the call
        the stream stage makes, once per batch.
        """
        if self._forest is None:
            raise RuntimeError("SessionModel.score_many before fit_many")
        if not rows:
            return np.zeros(0)
        with _threads(self.n_threads):
            return self._score_matrix(_matrix(rows, self.feature_names))

    def score_one(self, x: Mapping[str, float]) -> float:
        """river-style single score, through :meth:`score_many` (slow: use batches)."""
        return float(self.score_many([x])[0])

    def _score_matrix(self, raw: np.ndarray) -> np.ndarray:
        assert self._forest is not None
        x = _impute(raw, self.medians)
        unsupervised = -self._forest.score_samples(x)
        if self._classifier is None:
            return unsupervised
        supervised = self._classifier.predict_proba(raw)[:, 1]
        return self.blend_weight * supervised + (1.0 - self.blend_weight) * unsupervised

    def unusual(self, x: Mapping[str, float], *, top: int = 3) -> list[dict[str, float | str]]:
        """The ``top`` features of ``x`` furthest from their training medians (robust z)."""
        names = self.feature_names
        values = np.array([float(x.get(n, self.medians[i])) for i, n in enumerate(names)])
        z = (values - self.medians) / self.scales
        order = np.argsort(-np.abs(z), kind="stable")[:top]
        return [
            {
                "feature": names[i],
                "value": round(float(values[i]), 4),
                "median": round(float(self.medians[i]), 4),
                "z": round(float(z[i]), 2),
            }
            for i in order
            if z[i] != 0
        ]


_controller: ThreadpoolController | None = None


def _threads(n: int) -> Any:
    """Context limiting OpenMP threads (a cached controller: about 10 µs per use)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=n, user_api="openmp")


def _matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    nan = math.nan
    return np.array([[r.get(n, nan) for n in names] for r in rows], dtype=np.float64).reshape(
        len(rows), len(names)
    )


def _impute(raw: np.ndarray, medians: np.ndarray) -> np.ndarray:
    missing = ~np.isfinite(raw)
    if not missing.any():
        return raw
    return np.where(missing, medians, raw)


def _robust_scales(x: np.ndarray) -> np.ndarray:
    """IQR / 1.349 per column; the standard deviation where the IQR is 0; else 1."""
    if x.size == 0:
        return np.ones(x.shape[1])
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scales = (q75 - q25) / 1.349
    std = x.std(axis=0)
    scales = np.where(scales > 0, scales, std)
    return np.where(scales > 0, scales, 1.0)


# ---------------------------------------------------------------------- alerts


def alert_for(
    features: SessionFeatures,
    score: float,
    model: SessionModel,
    *,
    model_name: str,
    model_version: str,
) -> FraudAlert | None:
    """The explained alert for a session whose ``score`` reached ``model.threshold``.

    None below the threshold. The alert id is a hash of the model name and the session, so a
    redelivery, a replay or a newer version of the same model raises the same alert once.

    Examples
    --------
    >>> import random
    >>> from datetime import UTC, datetime
    >>> rng = random.Random(0)
    >>> rows = [{"energy_kwh": rng.gauss(13, 2), "price_minor": rng.gauss(500, 50)}
    ...         for _ in range(300)]
    >>> m = SessionModel(n_estimators=20, seed=0).fit_many(rows)
    >>> f = SessionFeatures(event_id="f1", event_time=datetime(2024, 5, 6, tzinfo=UTC),
    ...     source="x", session_id="s1", station_id="CP1",
    ...     features={"energy_kwh": 80.0, "price_minor": 505.0})
    >>> a = alert_for(f, m.score_one(f.features), m, model_name="sessions", model_version="v0001")
    >>> a.kind, a.detector, a.model_version, a.evidence["unusual"][0]["feature"]
    ('session_anomaly', 'sklearn-iforest', 'v0001', 'energy_kwh')
    >>> a.explanation
    'sessions v0001 scored session s1 0.723 (threshold 0.674): energy_kwh 80 (typical 13.2),
     price_minor 505 (typical 497)'
    """
    if not score >= model.threshold:
        return None
    unusual = model.unusual(features.features)
    parts = ", ".join(
        f"{u['feature']} {u['value']:.4g} (typical {u['median']:.3g})" for u in unusual
    )
    severity: Literal["warning", "error"] = (
        "error" if score >= model.severe_threshold else "warning"
    )
    return FraudAlert(
        event_id=stable_id("alert-event", ALERT_KIND, model_name, model_version, features.event_id),
        event_time=features.event_time,
        source="voltguard-models",
        alert_id=stable_id("alert", ALERT_KIND, "session", features.session_id, model_name),
        kind=ALERT_KIND,
        severity=severity,
        score=round(float(score), 6),
        subject_type="session",
        subject_id=features.session_id,
        session_id=features.session_id,
        station_id=features.station_id,
        evidence={
            "model_name": model_name,
            "score": round(float(score), 6),
            "threshold": round(model.threshold, 6),
            "threshold_quantile": model.threshold_quantile,
            "unusual": unusual,
        },
        evidence_event_ids=[features.event_id, *features.evidence_event_ids[:10]],
        explanation=(
            f"{model_name} {model_version} scored session {features.session_id} {score:.3f} "
            f"(threshold {model.threshold:.3f}): {parts or 'no single feature stands out'}"
        ),
        detector=model.detector,
        model_version=model_version,
    )


def alerts_many(
    model: SessionModel,
    batch: Sequence[SessionFeatures],
    *,
    model_name: str,
    model_version: str,
) -> tuple[np.ndarray, list[FraudAlert]]:
    """Score a batch of sessions in one :meth:`SessionModel.score_many` call; the alerts of
    those at or above the threshold, in batch order.

    >>> rows = [{"a": float(i % 10)} for i in range(100)]
    >>> m = SessionModel(n_estimators=10, seed=0).fit_many(rows)
    >>> scores, alerts = alerts_many(m, [], model_name="m", model_version="v0001")
    >>> scores.shape, alerts
    ((0,), [])
    """
    scores = model.score_many([f.features for f in batch])
    alerts = []
    for f, score in zip(batch, scores, strict=True):
        alert = alert_for(
            f, float(score), model, model_name=model_name, model_version=model_version
        )
        if alert is not None:
            alerts.append(alert)
    return scores, alerts


# ---------------------------------------------------------------------- labels


def session_labels(
    *,
    sim_labels: Iterable[SimLabel] = (),
    alert_labels: Iterable[AlertLabel] = (),
    alert_sessions: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Session id -> 1 (fraud) or 0 (legitimate) from simulator and analyst labels.

    A simulator label that is not ``honest`` marks its sessions (``session_id`` and
    ``session_ids``) as fraud, an honest oddity marks them legitimate. An analyst label is
    about an alert: ``alert_sessions`` maps the alert id to its session (from the fraud
    alerts topic); ``unsure`` labels and alerts without a session count for nothing.
    Fraud wins over legitimate when a session has both.

    >>> session_labels(alert_labels=[], alert_sessions={})
    {}
    """
    out: dict[str, int] = {}

    def mark(session: str | None, value: int) -> None:
        if session:
            out[session] = max(out.get(session, 0), value)

    for s in sim_labels:
        for session in {s.session_id, *s.session_ids}:
            mark(session, 0 if s.honest else 1)
    sessions = alert_sessions or {}
    for a in alert_labels:
        if a.label != "unsure":
            mark(sessions.get(a.alert_id), 1 if a.label == "fraud" else 0)
    return out


# ---------------------------------------------------------------------- evaluation


def is_heldout(session_id: str, *, fraction: float = 0.2, seed: int = 0) -> bool:
    """Whether a session belongs to the held-out part: a seeded hash of its id, not chance.

    >>> sum(is_heldout(f"s{i}") for i in range(10_000)) / 10_000
    0.2...
    >>> is_heldout("s1") == is_heldout("s1")
    True
    """
    digest = hashlib.blake2b(f"{seed}\x1f{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def average_precision(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Average precision (area under the precision-recall curve, step-wise); NaN without positives.

    >>> average_precision([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    1.0
    >>> average_precision([0, 0], [0.1, 0.2])
    nan
    """
    y = np.asarray(y_true)
    if y.size == 0 or not (y == 1).any():
        return math.nan
    return float(average_precision_score(y, np.asarray(scores, dtype=np.float64)))


def precision_recall_at(
    y_true: Sequence[int], scores: Sequence[float], threshold: float
) -> tuple[float, float, int]:
    """(precision, recall, alerts) of alerting on ``scores >= threshold``; NaN when undefined.

    >>> precision_recall_at([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.6], 0.5)
    (0.5, 0.5, 2)
    """
    y = np.asarray(y_true) == 1
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    hits = int((y & flagged).sum())
    alerts = int(flagged.sum())
    precision = hits / alerts if alerts else math.nan
    recall = hits / int(y.sum()) if y.any() else math.nan
    return precision, recall, alerts


@dataclass(frozen=True)
class Comparison:
    """A new model against the one in service, on the same held-out rows.

    ``better`` says whether to publish; ``reason`` says why, in one line.
    """

    new_ap: float
    current_ap: float | None
    baseline_ap: float
    margin: float
    better: bool
    reason: str
    new_precision: float = math.nan
    new_recall: float = math.nan
    new_alerts: int = 0
    heldout_rows: int = 0
    heldout_positives: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The figures for ``ModelUpdate.metrics`` (finite values only)."""
        values = {
            "heldout_ap": self.new_ap,
            "heldout_ap_current": self.current_ap if self.current_ap is not None else math.nan,
            "heldout_ap_baseline": self.baseline_ap,
            "heldout_precision_at_threshold": self.new_precision,
            "heldout_recall_at_threshold": self.new_recall,
            "heldout_alerts": float(self.new_alerts),
            "heldout_rows": float(self.heldout_rows),
            "heldout_positives": float(self.heldout_positives),
            **self.extra,
        }
        return {k: round(float(v), 6) for k, v in values.items() if math.isfinite(v)}


def compare(
    new: SessionModel,
    current: SessionModel | None,
    rows: Sequence[Mapping[str, float]],
    y_true: Sequence[int],
    *,
    margin: float = 0.01,
) -> Comparison:
    """Score ``new`` and ``current`` on the held-out ``rows`` and decide whether ``new`` wins.

    Better means: held-out average precision at least ``margin`` above the current model's,
    or, with no model in service, above the baseline (the positive rate, what scoring at
    random achieves) by ``margin``. Without a fraud label among the held-out rows nothing
    can be judged and ``better`` is False.

    >>> rows = [{"a": float(i % 10)} for i in range(100)] + [{"a": 50.0}] * 5
    >>> y = [0] * 100 + [1] * 5
    >>> m = SessionModel(n_estimators=20, seed=0).fit_many(rows)
    >>> c = compare(m, None, rows, y)
    >>> c.better, round(c.new_ap, 2), c.reason
    (True, 1.0, 'held-out AP 1.000 vs no model (baseline 0.048) + margin 0.010: better')
    >>> compare(m, m, rows, y).better
    False
    """
    y = list(y_true)
    positives = sum(v == 1 for v in y)
    baseline = positives / len(y) if y else math.nan
    if not rows or positives == 0:
        return Comparison(
            new_ap=math.nan,
            current_ap=None,
            baseline_ap=baseline,
            margin=margin,
            better=False,
            reason=f"cannot evaluate: {positives} fraud labels among {len(y)} held-out rows",
            heldout_rows=len(y),
        )
    new_scores = new.score_many(rows)
    new_ap = average_precision(y, new_scores)
    precision, recall, alerts = precision_recall_at(y, new_scores, new.threshold)
    current_ap = None if current is None else average_precision(y, current.score_many(rows))
    reference = baseline if current_ap is None else current_ap
    better = new_ap >= reference + margin
    against = (
        f"no model (baseline {baseline:.3f})" if current_ap is None else f"current {current_ap:.3f}"
    )
    return Comparison(
        new_ap=new_ap,
        current_ap=current_ap,
        baseline_ap=baseline,
        margin=margin,
        better=better,
        reason=(
            f"held-out AP {new_ap:.3f} vs {against} + margin {margin:.3f}: "
            + ("better" if better else "not better")
        ),
        new_precision=precision,
        new_recall=recall,
        new_alerts=alerts,
        heldout_rows=len(y),
        heldout_positives=positives,
    )


@dataclass(frozen=True)
class RetrainOutcome:
    """What :func:`retrain` did: the new model, how it compares, and the counts behind it."""

    model: SessionModel
    comparison: Comparison
    rows: int
    train_rows: int
    train_positives: int
    heldout_rows: int
    labelled_sessions: int
    fraud_sessions: int


def retrain(
    features: Sequence[SessionFeatures],
    labels: Mapping[str, int],
    current: SessionModel | None,
    *,
    model: SessionModel | None = None,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    margin: float = 0.01,
    unlabelled: Literal["legitimate", "unknown"] = "legitimate",
) -> RetrainOutcome:
    """Fit a model on the training part of ``features`` and compare it on the held-out part.

    Parameters
    ----------
    features
        One record per session (the latest, when a session was republished).
    labels
        Session id -> 1 fraud / 0 legitimate (:func:`session_labels`).
    current
        The model in service, or None.
    model
        The unfitted model to train (default: ``SessionModel()``).
    heldout_fraction, split_seed
        The split (:func:`is_heldout`); keep them fixed across retrains so that no model is
        judged on sessions it trained on.
    margin
        How much higher the held-out AP must be (:func:`compare`).
    unlabelled
        ``"legitimate"``: sessions without a label count as legitimate (simulator ground
        truth is complete; in production nearly every unlabelled session is honest).
        ``"unknown"``: only labelled sessions train the supervised part and are evaluated.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2024, 5, 6, tzinfo=UTC)
    >>> fs = [SessionFeatures(event_id=f"e{i}", event_time=t, source="x", session_id=f"s{i}",
    ...       station_id="CP1", features={"a": float(i % 10) if i % 50 else 99.0})
    ...       for i in range(500)]
    >>> labels = {f"s{i}": 1 for i in range(0, 500, 50)}
    >>> out = retrain(fs, labels, None, model=SessionModel(n_estimators=20))
    >>> out.train_rows + out.heldout_rows, out.fraud_sessions, out.comparison.better
    (500, 10, True)
    """
    if not features:
        raise ValueError("no session features to train on")
    model = model if model is not None else SessionModel()
    default = 0 if unlabelled == "legitimate" else None
    train, held = [], []
    for f in features:
        (
            held if is_heldout(f.session_id, fraction=heldout_fraction, seed=split_seed) else train
        ).append(f)
    if not train:
        raise ValueError(f"all {len(features)} sessions are held out; lower heldout_fraction")
    train_labels = [labels.get(f.session_id, default) for f in train]
    model.fit_many(
        [f.features for f in train],
        train_labels,
        model_input_version=max(f.model_input_version for f in train),
    )
    judged = [(f, labels.get(f.session_id, default)) for f in held]
    judged = [(f, y) for f, y in judged if y is not None]
    comparison = compare(
        model,
        current,
        [f.features for f, _ in judged],
        [int(y) for _, y in judged],
        margin=margin,
    )
    present = {f.session_id for f in features}
    return RetrainOutcome(
        model=model,
        comparison=comparison,
        rows=len(features),
        train_rows=len(train),
        train_positives=sum(y == 1 for y in train_labels),
        heldout_rows=len(held),
        labelled_sessions=sum(s in present for s in labels),
        fraud_sessions=sum(v == 1 and s in present for s, v in labels.items()),
    )
