"""Evaluation of detections against ground truth: precision, recall and delay per kind.

Pure. Detections are fraud alerts and reconciliation mismatches, both mapped onto the
simulator's fault kinds (:func:`detections`); labels are the simulator's
:class:`~topics.simulation.faults.SimLabel` records. A detection and a label *match* when
their kinds are equal and they are about the same thing: a shared session, the same subject
(token, terminal, payment) or a shared event id. Recall counts labels matched by some
detection, precision counts detections that match some label; the delay is the event time
from the label to its earliest matching detection. Detections about sessions no label
mentions are the false positives on clean traffic.

Scores of the online detectors (one per scored session) give precision-recall curves
(:func:`precision_recall`, :func:`average_precision`, :func:`score_curves`): for an anomaly
kind the positives are the sessions labelled with it and the negatives the sessions no
fault label mentions (honest oddities are honest, so they count as negatives). Alerts whose
score varies (``energy_above_capability`` carries the energy ratio) give the same curve over
their own score (:func:`alert_curves`): what raising that rule's threshold would cost.

Examples
--------
>>> d = [Detection("meter_reset", ("s1",), "s1", (), 100.0)]
>>> from datetime import UTC, datetime
>>> from topics.simulation.faults import SimLabel
>>> lab = SimLabel(event_id="l1", event_time=datetime.fromtimestamp(40, UTC), source="sim",
...                kind="meter_reset", subject_type="session", subject_id="s1", session_id="s1")
>>> r = evaluate(d, [lab], sessions=10)
>>> r.kinds["meter_reset"].recall, r.kinds["meter_reset"].precision, r.kinds["meter_reset"].delay_s
(1.0, 1.0, 60.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Final

from topics.records import FraudAlert, ReconciliationResult
from topics.simulation.faults import SimLabel

__all__ = [
    "ANOMALY_ALERT",
    "OUTCOME_KINDS",
    "SCORED_ALERT_KINDS",
    "Detection",
    "KindScore",
    "PRCurve",
    "Report",
    "SessionScore",
    "alert_curves",
    "average_precision",
    "detections",
    "evaluate",
    "precision_recall",
    "quantile",
    "score_curves",
]

OUTCOME_KINDS: Final = {
    "overcharged": "overcharge",
    "undercharged": "undercharge",
    "missing_payment": "missing_payment",
    "orphan_payment": "orphan_payment",
    "duplicate_capture": "duplicate_capture",
    "capture_exceeds_authorization": "preauth_shortfall",
    "currency_mismatch": "currency_mismatch",
    "chargeback": "chargeback",
    "refund_exceeds_capture": "refund_abuse",
}
"""Reconciliation outcome -> the fault kind it detects (an overcharge of a free session is
``capture_zero_energy``). Only a result's primary outcome is a detection; the others are
its consequences (a capture made twice also exceeds the hold)."""

IMPLIED: Final = {
    "offline_unknown_token": frozenset({"missing_payment"}),
    "cloned_token_overlap": frozenset({"cloned_token_impossible_travel"}),
    "cloned_token_impossible_travel": frozenset({"cloned_token_overlap"}),
    "anomaly:energy_inflation": frozenset({"anomaly"}),
    "anomaly:unusual_hours": frozenset({"anomaly"}),
}
"""Other kinds a label's fault makes true as well. Nobody pays for a session whose token
the CSMS does not know. A cloned token is used independently of its owner, whose own
sessions then overlap the clone's or lie too far from them in too little time, whichever
kind the simulator labelled. The online detectors' ``anomaly`` alerts do not know which
subtle anomaly they found: one about a session of an ``anomaly:*`` label is right. Such a
detection is right, though the label names another kind; recall still counts only the
labelled kind."""


@dataclass(frozen=True, slots=True)
class Detection:
    """One thing the system said, reduced to what matching needs."""

    kind: str
    sessions: tuple[str, ...]
    subject_id: str
    event_ids: tuple[str, ...]
    at_s: float
    """Event time of the detection, Unix seconds."""
    score: float | None = None
    """The alert's score (None for reconciliation results)."""


