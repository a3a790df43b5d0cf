"""The billing engine: bills and verdicts on the event-time watermark, corrections, changelog."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.engine import BillingEngine, Emit, LateInputError, encoded_size, to_ms
from billing.reconciliation import ReconciliationConfig
from topics.records import (
    MeterReading,
    PaymentEvent,
    PriceComponent,
    SessionEvent,
    Station,
    Tariff,
    TariffElement,
)

T0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
MIN = 60_000
TARIFF = Tariff(
    event_id="tariff-1",
    event_time=T0,
    source="test",
    tariff_id="T1",
    currency="EUR",
    elements=[
        TariffElement(
            price_components=[
                PriceComponent(type="ENERGY", price=Decimal("0.40"), vat=Decimal(0)),
                PriceComponent(type="PARKING_TIME", price=Decimal("6"), vat=Decimal(0)),
            ]
        )
    ],
)
CFG = ReconciliationConfig(bill_grace_s=120, payment_grace_s=1800, orphan_grace_s=3600)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ms(minutes: float) -> int:
    return to_ms(at(minutes))


def session(kind: str, minute: float, wh: int, sid: str = "s1") -> SessionEvent:
    return SessionEvent(
        event_id=f"{sid}-{kind}",
        event_time=at(minute),
        source="test",
        session_id=sid,
        station_id="CP1",
        evse_id=1,
        kind=kind,  # type: ignore[arg-type]
        meter_start_wh=wh if kind == "started" else None,
        meter_stop_wh=wh if kind == "ended" else None,
    )


def reading(minute: float, wh: int, power: float = 11_000.0, sid: str = "s1") -> MeterReading:
    return MeterReading(
        event_id=f"{sid}-r{minute}",
        event_time=at(minute),
        source="test",
        session_id=sid,
        station_id="CP1",
        evse_id=1,
        energy_wh=wh,
        power_w=power,
    )


def payment(kind: str, amount: int, minute: float, sid: str | None = "s1", n: int = 0):
    return PaymentEvent(
        event_id=f"pay-{sid}-{kind}-{n}",
        event_time=at(minute),
        source="test",
        payment_id=f"pi_{sid}",
        session_id=sid,
        psp="stripe",
        psp_reference=f"ch_{n}",
        kind=kind,  # type: ignore[arg-type]
        amount_minor=amount,
        currency="EUR",
        method="wallet",
    )


STATION = Station(
    event_id="st",
    event_time=T0,
    source="test",
    station_id="CP1",
    lat=52.5,
    lon=13.4,
    tariff_id="T1",
    connectors=[
        {
            "evse_id": 1,
            "connector_id": 1,
            "standard": "IEC_62196_T2",
            "power_type": "AC_3_PHASE",
            "max_power_w": 22_000,
        }
    ],
)


def engine() -> BillingEngine:
    return BillingEngine(config=CFG, tariffs={"T1": TARIFF}, stations={"CP1": STATION})


# 10 kWh over 30 minutes, then 10 minutes parked: 4.00 + 1.00 EUR
EVENTS = [
    session("started", 0, 1000),
    *[reading(m, 1000 + m * 1000 // 3, 11_000.0) for m in range(1, 30)],
    reading(30, 11_000, 11_000.0),
    reading(35, 11_000, 0.0),
    session("ended", 40, 11_000),
    payment("authorized", 2500, -0.2),
    payment("captured", 500, 40.5),
    payment("voided", 2000, 40.6),
]


def feed(e: BillingEngine, events: list[object]) -> list[Emit]:
    out: list[Emit] = []
    for ev in events:
        if isinstance(ev, SessionEvent):
            out += e.on_session_event(ev)
        elif isinstance(ev, MeterReading):
            out += e.on_reading(ev)
        elif isinstance(ev, PaymentEvent):
            out += e.on_payment(ev)
    return out


def published(out: list[Emit]) -> list[Emit]:
    """What goes to Kafka as is (features hints are built by the shell)."""
    return [e for e in out if e.record is not None]


def summary(out: list[Emit]) -> list[tuple[str, str, int]]:
    rows = []
    for e in published(out):
        r = e.record
        amount = getattr(r, "total_minor", None)
        if amount is None:
            amount = getattr(r, "delta_minor", 0)
        rows.append((e.topic, getattr(r, "outcome", "bill"), amount))
    return rows


def test_bill_and_verdict_come_on_the_watermark_not_before() -> None:
    e = engine()
    assert feed(e, EVENTS) == []
    assert e.advance(ms(41.9)) == []  # end + 119 s
    [bill] = e.advance(ms(42))
    assert bill.topic == "session_bills" and bill.record.total_minor == 500
    assert [line.component for line in bill.record.lines] == ["ENERGY", "PARKING_TIME"]
    assert e.advance(ms(69.9)) == []
    [result] = e.advance(ms(70))
    assert summary([result]) == [("reconciliation", "matched", 0)]
    assert result.record.evidence_event_ids[0] == bill.record.event_id


def test_order_and_duplicates_do_not_change_the_result() -> None:
    e1, e2 = engine(), engine()
    shuffled = EVENTS * 2
    random.Random(4).shuffle(shuffled)
    feed(e1, EVENTS)
    feed(e2, shuffled)
    out1, out2 = e1.advance(ms(200)), e2.advance(ms(200))
    assert [x.record for x in out1] == [x.record for x in out2]
    assert e2.cases["s1"].session is not None and e2.cases["s1"].session.duplicates > 0


def test_a_late_event_publishes_a_correction() -> None:
    e = engine()
    feed(e, EVENTS)
    first = e.advance(ms(100))
    assert summary(first) == [("session_bills", "bill", 500), ("reconciliation", "matched", 0)]
    [refund] = published(e.on_payment(payment("refunded", 100, 200)))
    assert refund.record.revision == 1 and refund.record.refunded_minor == 100
    assert refund.record.outcome == "matched"
    again = e.on_payment(payment("refunded", 100, 200))  # redelivered: nothing new
    assert again == []
    out = e.on_payment(payment("captured", 500, 210, n=1))  # duplicate capture
    assert summary(out) == [
        ("reconciliation", "duplicate_capture", 500),
        ("reconciliation_mismatches", "duplicate_capture", 500),
    ]
    assert published(out)[0].record.result_id == first[1].record.result_id
    assert [e.topic for e in out if e.record is None] == ["session_features"]  # detection too


def test_a_late_reading_corrects_the_bill_and_the_verdict() -> None:
    e = engine()
    feed(e, [ev for ev in EVENTS if not isinstance(ev, MeterReading) or ev.event_time < at(30)])
    bill0, result0, _ = e.advance(ms(100))
    assert result0.record.outcome == "overcharged"  # the 30th minute was not seen yet
    out = e.on_reading(reading(30, 11_000, 11_000.0))
    topics = [o.topic for o in out]
    assert topics == ["session_bills", "reconciliation", "reconciliation_mismatches"]
    assert out[0].record.total_minor == 500 and out[0].record.event_id != bill0.record.event_id
    assert out[1].record.outcome == "matched" and out[1].record.revision == 1


def test_late_samples_that_change_no_line_make_no_new_bill_nor_revision() -> None:
    # An offline station's queue arriving after its bill: samples that change nothing the
    # bill says (here, points on the straight line between two known registers) must not
    # republish the bill or a reconciliation revision; detection still sees them.
    e = engine()
    odd = [ev for ev in EVENTS if not isinstance(ev, MeterReading) or ev.event_time.minute % 2]
    feed(e, [*odd, reading(30, 11000, 11000.0)])
    bill0, result0 = published(e.advance(ms(100)))
    assert result0.record.outcome == "matched"
    for m in range(2, 30, 2):
        out = e.on_reading(reading(m, 1000 + m * 1000 // 3, 11_000.0))
        assert published(out) == [], f"minute {m}"
        assert [o.topic for o in out] == ["session_features"]
    assert e.cases["s1"].revision == result0.record.revision == 0
    assert e.cases["s1"].bill.event_id == bill0.record.event_id


def test_readings_after_the_samples_are_dropped_go_back_as_errors() -> None:
    e = engine()
    feed(e, EVENTS)
    e.advance(ms(40) + CFG.sample_retention_s * 1000)
    with pytest.raises(LateInputError, match="bill is final"):
        e.on_reading(reading(36, 11_000, 0.0))


def test_missing_payment_waits_for_a_possible_roaming_settlement() -> None:
    e = engine()
    feed(e, [ev for ev in EVENTS if not isinstance(ev, PaymentEvent)])
    assert summary(e.advance(ms(100))) == [("session_bills", "bill", 500)]
    assert e.advance(ms(40) + CFG.unpaid_grace_s * 1000 - 1) == []
    out = e.advance(ms(40) + CFG.unpaid_grace_s * 1000)
    assert summary(out) == [
        ("reconciliation", "missing_payment", -500),
        ("reconciliation_mismatches", "missing_payment", -500),
    ]


def test_orphan_payment_then_its_session_turns_up() -> None:
    e = engine()
    e.on_payment(payment("captured", 500, 41, sid="s1"))
    out = e.advance(ms(41 + 60))
    assert summary(out) == [
        ("reconciliation", "orphan_payment", 500),
        ("reconciliation_mismatches", "orphan_payment", 500),
    ]
    assert out[0].record.session_id == "s1"
    late = feed(e, [ev for ev in EVENTS if not isinstance(ev, PaymentEvent)])
    late += e.advance(ms(200))
    assert summary(late)[-2:] == [
        ("reconciliation", "matched", 0),
        ("reconciliation_mismatches", "matched", 0),  # resolves the mismatch
    ]


def test_payment_without_session_id_is_its_own_case() -> None:
    e = engine()
    e.on_payment(payment("captured", 900, 0, sid=None))
    [result, _] = e.advance(ms(61))
    assert result.record.session_id is None and result.record.outcome == "orphan_payment"


def test_unknown_tariff_is_reported_as_unrated() -> None:
    e = BillingEngine(config=CFG)
    feed(e, EVENTS)
    out = e.advance(ms(200))
    assert summary(out) == [
        ("reconciliation", "unrated", 0),
        ("reconciliation_mismatches", "unrated", 0),
    ]
    assert "unknown" in published(out)[0].record.detail


def test_restored_engine_continues_exactly_like_the_original() -> None:
    original, crashed = engine(), engine()
    half = len(EVENTS) // 2
    log: list[tuple[bytes, bytes | None]] = []
    for ev in EVENTS[:half]:
        feed(crashed, [ev])
        log += [(k.encode(), v) for k, v in crashed.take_changes()]
    crashed.advance(ms(5))
    log += [(k.encode(), v) for k, v in crashed.take_changes()]
    restored = engine()
    assert restored.restore(log) == 1 and restored.watermark_ms == ms(5)
    feed(original, EVENTS)
    feed(restored, EVENTS[half:])
    original.advance(ms(5))
    assert [x.record for x in original.advance(ms(300))] == [
        x.record for x in restored.advance(ms(300))
    ]


def test_cases_are_forgotten_after_retention_with_a_tombstone() -> None:
    e = engine()
    feed(e, EVENTS)
    e.advance(ms(200))
    list(e.take_changes())
    e.advance(ms(41) + CFG.retention_s * 1000)
    assert "s1" not in e.cases
    assert ("s1", None) in list(e.take_changes())


def test_open_session_state_is_small() -> None:
    e = engine()
    feed(e, [session("started", 0, 1000)])
    feed(e, [reading(m, 1000 + 150 * m) for m in range(1, 121)])  # two hours, 1-minute samples
    case = e.cases["s1"]
    assert case.session is not None and case.session.sample_count == 121
    assert encoded_size(case) < 4096


def test_channel_ticks_survive_a_restore() -> None:
    """A restarted worker that had committed two channels' last ticks still advances."""
    e = engine()
    feed(e, EVENTS)
    assert e.tick("session_events", ms(200), channels=3) == []
    assert e.tick("meter_readings", ms(200), channels=3) == []
    log = [(k.encode(), v) for k, v in e.take_changes()]
    restored = engine()
    restored.restore(log)
    out = restored.tick("payment_events", ms(200), channels=3)
    assert summary(out) == [("session_bills", "bill", 500), ("reconciliation", "matched", 0)]
    assert restored.watermark_ms == ms(200)


def test_events_later_than_their_grace_are_decided_at_once() -> None:
    e = engine()
    e.advance(ms(500))  # the watermark is far past this session's end when it arrives
    out = feed(e, EVENTS)
    assert ("session_bills", "bill", 500) in summary(out)
    assert ("reconciliation", "matched", 0) in summary(out)
    orphan = engine()
    orphan.advance(ms(500))
    late = orphan.on_payment(payment("captured", 900, 0, sid=None))  # due at 60, seen at 500
    assert summary(late)[0] == ("reconciliation", "orphan_payment", 900)
