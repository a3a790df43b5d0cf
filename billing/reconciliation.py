"""Reconciliation: a session's bill against the money that moved for it (DESIGN.md).

Pure. :func:`reconcile` looks at one *case* (a session and its payments, or payments that
found no session) and returns a :class:`Verdict`: every finding, the most serious one, the
amounts behind them and the event ids. When a verdict is due is the caller's business
(:func:`verdict_due_ms`, on the event-time watermark); the only time the verdict itself
depends on is the watermark, for authorisations that expired uncaptured.

Findings and their delta (``delta_minor``)
------------------------------------------
Amounts are summed per payment (``captured`` adds every capture, ``authorized`` takes each
payment's last authorised or adjusted hold) and then over the case's payments.

====================================  =========================================  ==================
finding                               when                                       delta
====================================  =========================================  ==================
currency_mismatch                     money moved in another currency than the   -expected
                                      bill's (then no amount is compared)
refund_exceeds_capture                refunded > captured                        captured - refunded
duplicate_capture                     two captures of the same amount and        captured - expected
                                      captured > expected
chargeback                            a chargeback was opened                    -disputed
capture_exceeds_authorization         a payment captured more than its hold      captured - authorized
overcharged / undercharged            captured above / below the bill            captured - expected
missing_payment                       nothing captured for a bill above 0        -expected
authorization_expired                 a hold neither captured nor released       -expected
                                      within ``auth_validity_s``
orphan_payment                        money captured with no session             captured - refunded
unrated                               the session could not be rated             0
matched                               none of the above                          0
====================================  =========================================  ==================

Refunds below the capture are legitimate (goodwill, compensation): they are reported in
``refunded_minor`` but are not a finding. The primary ``outcome`` is the first finding in
the order of the table.

Examples
--------
>>> cfg = ReconciliationConfig()
>>> pay = [PaymentRecord("e1", "p1", "captured", 1490, "EUR", 1_000, "card")]
>>> v = reconcile(Expected("s1", 1234, "EUR", ("bill",)), pay, watermark_ms=10**12, config=cfg)
>>> v.outcome, v.delta_minor, v.captured_minor, v.evidence_event_ids
('overcharged', 256, 1490, ['bill', 'e1'])
>>> reconcile(Expected("s1", 1490, "EUR", ()), pay, watermark_ms=0, config=cfg).outcome
'matched'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from billing.exceptions import BillingError

__all__ = [
    "PRIORITY",
    "Expected",
    "PaymentRecord",
    "ReconciliationConfig",
    "Verdict",
    "reconcile",
    "verdict_due_ms",
]

PRIORITY: Final = (
    "unrated",
    "currency_mismatch",
    "refund_exceeds_capture",
    "duplicate_capture",
    "chargeback",
    "capture_exceeds_authorization",
    "overcharged",
    "undercharged",
    "missing_payment",
    "authorization_expired",
    "orphan_payment",
    "matched",
)
"""Outcomes from the most serious to the least: the first finding is the result's outcome."""


class ConfigError(BillingError, ValueError):
    """A reconciliation setting is out of range."""


@dataclass(frozen=True, slots=True)
class ReconciliationConfig:
    """Grace periods, all in seconds of event time (the watermark, never the wall clock).

    Parameters
    ----------
    bill_grace_s
        After a session ends, how long late meter values may still arrive before the bill
        is published.
    payment_grace_s
        After a session ends, how long its payments (captures follow the stop within
        seconds) may take before the verdict, when some payment event has been seen.
    unpaid_grace_s
        The same when no payment event at all has been seen: card, wallet and prepaid
        sessions are authorised before they start, so only a roaming settlement (days
        later) can still come. Then ``missing_payment``.
    orphan_grace_s
        How long a payment may wait for its session before it is an ``orphan_payment``.
    auth_validity_s
        How long an authorisation hold lives; one neither captured nor released by then
        is ``authorization_expired``.
    sample_retention_s
        After the end, how long a session's meter samples are kept (late readings can still
        correct the bill); later readings go to the dead-letter topic.
    retention_s
        How long a reconciled case is kept after its last event (refunds and chargebacks
        months later still correct it); then it is forgotten.
    """

    bill_grace_s: int = 120
    payment_grace_s: int = 1800
    unpaid_grace_s: int = 7 * 86_400
    orphan_grace_s: int = 3600
    auth_validity_s: int = 7 * 86_400
    sample_retention_s: int = 86_400
    retention_s: int = 180 * 86_400

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.bill_grace_s > self.payment_grace_s:
            raise ConfigError("bill_grace_s: must not exceed payment_grace_s")
        if self.sample_retention_s < self.unpaid_grace_s and self.sample_retention_s < (
            self.bill_grace_s
        ):
            raise ConfigError("sample_retention_s: must be at least bill_grace_s")


