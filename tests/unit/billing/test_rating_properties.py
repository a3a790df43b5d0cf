"""Properties of rate_session over generated tariffs and sessions (hypothesis).

Tariffs mix every component type, step size and restriction; sessions start near DST
changes in four timezones and mix charging, idle stretches and gaps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import money
from billing.rating import ChargingPeriod, RatedSession, rate_session
from topics.records import PriceComponent, Tariff, TariffElement, TariffRestrictions

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

KINDS = ("FLAT", "ENERGY", "TIME", "PARKING_TIME")
STEPS = {
    "FLAT": (1,),
    "ENERGY": (1, 25, 100, 1000),
    "TIME": (1, 60, 300, 900),
    "PARKING_TIME": (1, 60, 300, 900),
}
PER_UNIT = {"ENERGY": 1000, "TIME": 3600, "PARKING_TIME": 3600}  # Wh or s per kWh or h
DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
TIMEZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
ANCHORS = (  # near DST changes in Europe (Mar 31, Oct 27) and the US (Mar 10), and none
    datetime(2024, 3, 30, 12, tzinfo=UTC),
    datetime(2024, 10, 26, 12, tzinfo=UTC),
    datetime(2024, 3, 9, 12, tzinfo=UTC),
    datetime(2024, 6, 5, 12, tzinfo=UTC),
)
EVENT_TIME = datetime(2024, 1, 1, tzinfo=UTC)

prices = st.decimals(min_value=0, max_value=5, places=2)
vats = st.sampled_from([None, Decimal(0), Decimal("5.5"), Decimal(10), Decimal(19), Decimal(21)])
hhmm = st.builds("{:02d}:{:02d}".format, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
sometimes = st.sampled_from([False, False, False, True])


@st.composite
def components(draw: st.DrawFn, kinds: Sequence[str] = KINDS) -> PriceComponent:
    kind = draw(st.sampled_from(kinds))
    return PriceComponent(
        type=kind,  # type: ignore[arg-type]
        price=draw(prices),
        vat=draw(vats),
        step_size=draw(st.sampled_from(STEPS[kind])),
    )


@st.composite
def restrictions(draw: st.DrawFn, kwh: bool = True) -> TariffRestrictions | None:
    """None half the time, else one to three restrictions (more rarely all hold)."""
    if draw(st.booleans()):
        return None
    day = st.builds(
        lambda anchor, days: (anchor + timedelta(days=days)).date().isoformat(),
        st.sampled_from(ANCHORS),
        st.integers(-1, 3),
    )
    values: dict[str, st.SearchStrategy[object]] = {
        "start_time": hhmm,
        "end_time": hhmm,
        "day_of_week": st.lists(st.sampled_from(DAYS), min_size=1, max_size=5, unique=True),
        "start_date": day,
        "end_date": day,
        "min_power": st.decimals(0, 100, places=0),
        "max_power": st.decimals(0, 100, places=0),
        "min_current": st.decimals(0, 64, places=0),
        "max_current": st.decimals(0, 64, places=0),
        "min_duration": st.integers(0, 4 * 3600),
        "max_duration": st.integers(0, 4 * 3600),
    }
    if kwh:
        values["min_kwh"] = values["max_kwh"] = st.decimals(0, 40, places=1)
    chosen = draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=3, unique=True))
    return TariffRestrictions(**{name: draw(values[name]) for name in chosen})  # type: ignore[arg-type]


@st.composite
def tariffs(
    draw: st.DrawFn, kinds: Sequence[str] = KINDS, kwh: bool = True, limits: bool = True
) -> Tariff:
    elements = [
        TariffElement(
            price_components=draw(st.lists(components(kinds), min_size=1, max_size=3)),
            restrictions=draw(restrictions(kwh)),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    low = high = None
    if limits and draw(sometimes):
        low = draw(st.integers(0, 3000))
    if limits and draw(sometimes):
        high = draw(st.integers(low or 0, 5000))
    return Tariff(
        event_id="e",
        event_time=EVENT_TIME,
        source="hypothesis",
        tariff_id="T-prop",
        currency=draw(st.sampled_from(["EUR", "EUR", "JPY", "KWD"])),
        elements=elements,
        min_price_minor=low,
        max_price_minor=high,
        timezone=draw(st.sampled_from(TIMEZONES)),
    )


Session = tuple[datetime, datetime, list[ChargingPeriod]]


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    start = draw(st.sampled_from(ANCHORS)) + timedelta(
        seconds=draw(st.integers(0, 2 * 86400)),
        microseconds=draw(st.sampled_from([0, 0, 250_000, 123_457])),
    )
    at, periods = start, []
    for _ in range(draw(st.integers(1, 4))):
        at += timedelta(seconds=draw(st.sampled_from([0, 0, 1, 600, 1800])))
        end = at + timedelta(seconds=draw(st.integers(1, 3 * 3600)))
        if draw(st.integers(0, 3)):  # charging, 3 in 4
            kw = draw(st.sampled_from([3.7, 7.4, 11.0, 22.0, 50.0, 150.0]))
            amps = draw(st.sampled_from([None, 6.0, 16.0, 32.0, 48.0]))
            periods.append(ChargingPeriod(at, end, draw(st.integers(0, 40_000)), kw * 1000, amps))
        else:
            periods.append(ChargingPeriod(at, end, 0, 0.0))
        at = end
    return start, at + timedelta(seconds=draw(st.sampled_from([0, 60, 2520, 3600]))), periods


def rate(tariff: Tariff, session: Session) -> RatedSession:
    start, end, periods = session
    return rate_session(tariff, start=start, end=end, periods=periods)


def billed(bill: RatedSession, component: str) -> Decimal:
    return sum((li.volume for li in bill.lines if li.component == component), Decimal(0))


# --------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(tariff=tariffs(), session=sessions())
def test_totals_are_the_sum_of_hand_checkable_lines(tariff: Tariff, session: Session) -> None:
    bill = rate(tariff, session)
    assert bill.total_excl_vat_minor == sum(li.amount_excl_vat_minor for li in bill.lines)
    assert bill.total_vat_minor == sum(li.vat_minor for li in bill.lines)
    assert bill.total_minor == bill.total_excl_vat_minor + bill.total_vat_minor

    priced = [li for li in bill.lines if li.unit != "adjustment"]
    adjustments = [li for li in bill.lines if li.unit == "adjustment"]
    assert bill.lines[: len(priced)] == tuple(priced)  # an adjustment comes last
    assert len(adjustments) <= 1
    exact_vat = Fraction(0)
    for line in priced:  # each net amount is volume x unit price, rounded half up once
        assert line.amount_excl_vat_minor == money.line_net_minor(
            line.volume, line.unit_price, bill.currency
        )
        exact = Fraction(line.amount_excl_vat_minor) * Fraction(line.vat_pct) / 100
        assert abs(line.vat_minor - exact) < 1
        exact_vat += exact
    assert abs(sum(li.vat_minor for li in priced) - exact_vat) <= Fraction(1, 2)

    if tariff.min_price_minor is not None:
        assert bill.total_minor >= tariff.min_price_minor
    if tariff.max_price_minor is not None:
        assert bill.total_minor <= tariff.max_price_minor
    for line in adjustments:
        limit = tariff.min_price_minor if line.component == "MIN_PRICE" else tariff.max_price_minor
        assert bill.total_minor == limit

    start, end, periods = session
    assert bill.energy_wh == sum(p.energy_wh for p in periods)
    session_s = (end - start).total_seconds()
    assert session_s - 2 < bill.charging_s + bill.idle_s <= session_s


@PROPERTY_SETTINGS
@given(tariff=tariffs(), session=sessions())
def test_no_negative_amounts_for_non_negative_prices(tariff: Tariff, session: Session) -> None:
    bill = rate(tariff, session)
    for line in bill.lines:
        if line.component == "MAX_PRICE":
            assert line.amount_excl_vat_minor + line.vat_minor < 0
        elif line.component == "MIN_PRICE":
            assert line.amount_excl_vat_minor + line.vat_minor > 0
        else:
            assert line.amount_excl_vat_minor >= 0
            assert line.vat_minor >= 0
            assert line.volume > 0
    assert bill.total_excl_vat_minor >= 0
    assert bill.total_vat_minor >= 0


@PROPERTY_SETTINGS
@given(tariff=tariffs(), session=sessions())
def test_rating_is_deterministic_and_ignores_period_order(tariff: Tariff, session: Session) -> None:
    start, end, periods = session
    assert rate(tariff, session) == rate(tariff, (start, end, list(reversed(periods))))


@PROPERTY_SETTINGS
@given(tariff=tariffs(), session=sessions(), data=st.data())
def test_splitting_a_period_where_energy_splits_exactly_changes_nothing(
    tariff: Tariff, session: Session, data: st.DataObject
) -> None:
    start, end, periods = session
    i = data.draw(st.integers(0, len(periods) - 1))
    p = periods[i]
    seconds = int((p.end - p.start).total_seconds())
    if seconds < 2:
        return
    # evenly delivered energy that splits into whole Wh at any whole second
    p = dataclasses.replace(p, energy_wh=seconds * data.draw(st.integers(0, 10)))
    cut = data.draw(st.integers(1, seconds - 1))
    middle = p.start + timedelta(seconds=cut)
    rate_wh_s = p.energy_wh // seconds
    halves = [
        dataclasses.replace(p, end=middle, energy_wh=rate_wh_s * cut),
        dataclasses.replace(p, start=middle, energy_wh=rate_wh_s * (seconds - cut)),
    ]
    whole = rate(tariff, (start, end, [*periods[:i], p, *periods[i + 1 :]]))
    split = rate(tariff, (start, end, [*periods[:i], *halves, *periods[i + 1 :]]))
    assert split == whole


def step_allowance(tariff: Tariff) -> int:
    """One block of the dearest stepped component per dimension, incl. VAT, minor units."""
    total = Fraction(0)
    for dimension, per_unit in PER_UNIT.items():
        blocks = [
            Fraction(pc.price) * pc.step_size / per_unit * (1 + Fraction(pc.vat or 0) / 100)
            for element in tariff.elements
            for pc in element.price_components
            if pc.type == dimension
        ]
        total += max(blocks, default=Fraction(0))
    return money.to_minor(Decimal(total.numerator) / Decimal(total.denominator), tariff.currency)


@PROPERTY_SETTINGS
@given(tariff=tariffs(kwh=False), session=sessions(), data=st.data())
def test_splitting_a_period_at_any_instant_never_loses_a_block(
    tariff: Tariff, session: Session, data: st.DataObject
) -> None:
    # The halves get whole Wh, so up to 1 Wh moves across a tariff boundary inside the
    # period; that is worth far less than a minor unit per line. Otherwise the bill may
    # differ only by which component prices the last partial block.
    start, end, periods = session
    i = data.draw(st.integers(0, len(periods) - 1))
    p = periods[i]
    length_us = (p.end - p.start) // timedelta(microseconds=1)
    if length_us < 2:
        return
    cut_us = data.draw(st.integers(1, length_us - 1))
    first_wh = p.energy_wh * cut_us // length_us
    middle = p.start + timedelta(microseconds=cut_us)
    halves = [
        dataclasses.replace(p, end=middle, energy_wh=first_wh),
        dataclasses.replace(p, start=middle, energy_wh=p.energy_wh - first_wh),
    ]
    whole = rate(tariff, session)
    split = rate(tariff, (start, end, [*periods[:i], *halves, *periods[i + 1 :]]))

    slack = 2 * max(len(whole.lines), len(split.lines)) + 2
    assert abs(split.total_minor - whole.total_minor) <= step_allowance(tariff) + slack
    for dimension, steps in STEPS.items():
        if dimension == "FLAT":
            assert billed(split, dimension) == billed(whole, dimension)
            continue
        # the same total volume, rounded up with the step of whichever component came last
        tolerance = Decimal(max(steps)) / PER_UNIT[dimension] + Decimal("0.00001")
        assert abs(billed(split, dimension) - billed(whole, dimension)) <= tolerance
    assert (split.charging_s, split.idle_s, split.energy_wh) == (
        whole.charging_s,
        whole.idle_s,
        whole.energy_wh,
    )


@PROPERTY_SETTINGS
@given(tariff=tariffs(kinds=["FLAT"], kwh=False), session=sessions(), data=st.data())
def test_flat_only_tariff_is_independent_of_energy(
    tariff: Tariff, session: Session, data: st.DataObject
) -> None:
    start, end, periods = session
    other = [dataclasses.replace(p, energy_wh=data.draw(st.integers(0, 80_000))) for p in periods]
    a, b = rate(tariff, session), rate(tariff, (start, end, other))
    assert (a.lines, a.total_minor) == (b.lines, b.total_minor)
    assert all(li.component in {"FLAT", "MIN_PRICE", "MAX_PRICE"} for li in a.lines)
    assert sum(li.component == "FLAT" for li in a.lines) <= 1