def detections(
    alerts: Iterable[FraudAlert], results: Iterable[ReconciliationResult]
) -> list[Detection]:
    """Fraud alerts and (non-matched) reconciliation results as :class:`Detection`."""
    out: list[Detection] = []
    for a in alerts:
        sessions = [a.session_id] if a.session_id else []
        listed = a.evidence.get("sessions")
        if isinstance(listed, list):
            sessions += [str(s) for s in listed]
        out.append(
            Detection(a.kind, tuple(dict.fromkeys(sessions)), a.subject_id,
                      tuple(a.evidence_event_ids), a.event_time.timestamp(), a.score)
        )  # fmt: skip
    for r in results:
        kind = OUTCOME_KINDS.get(r.outcome)
        if kind is None:
            continue
        if kind == "overcharge" and r.expected_minor == 0:
            kind = "capture_zero_energy"
        subject = r.session_id or (r.payment_ids[0] if r.payment_ids else r.result_id)
        decided = (r.decided_at or r.event_time).timestamp()
        out.append(
            Detection(kind, (r.session_id,) if r.session_id else (), subject,
                      tuple(r.evidence_event_ids), decided)
        )  # fmt: skip
    return out


@dataclass(slots=True)
class KindScore:
    """Scores of one kind."""

    labels: int = 0
    detections: int = 0
    labels_found: int = 0
    detections_right: int = 0
    delays_s: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return self.labels_found / self.labels if self.labels else None

    @property
    def precision(self) -> float | None:
        return self.detections_right / self.detections if self.detections else None

    @property
    def delay_s(self) -> float | None:
        """Median detection delay in event time, seconds."""
        return median(self.delays_s) if self.delays_s else None

    @property
    def delay_p95_s(self) -> float | None:
        """95th percentile of the detection delay in event time, seconds."""
        return quantile(self.delays_s, 0.95) if self.delays_s else None


@dataclass(slots=True)
class Report:
    """Per-kind scores and the false positives on sessions no label mentions."""

    kinds: dict[str, KindScore]
    sessions: int
    clean_sessions_flagged: int
    false_positive_kinds: dict[str, int]
    honest_flagged: dict[str, int] = field(default_factory=dict)
    """Honest-oddity kind -> how many of its labels had a session some detection flagged."""

    @property
    def clean_flag_rate(self) -> float:
        return self.clean_sessions_flagged / self.sessions if self.sessions else 0.0


def _about(label: SimLabel) -> tuple[set[str], set[str]]:
    sessions = {s for s in (label.session_id, *label.session_ids) if s}
    events = set(label.payment_event_ids)
    return sessions, events


ANOMALY_ALERT: Final = "anomaly"
"""The kind of the online detectors' alerts: it names no fault, so it matches a label of
any anomaly kind (``anomaly:...``), and recall of those kinds counts it."""


MODEL_ALERT: Final = "session_anomaly"
"""The kind of the offline (retrained) model's alerts: it names no fault either, so it is
right about a session any fault label mentions (it counts in precision, not in recall)."""


def _same_kind(detected: str, labelled: str) -> bool:
    return detected in (labelled, MODEL_ALERT) or (
        detected == ANOMALY_ALERT and labelled.startswith(ANOMALY_ALERT + ":")
    )


def _matches(d: Detection, label: SimLabel, *, implied: bool = False) -> bool:
    if not _same_kind(d.kind, label.kind) and not (
        implied and d.kind in IMPLIED.get(label.kind, ())
    ):
        return False
    sessions, events = _about(label)
    return (
        bool(sessions & set(d.sessions))
        or d.subject_id == label.subject_id
        or bool(events & set(d.event_ids))
    )


def evaluate(found: Sequence[Detection], labels: Sequence[SimLabel], *, sessions: int) -> Report:
    """Score ``found`` against ``labels`` (``sessions``: how many sessions the run had)."""
    kinds: dict[str, KindScore] = {}
    by_kind: dict[str, list[Detection]] = {}
    for d in found:
        by_kind.setdefault(d.kind, []).append(d)
        kinds.setdefault(d.kind, KindScore()).detections += 1
    faults = [lab for lab in labels if not lab.honest]
    for lab in faults:
        score = kinds.setdefault(lab.kind, KindScore())
        score.labels += 1
        candidates = by_kind.get(lab.kind, [])
        if lab.kind.startswith(ANOMALY_ALERT + ":"):
            candidates = candidates + by_kind.get(ANOMALY_ALERT, [])
        hits = [d for d in candidates if _matches(d, lab)]
        if hits:
            score.labels_found += 1
            score.delays_s.append(max(0.0, min(d.at_s for d in hits) - lab.event_time.timestamp()))
    faults_by_kind: dict[str, list[SimLabel]] = {}
    for lab in faults:
        faults_by_kind.setdefault(lab.kind, []).append(lab)
    implying = [lab for lab in faults if lab.kind in IMPLIED]
    for kind, ds in by_kind.items():
        labs = faults_by_kind.get(kind, []) + implying
        if kind in (ANOMALY_ALERT, MODEL_ALERT):
            labs = [lab for lab in faults if _same_kind(kind, lab.kind)]
        kinds[kind].detections_right = sum(
            1 for d in ds if any(_matches(d, lab, implied=True) for lab in labs)
        )
    mentioned = {s for lab in labels for s in _about(lab)[0]}
    flagged: set[str] = set()
    fp_kinds: dict[str, int] = {}
    for d in found:
        unlabelled = [s for s in d.sessions if s not in mentioned]
        if d.sessions and len(unlabelled) == len(d.sessions):
            flagged.update(unlabelled)
            fp_kinds[d.kind] = fp_kinds.get(d.kind, 0) + 1
    touched = {s for d in found for s in d.sessions}
    honest: dict[str, int] = {}
    for lab in labels:
        if lab.honest:
            hit = bool(_about(lab)[0] & touched)
            honest[lab.kind] = honest.get(lab.kind, 0) + hit
    return Report(kinds, sessions, len(flagged), fp_kinds, honest)