class PaymentRecord(msgspec.Struct, array_like=True, frozen=True):
    """One payment event as a case keeps it (compact; ``at_ms`` is its event time)."""

    event_id: str
    payment_id: str
    kind: str
    amount_minor: int
    currency: str
    at_ms: int
    method: str
    card: str | None = None
    """Keyed hash of the card fingerprint, when the PSP gave one."""


@dataclass(frozen=True, slots=True)
class Expected:
    """What the session should have cost: the bill's total and the ids behind it."""

    session_id: str
    amount_minor: int
    currency: str
    event_ids: tuple[str, ...]
    unrated: str | None = None
    """Why the session could not be rated (then ``amount_minor`` is 0)."""


@dataclass(slots=True)
class Verdict:
    """The content of a reconciliation result (ids and revision are the caller's)."""

    outcome: str
    outcomes: list[str]
    currency: str | None
    expected_minor: int
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    delta_minor: int
    payment_ids: list[str]
    evidence_event_ids: list[str]
    detail: str
    deltas: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Payment:
    authorized: int | None = None
    authorized_at: int | None = None
    captures: list[int] = field(default_factory=list)
    refunded: int = 0
    voided: int = 0
    disputed: int = 0


def _per_payment(payments: Sequence[PaymentRecord]) -> dict[str, _Payment]:
    out: dict[str, _Payment] = {}
    for p in payments:
        acc = out.setdefault(p.payment_id, _Payment())
        kind = p.kind
        if kind in ("authorized", "auth_adjusted"):
            acc.authorized = p.amount_minor
            if acc.authorized_at is None:
                acc.authorized_at = p.at_ms
        elif kind == "captured":
            acc.captures.append(p.amount_minor)
        elif kind == "refunded":
            acc.refunded += p.amount_minor
        elif kind == "voided":
            acc.voided += p.amount_minor
        elif kind == "chargeback_opened":
            acc.disputed += p.amount_minor
    return out


_KIND_ORDER: Final = {
    k: n
    for n, k in enumerate(
        ("authorized", "auth_adjusted", "captured", "voided", "refunded", "chargeback_opened")
    )
}


def _ordered(payments: Sequence[PaymentRecord]) -> list[PaymentRecord]:
    """Time order; at the same instant, the lifecycle order of the kinds."""
    return sorted(payments, key=lambda p: (p.at_ms, _KIND_ORDER.get(p.kind, 9), p.event_id))


