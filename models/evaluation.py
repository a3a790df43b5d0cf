"""Evaluation of detections against ground truth: precision, recall and delay per kind.

Pure. Detections are fraud alerts and reconciliation mismatches, both mapped onto the
simulator's fault kinds (:func:`detections`); labels are the simulator's
:class:`~topics.simulation.faults.SimLabel` records. A detection and a label *match* when
their kinds are equal and they are about the same thing: a shared session, the same subject
(token, terminal, payment) or a shared event id. Recall counts labels matched by some
detection, precision counts detections that match some label; the delay is the event time
from the label to its earliest matching detection. Detections about sessions no label
mentions are the false positives on clean traffic.

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

__all__ = ["OUTCOME_KINDS", "Detection", "KindScore", "Report", "detections", "evaluate"]

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
                      tuple(a.evidence_event_ids), a.event_time.timestamp())
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


@dataclass(slots=True)
class Report:
    """Per-kind scores and the false positives on sessions no label mentions."""

    kinds: dict[str, KindScore]
    sessions: int
    clean_sessions_flagged: int
    false_positive_kinds: dict[str, int]

    @property
    def clean_flag_rate(self) -> float:
        return self.clean_sessions_flagged / self.sessions if self.sessions else 0.0


def _about(label: SimLabel) -> tuple[set[str], set[str]]:
    sessions = {s for s in (label.session_id, *label.session_ids) if s}
    events = set(label.payment_event_ids)
    return sessions, events


def _matches(d: Detection, label: SimLabel, *, implied: bool = False) -> bool:
    if d.kind != label.kind and not (implied and d.kind in IMPLIED.get(label.kind, ())):
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
        hits = [d for d in by_kind.get(lab.kind, []) if _matches(d, lab)]
        if hits:
            score.labels_found += 1
            score.delays_s.append(max(0.0, min(d.at_s for d in hits) - lab.event_time.timestamp()))
    faults_by_kind: dict[str, list[SimLabel]] = {}
    for lab in faults:
        faults_by_kind.setdefault(lab.kind, []).append(lab)
    implying = [lab for lab in faults if lab.kind in IMPLIED]
    for kind, ds in by_kind.items():
        labs = faults_by_kind.get(kind, []) + implying
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
    return Report(kinds, sessions, len(flagged), fp_kinds)
