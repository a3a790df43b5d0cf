"""Injected faults, fraud, subtle anomalies and honest oddities, each with a ground-truth label.

Every session draws at most one *kind* (one uniform draw against the cumulative rates of
:meth:`~topics.simulation.config.SimulationConfig.effective_rates`); the simulator then
builds that session (and, for some kinds, extra sessions or payments) so that it shows the
fault, and emits a :class:`SimLabel` naming the subject, the sessions, the station, the time
and the payment event ids and OCPP message ids (``"<station_id>|<uniqueId>"``) involved.

Kinds
-----
Faults and fraud the rules name (:data:`FAULT_KINDS`):

* ``cloned_token_overlap`` - the token also starts a session at another station while its
  first session is still running.
* ``cloned_token_impossible_travel`` - the token starts a session at a far station sooner
  after its previous session than anyone could drive there.
* ``meter_rollback`` / ``meter_reset`` - the register goes backwards / restarts at 0 mid-session.
* ``energy_above_capability`` - reported energy exceeds max power x duration.
* ``seqno_gap`` - OCPP 2.0.1 TransactionEvents are missing (seqNo jumps).
* ``offline_replay`` - a 2.0.1 station re-sends a finished transaction's events, offline.
* ``offline_unknown_token`` - a 2.0.1 offline session with a token the CSMS does not know.
* ``card_testing`` - a burst of small, mostly failed authorisations at one terminal.
* ``refund_abuse`` - refunds adding up to more than was captured.
* ``capture_zero_energy`` - money captured for a session that delivered no energy.
* ``missing_payment`` - a session with energy and no payment at all.
* ``orphan_payment`` - a capture naming a transaction that never happened.
* ``duplicate_capture`` - the same session captured twice.
* ``overcharge`` / ``undercharge`` - capture above / below the rated amount.
* ``preauth_shortfall`` - capture above the pre-authorised hold, without adjustment.
* ``currency_mismatch`` - paid in another currency than the tariff's.
* ``chargeback`` - the cardholder disputes the capture.

Subtle anomalies the rules do not name (:data:`ANOMALY_KINDS`, for PR-AUC evaluation):
``anomaly:energy_inflation`` (one station's meter over-reports energy by 10-25 % in some
sessions; the customer pays for the inflated energy) and ``anomaly:unusual_hours`` (three
designated tokens charge between 01:00 and 05:00 local time).

Honest oddities that must *not* be flagged (:data:`HONEST_KINDS`): zero-energy sessions
without payment, very long idle sessions that pay parking, meter clock drift of a few
seconds, late but valid events, and honest partial refunds (with a reason).

Examples
--------
>>> len(FAULT_KINDS), len(ANOMALY_KINDS), len(HONEST_KINDS)
(19, 2, 5)
>>> DEFAULT_FAULT_RATES["overcharge"]
0.003
>>> is_honest("honest:late_events"), is_honest("overcharge")
(True, False)
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from topics.records import Event

if TYPE_CHECKING:
    import numpy as np

    from topics.simulation._wire import WireSession
    from topics.simulation.payments import PaymentPlan

__all__ = [
    "ALL_KINDS",
    "ANOMALY_KINDS",
    "DEFAULT_FAULT_RATES",
    "FAULT_KINDS",
    "HONEST_KINDS",
    "PLACEMENT",
    "SimLabel",
    "apply_meter_fault",
    "apply_payment_fault",
    "apply_wire_fault",
    "is_honest",
]

FAULT_KINDS: tuple[str, ...] = (
    "cloned_token_overlap",
    "cloned_token_impossible_travel",
    "meter_rollback",
    "meter_reset",
    "energy_above_capability",
    "seqno_gap",
    "offline_replay",
    "offline_unknown_token",
    "card_testing",
    "refund_abuse",
    "capture_zero_energy",
    "missing_payment",
    "orphan_payment",
    "duplicate_capture",
    "overcharge",
    "undercharge",
    "preauth_shortfall",
    "currency_mismatch",
    "chargeback",
)
ANOMALY_KINDS: tuple[str, ...] = ("anomaly:energy_inflation", "anomaly:unusual_hours")
HONEST_KINDS: tuple[str, ...] = (
    "honest:zero_energy_no_payment",
    "honest:long_idle_parking",
    "honest:meter_clock_drift",
    "honest:late_events",
    "honest:partial_refund",
)
ALL_KINDS: tuple[str, ...] = FAULT_KINDS + ANOMALY_KINDS + HONEST_KINDS

DEFAULT_FAULT_RATES: MappingProxyType[str, float] = MappingProxyType(
    {
        "cloned_token_overlap": 0.002,
        "cloned_token_impossible_travel": 0.002,
        "meter_rollback": 0.002,
        "meter_reset": 0.001,
        "energy_above_capability": 0.002,
        "seqno_gap": 0.002,
        "offline_replay": 0.002,
        "offline_unknown_token": 0.001,
        "card_testing": 0.001,
        "refund_abuse": 0.001,
        "capture_zero_energy": 0.002,
        "missing_payment": 0.003,
        "orphan_payment": 0.002,
        "duplicate_capture": 0.002,
        "overcharge": 0.003,
        "undercharge": 0.003,
        "preauth_shortfall": 0.002,
        "currency_mismatch": 0.001,
        "chargeback": 0.002,
        "anomaly:energy_inflation": 0.005,
        "anomaly:unusual_hours": 0.003,
        "honest:zero_energy_no_payment": 0.01,
        "honest:long_idle_parking": 0.01,
        "honest:meter_clock_drift": 0.02,
        "honest:late_events": 0.01,
        "honest:partial_refund": 0.01,
    }
)
"""Per-session probability of each kind (before ``fault_scale`` and ``fault_filter``)."""

SubjectType = Literal["session", "token", "card", "station", "terminal", "payment"]


def is_honest(kind: str) -> bool:
    """Whether a label kind marks an honest oddity (which must not raise an alert)."""
    return kind.startswith("honest:")


class SimLabel(Event, kw_only=True, frozen=True):
    """Ground truth for one injected fault, anomaly or honest oddity (topic ``sim_labels``).

    ``event_id`` is the label id (deterministic), ``event_time`` when the fault happened.
    ``message_ids`` are OCPP frames as ``"<station_id>|<uniqueId>"`` (the key by which the
    adapter pairs calls and results); ``payment_event_ids`` are ``PaymentEvent.event_id``.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> label = SimLabel(event_id="l1", event_time=datetime(2024, 5, 6, tzinfo=timezone.utc),
    ...                  source="voltguard-simulator", kind="overcharge",
    ...                  subject_type="session", subject_id="s-1", session_id="s-1")
    >>> label.honest, label.session_ids
    (False, [])
    """

    kind: str
    subject_type: SubjectType
    subject_id: str
    session_id: str | None = None
    session_ids: list[str] = []
    station_id: str | None = None
    payment_event_ids: list[str] = []
    message_ids: list[str] = []
    honest: bool = False
    detail: dict[str, object] = {}


PLACEMENT: MappingProxyType[str, tuple[str | None, str | None]] = MappingProxyType(
    {
        "seqno_gap": ("ocpp201", None),
        "offline_replay": ("ocpp201", None),
        "offline_unknown_token": ("ocpp201", None),
        "capture_zero_energy": ("zero_cost", None),
        "honest:zero_energy_no_payment": ("zero_cost", None),
        "honest:long_idle_parking": ("parking", None),
        "honest:meter_clock_drift": ("no_tod", None),
        "anomaly:energy_inflation": ("anomaly", None),
        "anomaly:unusual_hours": (None, "night"),
        "cloned_token_overlap": (None, "non_card"),
        "cloned_token_impossible_travel": (None, "non_card"),
        "preauth_shortfall": (None, "hold"),
        "refund_abuse": (None, "card_fp"),
        "chargeback": (None, "card_fp"),
    }
)
"""Where a kind's session must take place: ``(station pool, driver pool)`` (None = any).