def reconcile(
    expected: Expected | None,
    payments: Sequence[PaymentRecord],
    *,
    watermark_ms: int,
    config: ReconciliationConfig,
) -> Verdict | None:
    """The verdict on one case; None when there is nothing to say.

    ``expected`` None means the payments found no session: an ``orphan_payment`` if money
    was captured, an expired hold if one was left open, otherwise (failed or released
    attempts) nothing.
    """
    ordered = _ordered(payments)
    per = _per_payment(ordered)
    authorized = sum(a.authorized or 0 for a in per.values())
    captured = sum(sum(a.captures) for a in per.values())
    refunded = sum(a.refunded for a in per.values())
    disputed = sum(a.disputed for a in per.values())
    captures = [c for a in per.values() for c in a.captures]
    expired = [
        pid
        for pid, a in per.items()
        if a.authorized is not None
        and not a.captures
        and a.voided < a.authorized
        and a.authorized_at is not None
        and watermark_ms >= a.authorized_at + config.auth_validity_s * 1000
    ]
    money = [p for p in ordered if p.kind not in ("failed",)]
    currencies = sorted({p.currency for p in money})
    expected_minor = expected.amount_minor if expected else 0
    findings: dict[str, int] = {}

    if expected is None:
        currency = currencies[0] if currencies else None
        if captured > 0:
            findings["orphan_payment"] = captured - refunded
        if expired:
            findings["authorization_expired"] = 0
        if not findings:
            return None
    else:
        currency = expected.currency
        if expected.unrated is not None:
            findings["unrated"] = 0
        elif any(c != expected.currency for c in currencies):
            findings["currency_mismatch"] = -expected_minor
            # amounts are reported in the bill's currency only; the rest is in the detail
            same = _per_payment([p for p in ordered if p.currency == expected.currency])
            authorized = sum(a.authorized or 0 for a in same.values())
            captured = sum(sum(a.captures) for a in same.values())
            refunded = sum(a.refunded for a in same.values())
        else:
            if refunded > captured:
                findings["refund_exceeds_capture"] = captured - refunded
            duplicate = len(captures) != len(set(captures)) and captured > expected_minor
            if duplicate:
                findings["duplicate_capture"] = captured - expected_minor
            if disputed > 0:
                findings["chargeback"] = -disputed
            over_auth = [
                a
                for a in per.values()
                if a.authorized is not None and sum(a.captures) > a.authorized
            ]
            if over_auth:
                findings["capture_exceeds_authorization"] = sum(
                    sum(a.captures) - (a.authorized or 0) for a in over_auth
                )
            if not duplicate:
                if captured > expected_minor:
                    findings["overcharged"] = captured - expected_minor
                elif 0 < captured < expected_minor:
                    findings["undercharged"] = captured - expected_minor
                elif captured == 0 and expected_minor > 0 and not expired:
                    findings["missing_payment"] = -expected_minor
            if expired and captured == 0:
                findings["authorization_expired"] = -expected_minor
    outcomes = [o for o in PRIORITY if o in findings] or ["matched"]
    outcome = outcomes[0]
    evidence = list(expected.event_ids) if expected else []
    evidence += [p.event_id for p in ordered]
    verdict = Verdict(
        outcome=outcome,
        outcomes=outcomes,
        currency=currency,
        expected_minor=expected_minor,
        authorized_minor=authorized,
        captured_minor=captured,
        refunded_minor=refunded,
        delta_minor=findings.get(outcome, 0),
        payment_ids=list(per),
        evidence_event_ids=evidence,
        detail="",
        deltas=findings,
    )
    money_by: dict[str, int] = {}
    for p in ordered:
        if p.kind == "captured":
            money_by[p.currency] = money_by.get(p.currency, 0) + p.amount_minor
    verdict.detail = _explain(verdict, expected, currencies, money_by)
    return verdict


def _foreign(money_by: dict[str, int]) -> str:
    return ", ".join(f"captured {n} {c}" for c, n in sorted(money_by.items()))


def _explain(
    v: Verdict, expected: Expected | None, currencies: list[str], money_by: dict[str, int]
) -> str:
    cur = v.currency or ""
    paid = f"captured {v.captured_minor} {cur}"
    if v.refunded_minor:
        paid += f", refunded {v.refunded_minor}"
    if expected is None:
        return f"{paid} for no known session ({len(v.payment_ids)} payment(s))"
    bill = f"bill {v.expected_minor} {cur}"
    text = {
        "matched": f"{paid}; {bill}",
        "unrated": f"session not rated: {expected.unrated}",
        "currency_mismatch": f"payments in {', '.join(currencies)} ({_foreign(money_by)}); {bill}",
        "refund_exceeds_capture": f"{paid}: refunds exceed the capture by {-v.delta_minor}",
        "duplicate_capture": f"{paid} in {len(v.payment_ids)} payment(s) for a {bill}",
        "chargeback": f"chargeback of {-v.delta_minor} {cur}; {bill}",
        "capture_exceeds_authorization": (
            f"{paid} against {v.authorized_minor} authorised (+{v.delta_minor})"
        ),
        "overcharged": f"{paid} for a {bill} (+{v.delta_minor})",
        "undercharged": f"{paid} for a {bill} ({v.delta_minor})",
        "missing_payment": f"nothing captured for a {bill}",
        "authorization_expired": f"hold of {v.authorized_minor} {cur} expired uncaptured; {bill}",
    }[v.outcome]
    if len(v.outcomes) > 1:
        text += f" (also: {', '.join(v.outcomes[1:])})"
    return text


def verdict_due_ms(
    *,
    ended_ms: int | None,
    has_session: bool,
    first_payment_ms: int | None,
    has_payments: bool,
    config: ReconciliationConfig,
) -> int | None:
    """When a case's verdict is due on the watermark; None while it cannot be decided.

    >>> cfg = ReconciliationConfig()
    >>> verdict_due_ms(ended_ms=0, has_session=True, first_payment_ms=5, has_payments=True,
    ...                config=cfg)
    1800000
    >>> verdict_due_ms(ended_ms=None, has_session=False, first_payment_ms=5, has_payments=True,
    ...                config=cfg)
    3600005
    """
    if has_session:
        if ended_ms is None:
            return None
        grace = config.payment_grace_s if has_payments else config.unpaid_grace_s
        return ended_ms + grace * 1000
    if first_payment_ms is None:
        return None
    return first_payment_ms + config.orphan_grace_s * 1000
