"""Records for the operator API's tests: a few sessions, bills, verdicts, alerts, a label.

:func:`messages` gives them as (catalog short name, key, value) the way the topics hold
them, so the unit tests, the app test, the schemathesis run and the broker test all feed the
same data through :func:`topics.operator_view.project`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from msgspec import structs

from topics.codec import encode
from topics.records import (
    AlertLabel,
    BillLine,
    FraudAlert,
    PaymentEvent,
    ReconciliationResult,
    SessionBill,
    SessionEvent,
)

T0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
TOKEN = "test-token-0123456789abcdef"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def session_events(session: str, station: str, start: float) -> list[SessionEvent]:
    common = dict(source="ocpp1.6", session_id=session, station_id=station, evse_id=1)
    return [
        SessionEvent(
            event_id=f"{session}-start",
            event_time=at(start),
            kind="started",
            token_hash="ab" * 16,
            meter_start_wh=1000,
            **common,
        ),
        SessionEvent(
            event_id=f"{session}-end",
            event_time=at(start + 30),
            kind="ended",
            meter_stop_wh=11000,
            **common,
        ),
    ]


def payment(session: str, minutes: float, amount: int, currency: str = "EUR") -> PaymentEvent:
    return PaymentEvent(
        event_id=f"{session}-pay",
        event_time=at(minutes),
        source="stripe",
        payment_id=f"pi_{session}",
        session_id=session,
        psp="stripe",
        psp_reference=f"ch_{session}",
        kind="captured",
        amount_minor=amount,
        currency=currency,
        method="card",
    )


def bill(session: str, station: str, minutes: float, total: int, currency: str = "EUR"):
    line = BillLine(
        component="ENERGY",
        volume=Decimal("10.000"),
        unit="kWh",
        unit_price=Decimal("0.40"),
        vat_pct=Decimal("0"),
        amount_excl_vat_minor=total,
        vat_minor=0,
    )
    return SessionBill(
        event_id=f"{session}-bill-{total}",
        event_time=at(minutes),
        source="billing",
        session_id=session,
        station_id=station,
        tariff_id="T1",
        currency=currency,
        energy_wh=10000,
        charging_s=1800,
        idle_s=0,
        lines=[line],
        total_excl_vat_minor=total,
        total_vat_minor=0,
        total_minor=total,
    )


def result(
    session: str,
    minutes: float,
    outcome: str,
    revision: int,
    *,
    expected: int,
    captured: int,
    currency: str | None = "EUR",
    refunded: int = 0,
) -> ReconciliationResult:
    return ReconciliationResult(
        event_id=f"{session}-r{revision}",
        event_time=at(minutes),
        source="billing",
        result_id=f"rec-{session}",
        session_id=session,
        outcome=outcome,  # type: ignore[arg-type]
        outcomes=[outcome],  # type: ignore[list-item]
        currency=currency,
        expected_minor=expected,
        authorized_minor=captured,
        captured_minor=captured,
        refunded_minor=refunded,
        delta_minor=captured - refunded - expected,
        revision=revision,
    )


def alert(
    n: int, minutes: float, *, kind: str, severity: str, station: str, session: str | None
) -> FraudAlert:
    return FraudAlert(
        event_id=f"alert-event-{n}",
        event_time=at(minutes),
        source="detection",
        alert_id=f"alert-{n:02d}",
        kind=kind,
        severity=severity,  # type: ignore[arg-type]
        score=0.75,
        subject_type="session" if session else "station",
        subject_id=session or station,
        session_id=session,
        station_id=station,
        evidence={"energy_wh": 10000},
        explanation=f"alert {n}",
        detector="rules",
    )


ALERTS = [
    alert(0, 31, kind="energy_inflation", severity="critical", station="CP1", session="s1"),
    alert(1, 40, kind="card_testing", severity="warning", station="CP2", session=None),
    alert(2, 40, kind="card_testing", severity="warning", station="CP2", session=None),
    alert(3, 55, kind="token_overlap", severity="error", station="CP1", session="s2"),
    alert(
        4, 60 * 24 + 5, kind="energy_inflation", severity="critical", station="CP3", session="s3"
    ),
]
LABEL = AlertLabel(
    event_id="label-seed",
    event_time=at(100),
    source="analyst",
    alert_id="alert-00",
    label="fraud",
    analyst="ann",
    comment="checked",
)


_ID_FIELDS = (
    "event_id",
    "session_id",
    "station_id",
    "alert_id",
    "result_id",
    "subject_id",
    "payment_id",
    "psp_reference",
)


def _moved(record: Any, run: str, shift: timedelta, currencies: dict[str, str]) -> Any:
    changes: dict[str, Any] = {"event_time": record.event_time + shift}
    for name in _ID_FIELDS:
        value = getattr(record, name, None)
        if isinstance(value, str):
            changes[name] = run + value
    currency = getattr(record, "currency", None)
    if currency in currencies:
        changes["currency"] = currencies[currency]
    return structs.replace(record, **changes)


def messages(
    run: str = "", shift: timedelta = timedelta(0), currencies: dict[str, str] | None = None
) -> list[tuple[str, bytes | None, bytes | None]]:
    """The test data in topic order; s1 gets a correction (revision 1), s3 is on the next
    day in GBP, and the delivery record shows alert-00 paged.

    ``run`` prefixes every id, ``shift`` moves every time and ``currencies`` renames
    currencies: a broker test's own copy, apart from what other tests wrote.
    """
    out: list[tuple[str, bytes | None, bytes | None]] = []
    currencies = currencies or {}

    def add(short: str, key: str, record: Any) -> None:
        out.append((short, (run + key).encode(), encode(_moved(record, run, shift, currencies))))

    for s, station, start in (("s1", "CP1", 0), ("s2", "CP1", 20), ("s3", "CP3", 60 * 24)):
        for e in session_events(s, station, start):
            add("session_events", s, e)
    add("payment_events", "s1", payment("s1", 31, 300))
    add("payment_events", "s2", payment("s2", 51, 400))
    add("payment_events", "s3", payment("s3", 60 * 24 + 31, 700, "GBP"))
    add("session_bills", "s1", bill("s1", "CP1", 32, 400))
    add("session_bills", "s1", bill("s1", "CP1", 33, 500))  # a correction of the bill
    add("session_bills", "s2", bill("s2", "CP1", 52, 400))
    add("session_bills", "s3", bill("s3", "CP3", 60 * 24 + 32, 600, "GBP"))
    add("reconciliation", "s1", result("s1", 33, "missing_payment", 0, expected=500, captured=0))
    add("reconciliation", "s1", result("s1", 34, "undercharged", 1, expected=500, captured=300))
    add("reconciliation", "s2", result("s2", 53, "matched", 0, expected=400, captured=400))
    add(
        "reconciliation",
        "s3",
        result("s3", 60 * 24 + 33, "overcharged", 0, expected=600, captured=700, currency="GBP"),
    )
    for a in ALERTS:
        add("fraud_alerts", a.alert_id, a)
    add("alert_labels", LABEL.alert_id, LABEL)
    delivery = {"status": "delivered", "attempts": 1, "at": "2024-05-06T10:32:00Z"}
    out.append(
        ("alert_deliveries", f"{run}alert-00|pager|trigger".encode(), msgspec.json.encode(delivery))
    )
    out.append(("session_events", b"\x00clock", b'{"event_id":"tick"}'))
    return out


def seeded_store(path: str = ":memory:"):
    """A :class:`streams.api_store.ViewStore` holding :func:`messages`."""
    from streams.api_store import ViewStore
    from topics.operator_view import project

    store = ViewStore(path)
    rows = []
    for offset, (short, key, value) in enumerate(messages()):
        row = project(short, key, value, 0, offset)
        if row is not None:
            rows.append(row)
    store.apply(rows, {})
    return store
