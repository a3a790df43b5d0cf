"""Session state: resets and rollbacks recorded, duplicates and conflicts counted, periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.periods import CHARGING_POWER_W, charging_periods
from billing.session_state import SessionState
from topics.records import MeterReading

T0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)


def reading(minute: int, wh: int, power: float | None = 7000.0, ctx: str = "Sample.Periodic"):
    return MeterReading(
        event_id=f"r{minute}-{wh}",
        event_time=T0 + timedelta(minutes=minute),
        source="test",
        session_id="s1",
        station_id="CP1",
        evse_id=1,
        energy_wh=wh,
        power_w=power,
        context=ctx,  # type: ignore[arg-type]
    )


def test_reset_and_rollback_are_recorded_and_bill_no_negative_energy() -> None:
    s = SessionState(session_id="s1")
    for m, wh in enumerate([50_000, 50_100, 50_200, 120, 220, 180, 280]):
        s.apply_reading(reading(m, wh))
    kinds = [(a.kind, a.before_wh, a.after_wh) for a in s.anomalies()]
    assert kinds == [("reset", 50_200, 120), ("rollback", 220, 180)]
    assert sum(p.energy_wh for p in charging_periods(s.samples())) == 100 + 100 + 100 + 100


def test_same_timestamp_twice_is_a_duplicate_or_a_conflict_and_the_first_stays() -> None:
    s = SessionState(session_id="s1")
    assert s.apply_reading(reading(0, 1000))
    assert not s.apply_reading(reading(0, 1000))
    assert not s.apply_reading(reading(0, 1500))
    assert (s.duplicates, s.conflicts, s.samples()[0][1]) == (1, 1, 1000)


def test_a_clock_sample_repeated_marks_the_stored_one_and_cuts_the_period() -> None:
    s = SessionState(session_id="s1")
    for m in range(4):
        s.apply_reading(reading(m, 1000 + 100 * m))
    s.apply_reading(reading(2, 1200, ctx="Sample.Clock"))
    periods = charging_periods(s.samples())
    assert [p.energy_wh for p in periods] == [200, 100]


def test_idle_when_the_register_stands_and_power_is_below_the_threshold() -> None:
    s = SessionState(session_id="s1")
    for m, wh, p in [(0, 1000, 7000.0), (10, 2000, 7000.0), (20, 2000, CHARGING_POWER_W - 1),
                     (30, 2000, 0.0), (40, 2000, CHARGING_POWER_W)]:  # fmt: skip
        s.apply_reading(reading(m, wh, p))
    periods = charging_periods(s.samples())
    assert [(p.energy_wh, p.max_power_w > 0) for p in periods] == [
        (1000, True),
        (0, False),
        (0, True),
    ]


def test_out_of_order_samples_give_the_same_state() -> None:
    a, b = SessionState(session_id="s1"), SessionState(session_id="s1")
    rows = [reading(m, 1000 + 100 * m) for m in range(10)]
    for r in rows:
        a.apply_reading(r)
    for r in reversed(rows):
        b.apply_reading(r)
    assert a.packed == b.packed and a.span_ms() == b.span_ms()
