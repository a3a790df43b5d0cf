"""Checks of billing output against the simulator's ground truth (shared by unit and
integration tests): every billing fault found with its outcome and exact delta, no clean
session with a mismatch, every bill equal to the simulated CSMS's price."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from topics.records import ReconciliationResult, SessionBill
from topics.simulation.engine import SessionTruth
from topics.simulation.faults import SimLabel

Detail = Mapping[str, Any]

BILLING_FAULTS: dict[str, tuple[str, Callable[[Detail], int]]] = {
    "overcharge": ("overcharged", lambda d: d["delta_minor"]),
    "undercharge": ("undercharged", lambda d: d["delta_minor"]),
    "missing_payment": ("missing_payment", lambda d: -d["expected_minor"]),
    "duplicate_capture": ("duplicate_capture", lambda d: d["amount_minor"]),
    "preauth_shortfall": (
        "capture_exceeds_authorization",
        lambda d: d["captured_minor"] - d["authorized_minor"],
    ),
    "currency_mismatch": ("currency_mismatch", lambda d: -d["expected_minor"]),
    "chargeback": ("chargeback", lambda d: -d["amount_minor"]),
    "refund_abuse": ("refund_exceeds_capture", lambda d: d["captured_minor"] - d["refunded_minor"]),
    "capture_zero_energy": ("overcharged", lambda d: d["captured_minor"]),
    "orphan_payment": ("orphan_payment", lambda d: d["amount_minor"]),
}
"""Simulator fault kind -> (reconciliation outcome, expected delta from the label detail)."""


def check(
    results: Iterable[ReconciliationResult],
    labels: Iterable[SimLabel],
    *,
    bills: Mapping[str, SessionBill] | None = None,
    truth: Mapping[str, SessionTruth] | None = None,
) -> tuple[list[str], dict[str, int]]:
    """``(problems, counts)``: an empty problem list means everything was right."""
    results = list(results)
    labels = list(labels)
    by_session = {r.session_id: r for r in results if r.session_id}
    by_event: dict[str, ReconciliationResult] = {}
    for r in results:
        for event_id in r.evidence_event_ids:
            by_event[event_id] = r
    problems: list[str] = []
    counts = {"faults_checked": 0, "clean_checked": 0, "bills_checked": 0}
    labelled = {lab.session_id for lab in labels if lab.session_id}
    labelled |= {s for lab in labels for s in lab.session_ids}
    for lab in labels:
        if lab.kind not in BILLING_FAULTS:
            continue
        outcome, delta = BILLING_FAULTS[lab.kind]
        result = by_session.get(lab.session_id) if lab.session_id else None
        if result is None:
            result = next((by_event[e] for e in lab.payment_event_ids if e in by_event), None)
        counts["faults_checked"] += 1
        if result is None:
            problems.append(f"{lab.kind} {lab.subject_id}: no reconciliation result")
        elif result.outcome != outcome or result.delta_minor != delta(lab.detail):
            problems.append(
                f"{lab.kind} {lab.subject_id}: got {result.outcome} {result.delta_minor}, "
                f"want {outcome} {delta(lab.detail)} ({result.detail})"
            )
    honest = {lab.session_id for lab in labels if lab.honest and lab.session_id}
    for r in results:
        sid = r.session_id
        if sid is None or (sid in labelled and sid not in honest):
            continue
        counts["clean_checked"] += 1
        if r.outcome != "matched":
            problems.append(f"clean session {sid}: {r.outcome} {r.delta_minor} ({r.detail})")
    if truth is not None:
        for sid in truth:
            if sid not in by_session:
                problems.append(f"session {sid} ({truth[sid].kind}): no reconciliation result")
    if bills is not None and truth is not None:
        for sid, t in truth.items():
            bill = bills.get(sid)
            counts["bills_checked"] += 1
            if bill is None:
                problems.append(f"session {sid} ({t.kind}): no bill")
            elif (bill.total_minor, bill.currency) != (t.expected_minor, t.currency):
                problems.append(
                    f"session {sid} ({t.kind}): bill {bill.total_minor} {bill.currency}, "
                    f"simulated CSMS {t.expected_minor} {t.currency}"
                )
    return problems, counts