Station pools: ``ocpp201`` (seqNo and offline flags exist only in 2.0.1), ``zero_cost``
(a session without energy rates to 0, so "no payment" is right), ``parking`` (tariff with a
parking fee), ``no_tod`` (no time-of-day restrictions: clock drift cannot move energy across
a price boundary), ``anomaly`` (the station with the inflating meter). Driver pools:
``night`` (the unusual-hours token), ``non_card`` (a token that can be cloned: RFID, app,
eMAID), ``hold`` (payment with a pre-authorisation), ``card_fp`` (a card that can be refunded
or charged back).
"""


def _inflate(register_wh: list[int], factor: float) -> None:
    base = register_wh[0]
    for k in range(1, len(register_wh)):
        register_wh[k] = base + int((register_wh[k] - base) * factor)


def apply_meter_fault(
    kind: str,
    rng: np.random.Generator,
    register_wh: list[int],
    *,
    charge_end_index: int,
    duration_s: float,
    max_power_w: int,
    anomaly_factor: float,
) -> tuple[dict[str, object], list[int]] | None:
    """Falsify the reported register of a session in place, for meter kinds.

    Returns the label detail and the sample indices involved, or None when ``kind`` is not a
    meter kind or the session is too short to show it.

    >>> import numpy as np
    >>> reg = [1000, 1500, 2000, 2500, 3000]
    >>> detail, idx = apply_meter_fault("meter_reset", np.random.default_rng(0), reg,
    ...     charge_end_index=4, duration_s=240, max_power_w=50_000, anomaly_factor=1.2)
    >>> reg[idx[1]] < reg[idx[0]]
    True
    """
    n = len(register_wh)
    if kind in ("meter_rollback", "meter_reset"):
        if n < 4:
            return None
        hi = max(3, min(charge_end_index, n - 1))
        i = int(rng.integers(2, hi)) if hi > 2 else 2
        before = register_wh[i - 1]
        if kind == "meter_rollback":
            progress = register_wh[i - 1] - register_wh[0]
            back = max(50, int(progress * float(rng.uniform(0.2, 0.6))))
            delta = register_wh[i] - register_wh[i - 1] + back
            for k in range(i, n):
                register_wh[k] -= delta
            detail: dict[str, object] = {"rollback_wh": back}
        else:
            offset = register_wh[i - 1]
            for k in range(i, n):
                register_wh[k] -= offset
            detail = {}
        detail.update(register_before_wh=before, register_after_wh=register_wh[i])
        return detail, [i - 1, i]
    if kind == "energy_above_capability":
        true_wh = register_wh[-1] - register_wh[0]
        capacity_wh = max_power_w * duration_s / 3600.0
        target = capacity_wh * float(rng.uniform(1.3, 2.0))
        _inflate(register_wh, target / max(true_wh, 1))
        reported = register_wh[-1] - register_wh[0]
        return {
            "reported_wh": reported,
            "true_wh": true_wh,
            "capacity_wh": round(capacity_wh, 1),
            "max_power_w": max_power_w,
            "duration_s": duration_s,
        }, [0, n - 1]
    if kind == "anomaly:energy_inflation":
        true_wh = register_wh[-1] - register_wh[0]
        _inflate(register_wh, anomaly_factor)
        return {
            "factor": anomaly_factor,
            "true_wh": true_wh,
            "reported_wh": register_wh[-1] - register_wh[0],
        }, [0, n - 1]
    return None


def apply_wire_fault(
    kind: str, rng: np.random.Generator, ws: WireSession, *, unknown_tag: str
) -> tuple[dict[str, object], list[int]] | None:
    """Change how a session reaches the CSMS (clock, lateness, gaps, replays, token).

    Returns the label detail and the sample indices involved, or None for other kinds.
    """
    n = len(ws.times_ms)
    if kind == "honest:meter_clock_drift":
        drift_s = int(rng.integers(2, 9)) * (1 if rng.random() < 0.5 else -1)
        ws.times_ms = [t + drift_s * 1000 for t in ws.times_ms]
        return {"drift_s": drift_s}, list(range(n))
    if kind == "honest:late_events":
        first = int(rng.integers(max(1, n // 2), n)) if n > 1 else 0
        delay_ms = int(rng.integers(10 * 60, 6 * 3600)) * 1000
        reconnect = ws.recv_ms[-1] + delay_ms
        for k in range(first, n):
            ws.recv_ms[k] = reconnect + 150 * (k - first)
        if ws.station.protocol == "ocpp2.0.1":
            ws.offline_from = first
        return {"delay_s": delay_ms // 1000, "late_samples": n - first}, list(range(first, n))
    if kind == "seqno_gap":
        if n < 5:
            return None
        length = int(rng.integers(1, min(4, n - 3) + 1))
        first = int(rng.integers(1, n - 1 - length + 1))
        ws.skip = frozenset(range(first, first + length))
        return {"missing_seq_nos": list(range(first, first + length))}, [first - 1, first + length]
    if kind == "offline_replay":
        first = 0 if rng.random() < 0.5 else n // 2
        at = ws.recv_ms[-1] + int(rng.integers(30 * 60, 12 * 3600)) * 1000
        ws.replay = (first, at)
        return {"replayed_from_seq_no": first, "replay_delay_s": (at - ws.recv_ms[-1]) // 1000}, []
    if kind == "offline_unknown_token":
        ws.id_tag = unknown_tag
        ws.id_token_type = "ISO14443"
        ws.auth_status = "Unknown"
        ws.offline_from = 0
        ws.stop_with_token = False
        reconnect = ws.recv_ms[-1] + int(rng.integers(5 * 60, 2 * 3600)) * 1000
        ws.recv_ms = [reconnect + 150 * k for k in range(n)]
        return {"auth_status": "Unknown", "offline": True}, list(range(n))
    return None


def apply_payment_fault(
    kind: str,
    rng: np.random.Generator,
    plan: PaymentPlan,
    *,
    expected_minor: int,
    other_currency: str,
    day_ms: int = 86_400_000,
) -> dict[str, object] | None:
    """Edit a session's payment plan for payment kinds; the label detail, or None.

    Returns None when the kind does not apply (e.g. nothing to capture twice).

    >>> import numpy as np
    >>> from topics.simulation.payments import PaymentPlan
    >>> plan = PaymentPlan(nonce="n", session_id="s", station_id="c", transaction_id="1",
    ...     method="wallet", currency="EUR", card_fingerprint_hash=None, terminal_id=None,
    ...     auth_ms=0, capture_ms=10, hold_minor=2500, capture_minor=1000)
    >>> d = apply_payment_fault("overcharge", np.random.default_rng(0), plan,
    ...                         expected_minor=1000, other_currency="USD")
    >>> plan.capture_minor > 1000 and d["delta_minor"] > 0
    True
    """
    capture = plan.capture_minor or 0
    base: dict[str, object] = {"expected_minor": expected_minor}
    if kind == "missing_payment":
        if expected_minor <= 0:
            return None
        plan.missing = True
        return base
    if kind == "capture_zero_energy":
        plan.capture_minor = int(rng.integers(300, 2500))
        return {**base, "captured_minor": plan.capture_minor}
    if capture <= 0:
        return None
    if kind == "overcharge":
        plan.capture_minor = max(capture + 50, int(capture * float(rng.uniform(1.1, 1.6))))
    elif kind == "undercharge":
        plan.capture_minor = max(1, min(capture - 50, int(capture * float(rng.uniform(0.4, 0.9)))))
        if plan.capture_minor >= capture:
            return None
    elif kind == "duplicate_capture":
        plan.duplicate = "same" if rng.random() < 0.5 else "new"
        plan.duplicate_delay_ms = int(rng.integers(30, 7200)) * 1000
        return {**base, "amount_minor": capture, "same_payment_id": plan.duplicate == "same"}
    elif kind == "preauth_shortfall":
        if plan.hold_minor is None or capture < 2:
            return None
        plan.hold_minor = max(1, int(capture * float(rng.uniform(0.3, 0.8))))
        plan.adjust_up = False
        return {**base, "authorized_minor": plan.hold_minor, "captured_minor": capture}
    elif kind == "currency_mismatch":
        tariff_currency = plan.currency
        plan.currency = other_currency
        return {**base, "tariff_currency": tariff_currency, "payment_currency": other_currency}
    elif kind == "chargeback":
        plan.chargeback_ms = plan.capture_ms + int(rng.integers(10, 46)) * day_ms
        return {**base, "amount_minor": capture}
    elif kind == "refund_abuse":
        first = plan.capture_ms + int(rng.integers(1, 6)) * day_ms
        second = first + int(rng.integers(1, 6)) * day_ms
        extra = max(1, int(capture * float(rng.uniform(0.3, 1.0))))
        plan.refunds = [(first, capture, "customer claim"), (second, extra, "customer claim")]
        return {**base, "captured_minor": capture, "refunded_minor": capture + extra}
    elif kind == "honest:partial_refund":
        from topics.simulation.payments import REFUND_REASONS

        amount = max(1, int(capture * float(rng.uniform(0.1, 0.5))))
        reason = REFUND_REASONS[int(rng.integers(0, len(REFUND_REASONS)))]
        plan.refunds = [(plan.capture_ms + int(rng.integers(1, 11)) * day_ms, amount, reason)]
        return {**base, "refund_minor": amount, "reason": reason, "captured_minor": capture}
    else:
        return None
    return {
        **base,
        "captured_minor": plan.capture_minor,
        "delta_minor": (plan.capture_minor or 0) - expected_minor,
    }
