"""Payment flows as PSPs report them, mapped onto :class:`~topics.records.PaymentEvent`.

* ``card`` (unattended terminal, Adyen): the terminal pre-authorises a fixed hold before the
  session; after it the CSMS raises the authorisation if the bill is higher
  (``auth_adjusted``), or lowers it to the bill (``auth_adjusted``) and captures.
* ``wallet`` (app, Stripe PaymentIntent with manual capture): hold, capture of the bill,
  release of the rest (``voided`` with the released amount).
* ``prepaid`` (RFID account): balance reservation, capture, release of the rest.
* ``roaming`` (eMAID, settled by the hub): one ``captured`` settlement days after the session.

Every event names the station and the OCPP transaction (PSP metadata set by the CSMS) and so
the session: ``session_id = session_id_for(station_id, transaction_id)``. Ids are
deterministic (:func:`topics.identity.stable_id`).

Examples
--------
>>> plan = PaymentPlan(nonce="n1", session_id="s-1", station_id="VG-00001",
...                    transaction_id="1001", method="wallet", currency="EUR",
...                    card_fingerprint_hash="ab" * 16, terminal_id=None, auth_ms=0,
...                    capture_ms=3_600_000, hold_minor=2500, capture_minor=1234)
>>> [(e.kind, e.amount_minor) for _, e in render(plan)]
[('authorized', 2500), ('captured', 1234), ('voided', 1266)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from topics.identity import stable_id
from topics.records import PaymentEvent
from topics.simulation._time import DAY_MS, MINUTE_MS, to_datetime

__all__ = [
    "HOLD_MINOR",
    "PSP",
    "PaymentPlan",
    "card_testing_burst",
    "orphan_capture",
    "render",
]

PSP = {"card": "adyen", "wallet": "stripe", "prepaid": "prepaid-ledger", "roaming": "hubject"}
"""Which PSP reports each payment method."""

HOLD_MINOR = {"card_dc": 6000, "card_ac": 3000, "wallet": 2500, "prepaid": 2000}
"""Pre-authorisation holds in minor units (card terminals hold more at fast chargers)."""

REFUND_REASONS = (
    "connector fault: compensation",
    "goodwill: slow charging",
    "duplicate session fee waived",
    "tariff display error",
)


@dataclass(slots=True)
class PaymentPlan:
    """How one session's money moves; faults edit the plan before :func:`render`.

    ``capture_minor`` None means nothing is captured (an existing hold is voided whole);
    ``missing`` means the PSP reports nothing at all. ``release`` is how an unused hold goes
    back: ``"void"`` (a ``voided`` event with the released amount) or ``"adjust"`` (an
    ``auth_adjusted`` down to the capture, before it). ``adjust_up`` raises a hold that is too
    low before capturing; without it a larger capture exceeds the authorisation.
    """

    nonce: str
    session_id: str | None
    station_id: str | None
    transaction_id: str | None
    method: str
    currency: str
    card_fingerprint_hash: str | None
    terminal_id: str | None
    auth_ms: int
    capture_ms: int
    hold_minor: int | None
    capture_minor: int | None
    adjust_up: bool = True
    release: str = "void"
    missing: bool = False
    duplicate: str | None = None
    duplicate_delay_ms: int = 90_000
    refunds: list[tuple[int, int, str]] = field(default_factory=list)
    chargeback_ms: int | None = None


def _payment_id(method: str, nonce: str) -> str:
    digest = stable_id("payment", method, nonce)
    if method == "card":
        return f"{int(digest[:14], 16) % 10**16:016d}"
    prefix = {"wallet": "pi_", "prepaid": "pp_", "roaming": "CDR-"}[method]
    return prefix + digest[:24]


def _reference(method: str, kind: str, payment_id: str, n: int) -> str:
    digest = stable_id("psp-ref", payment_id, kind, n)
    if method == "card":
        return f"{int(digest[:14], 16) % 10**16:016d}"
    prefix = {"captured": "ch_", "refunded": "re_", "chargeback_opened": "dp_"}.get(kind, "ev_")
    return prefix + digest[:24]


def _event(
    plan: PaymentPlan, payment_id: str, kind: str, amount: int, at_ms: int, n: int
) -> tuple[int, PaymentEvent]:
    psp = PSP[plan.method]
    return at_ms, PaymentEvent(
        event_id=stable_id("payment-event", payment_id, kind, n),
        event_time=to_datetime(at_ms),
        source=psp,
        payment_id=payment_id,
        session_id=plan.session_id,
        station_id=plan.station_id,
        transaction_id=plan.transaction_id,
        psp=psp,
        psp_reference=_reference(plan.method, kind, payment_id, n),
        kind=kind,  # type: ignore[arg-type]
        amount_minor=max(0, amount),
        currency=plan.currency,
        method=plan.method,  # type: ignore[arg-type]
        card_fingerprint_hash=plan.card_fingerprint_hash,
        terminal_id=plan.terminal_id,
    )


def render(plan: PaymentPlan) -> list[tuple[int, PaymentEvent]]:
    """The PSP events of a plan, as ``(event_time_ms, event)`` in time order."""
    if plan.missing:
        return []
    pid = _payment_id(plan.method, plan.nonce)
    out: list[tuple[int, PaymentEvent]] = []
    n = 0

    def add(kind: str, amount: int, at_ms: int, payment_id: str = pid) -> None:
        nonlocal n
        out.append(_event(plan, payment_id, kind, amount, at_ms, n))
        n += 1

    hold, capture, at = plan.hold_minor, plan.capture_minor, plan.capture_ms
    if hold is not None:
        add("authorized", hold, plan.auth_ms)
    if not capture:
        if hold is not None:
            add("voided", hold, at)
        return out
    raise_hold = hold is not None and capture > hold and plan.adjust_up
    lower_hold = hold is not None and capture < hold and plan.release == "adjust"
    if raise_hold or lower_hold:
        add("auth_adjusted", capture, at - 1000)
    add("captured", capture, at)
    if hold is not None and capture < hold and plan.release == "void":
        add("voided", hold - capture, at + 1000)
    if plan.duplicate == "same":
        add("captured", capture, at + plan.duplicate_delay_ms)
    elif plan.duplicate == "new":
        other = _payment_id(plan.method, plan.nonce + "/dup")
        add("captured", capture, at + plan.duplicate_delay_ms, other)
    for refund_ms, amount, _reason in plan.refunds:
        add("refunded", amount, refund_ms)
    if plan.chargeback_ms is not None:
        add("chargeback_opened", capture, plan.chargeback_ms)
        add("chargeback_closed", capture, plan.chargeback_ms + 30 * DAY_MS)
    out.sort(key=lambda pair: pair[0])
    return out


def card_testing_burst(
    rng: np.random.Generator,
    *,
    nonce: str,
    station_id: str,
    terminal_id: str,
    currency: str,
    at_ms: int,
    fingerprints: list[str],
) -> list[tuple[int, PaymentEvent]]:
    """A card-testing burst at one terminal: many small authorisations, most of them failing.

    Each attempt is its own payment (no session); the few that succeed are voided at once.

    >>> import numpy as np
    >>> evs = card_testing_burst(np.random.default_rng(0), nonce="x", station_id="VG-00001",
    ...     terminal_id="TRM-VG-00001", currency="EUR", at_ms=0, fingerprints=["ab" * 16] * 3)
    >>> len(evs) >= 10, {e.kind for _, e in evs} <= {"authorized", "failed", "voided"}
    (True, True)
    """
    attempts = int(rng.integers(10, 31))
    window_ms = int(rng.integers(2, 11)) * MINUTE_MS
    offsets = np.sort(rng.integers(0, window_ms, size=attempts))
    out: list[tuple[int, PaymentEvent]] = []
    for k in range(attempts):
        plan = PaymentPlan(
            nonce=f"{nonce}/{k}",
            session_id=None,
            station_id=station_id,
            transaction_id=None,
            method="card",
            currency=currency,
            card_fingerprint_hash=fingerprints[k % len(fingerprints)],
            terminal_id=terminal_id,
            auth_ms=at_ms + int(offsets[k]),
            capture_ms=at_ms + int(offsets[k]),
            hold_minor=None,
            capture_minor=None,
        )
        pid = _payment_id("card", plan.nonce)
        amount = int(rng.choice([50, 100, 100, 150, 200]))
        t = plan.auth_ms
        if rng.random() < 0.7:
            out.append(_event(plan, pid, "failed", amount, t, 0))
        else:
            out.append(_event(plan, pid, "authorized", amount, t, 0))
            out.append(_event(plan, pid, "voided", amount, t + int(rng.integers(5, 30)) * 1000, 1))
    out.sort(key=lambda pair: pair[0])
    return out


def orphan_capture(
    *,
    nonce: str,
    method: str,
    station_id: str | None,
    transaction_id: str | None,
    session_id: str | None,
    currency: str,
    amount_minor: int,
    at_ms: int,
    card_fingerprint_hash: str | None,
    terminal_id: str | None,
) -> list[tuple[int, PaymentEvent]]:
    """A capture that no session will ever claim.

    >>> [e.kind for _, e in orphan_capture(nonce="o", method="wallet", station_id=None,
    ...     transaction_id=None, session_id=None, currency="EUR", amount_minor=900, at_ms=0,
    ...     card_fingerprint_hash=None, terminal_id=None)]
    ['captured']
    """
    plan = PaymentPlan(
        nonce=nonce,
        session_id=session_id,
        station_id=station_id,
        transaction_id=transaction_id,
        method=method,
        currency=currency,
        card_fingerprint_hash=card_fingerprint_hash,
        terminal_id=terminal_id,
        auth_ms=at_ms,
        capture_ms=at_ms,
        hold_minor=None,
        capture_minor=amount_minor,
    )
    return render(plan)