# --------------------------------------------------------------------------- curves


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values``, interpolating linearly between order statistics.

    The same as numpy's default (``method="linear"``); ``values`` must not be empty.

    >>> quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95)
    4.8
    >>> quantile([7.0], 0.5)
    7.0
    """
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def precision_recall(
    scores: Sequence[float], truth: Sequence[bool], *, positives: int | None = None
) -> tuple[list[float], list[float], list[float]]:
    """Precision, recall and threshold at each distinct score, highest threshold first.

    An item is flagged when its score is at least the threshold; tied scores move together.
    ``positives`` is how many positives exist in all (default: those in ``truth``); more
    than that counts positives the scores never reach (an alert that never fired), so
    recall then stops short of 1. Returns empty lists when there is nothing to find.

    >>> precision_recall([0.9, 0.8, 0.7, 0.1], [True, False, True, False])
    ([1.0, 0.5, 0.6666666666666666, 0.5], [0.5, 0.5, 1.0, 1.0], [0.9, 0.8, 0.7, 0.1])
    """
    if len(scores) != len(truth):
        raise ValueError(f"{len(scores)} scores but {len(truth)} truth values")
    total = sum(truth) if positives is None else positives
    if total <= 0:
        return [], [], []
    pairs = sorted(zip(scores, truth, strict=True), key=lambda p: -p[0])
    precision: list[float] = []
    recall: list[float] = []
    thresholds: list[float] = []
    tp = fp = 0
    for i, (score, positive) in enumerate(pairs):
        tp += positive
        fp += not positive
        if i + 1 < len(pairs) and pairs[i + 1][0] == score:
            continue
        precision.append(tp / (tp + fp))
        recall.append(tp / total)
        thresholds.append(score)
    return precision, recall, thresholds


def average_precision(
    scores: Sequence[float], truth: Sequence[bool], *, positives: int | None = None
) -> float | None:
    """Area under the precision-recall step curve: the sum of ``(R_k - R_k-1) P_k``.

    The same as scikit-learn's ``average_precision_score`` when ``positives`` is not given;
    None when there are no positives.

    >>> average_precision([0.9, 0.8, 0.7, 0.1], [True, False, True, False])
    0.8333333333333333
    """
    precision, recall, _ = precision_recall(scores, truth, positives=positives)
    if not precision:
        return None
    area, before = 0.0, 0.0
    for p, r in zip(precision, recall, strict=True):
        area += (r - before) * p
        before = r
    return area


@dataclass(frozen=True, slots=True)
class SessionScore:
    """One score of one session (from a line of the replay's scores.jsonl).

    ``detector`` names the score: the line's overall score, or one of its parts.
    """

    session_id: str
    detector: str
    score: float
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class PRCurve:
    """The precision-recall curve of one score against one kind."""

    kind: str
    scorer: str
    """The detector (scores) or ``"alert score"`` (alert kinds)."""
    positives: int
    negatives: int
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    thresholds: tuple[float, ...]
    average_precision: float | None
    precision_at_threshold: float | None = None
    recall_at_threshold: float | None = None
    """At the deployed threshold (the one each scored line carried)."""


def score_curves(
    scores: Iterable[SessionScore], labels: Sequence[SimLabel], *, kinds: Sequence[str]
) -> list[PRCurve]:
    """A curve per (kind, detector): positives are the sessions labelled with the kind,
    negatives the scored sessions no fault label mentions; others are left out.

    A session scored more than once (its features were republished) counts once, with its
    highest score, and is flagged at the deployed threshold when any of its scores was above
    the threshold it was scored against (as the online detector alerts); a line without a
    threshold (the detector still warming up) flags nothing.

    >>> from datetime import UTC, datetime
    >>> lab = SimLabel(event_id="l", event_time=datetime(2024, 1, 1, tzinfo=UTC), source="x",
    ...     kind="anomaly:x", subject_type="session", subject_id="a", session_id="a")
    >>> s = [SessionScore("a", "hst", 0.9, 0.5), SessionScore("b", "hst", 0.2, 0.5),
    ...      SessionScore("c", "hst", 0.6, 0.5)]
    >>> c = score_curves(s, [lab], kinds=["anomaly:x"])[0]
    >>> c.average_precision, c.precision_at_threshold, c.recall_at_threshold
    (1.0, 0.5, 1.0)
    """
    best: dict[tuple[str, str], float] = {}
    flagged: dict[tuple[str, str], bool] = {}
    thresholded: set[str] = set()
    for s in scores:
        if s.threshold is not None:
            thresholded.add(s.detector)
        key = (s.detector, s.session_id)
        best[key] = max(best.get(key, s.score), s.score)
        hit = s.threshold is not None and s.score > s.threshold
        flagged[key] = flagged.get(key, False) or hit
    faulty = {sid for lab in labels if not lab.honest for sid in _about(lab)[0]}
    out: list[PRCurve] = []
    for kind in kinds:
        positive = {sid for lab in labels if lab.kind == kind for sid in _about(lab)[0]}
        for detector in sorted({d for d, _ in best}):
            keys = [k for k in best if k[0] == detector]
            chosen = [k for k in keys if k[1] in positive or k[1] not in faulty]
            truth = [k[1] in positive for k in chosen]
            values = [best[k] for k in chosen]
            p, r, t = precision_recall(values, truth)
            marked = [k for k in chosen if flagged[k]]
            tp = sum(k[1] in positive for k in marked)
            n_pos = sum(truth)
            deployed = detector in thresholded
            out.append(
                PRCurve(
                    kind, detector, n_pos, len(chosen) - n_pos, tuple(p), tuple(r), tuple(t),
                    average_precision(values, truth),
                    tp / len(marked) if marked else None,
                    tp / n_pos if n_pos and deployed else None,
                )
            )  # fmt: skip
    return out


SCORED_ALERT_KINDS: Final = ("energy_above_capability", "card_testing", "seqno_gap")
"""Alert kinds whose score measures what their threshold cuts (energy over capability,
failed share of a terminal's attempts, missing seqNos); other alerts score 1 or an amount."""


def alert_curves(found: Sequence[Detection], labels: Sequence[SimLabel]) -> list[PRCurve]:
    """A curve per kind of :data:`SCORED_ALERT_KINDS` whose scores vary, over the alert score.

    A detection is a true positive when it matches a label (of its kind or one it implies,
    as precision counts in :func:`evaluate`); recall is over all labels of the kind, so the
    labels no alert found keep it below 1 at every threshold.
    """
    faults = [lab for lab in labels if not lab.honest]
    implying = [lab for lab in faults if lab.kind in IMPLIED]
    by_kind: dict[str, list[Detection]] = {}
    for d in found:
        if d.score is not None and d.kind in SCORED_ALERT_KINDS:
            by_kind.setdefault(d.kind, []).append(d)
    out: list[PRCurve] = []
    for kind, ds in sorted(by_kind.items()):
        if len({d.score for d in ds}) < 2:
            continue
        labs = [lab for lab in faults if lab.kind == kind]
        if not labs:
            continue
        truth = [any(_matches(d, lab, implied=True) for lab in labs + implying) for d in ds]
        values = [float(d.score or 0.0) for d in ds]
        # Recall is over labels: a label counts as found at the best score matching it.
        label_best = []
        for lab in labs:
            hits = [float(d.score or 0.0) for d in ds if _matches(d, lab)]
            label_best.append(max(hits) if hits else None)
        p, _, t = precision_recall(values, truth, positives=max(1, sum(truth)))
        r = [sum(1 for b in label_best if b is not None and b >= th) / len(labs) for th in t]
        area, before = 0.0, 0.0
        for pk, rk in zip(p, r, strict=True):
            area += (rk - before) * pk
            before = rk
        out.append(
            PRCurve(kind, "alert score", len(labs), len(ds) - sum(truth), tuple(p), tuple(r),
                    tuple(t), area)
        )  # fmt: skip
    return out
