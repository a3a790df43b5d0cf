"""Rating of one charging session against an OCPI 2.2.1 tariff.

Pure: no I/O, no clock. The caller describes the session as :class:`ChargingPeriod` stretches
(energy delivered and peak power), :func:`rate_session` returns a :class:`RatedSession` whose
lines an analyst can check by hand. Rounding is delegated to :mod:`billing.money`.

Semantics (OCPI 2.2.1 Tariffs module: "Tariff object", "TariffRestrictions")
----------------------------------------------------------------------------
* **Active component.** At every instant, for each dimension (``ENERGY``, ``TIME``,
  ``PARKING_TIME``, ``FLAT``) the component is taken from the *first* tariff element whose
  restrictions all hold and that has a component of that type. No such element: that
  dimension is free at that instant. Elements with a ``reservation`` restriction describe
  reservation costs, which a charging session does not have: they are never active.
* **Dimensions.** ``ENERGY`` is priced per kWh of energy delivered; ``TIME`` per hour while
  charging (``max_power_w > 0``); ``PARKING_TIME`` per hour while not charging, including
  gaps between the given periods; ``FLAT`` once per session, taken from the first instant at
  which a ``FLAT`` component is active.
* **Splitting.** Periods are cut wherever the answer may change: local time-of-day
  boundaries, local midnights (day of week, dates), UTC-offset changes (DST), the session
  durations of ``min/max_duration``, and the instants at which the session's energy crosses
  a ``min/max_kwh`` threshold. Energy is spread evenly over a period's time, so a cut
  divides it proportionally. Time and energy are exact rationals: a cut loses nothing.
* **step_size** (Wh for ``ENERGY``, seconds for ``TIME`` and ``PARKING_TIME``) applies to
  the total volume of a dimension over the session (the volume at instants where some
  component of that dimension was active), rounded up to a whole step of the component
  active in the *last* stretch of that dimension, and the extra volume is billed at that
  component's price (OCPI: "step_size SHALL only be taken into account for the last
  TariffElement"). Splitting a period therefore never adds or loses a block.
* **Restrictions** hold as follows; minimums are inclusive, maximums exclusive, as OCPI
  states for ``min/max_duration`` and ``end_date``:

  - ``start_time``/``end_time``: local wall time of ``tariff.timezone`` (zoneinfo) in
    ``[start_time, end_time)``; ``end_time < start_time`` crosses midnight; only one of
    them: from ``start_time`` to midnight, or from midnight to ``end_time``; equal: all day.
  - ``day_of_week``: the local weekday; an empty list means no restriction.
  - ``start_date``/``end_date``: the local date, ``end_date`` exclusive.
  - ``min_kwh``/``max_kwh``: the energy delivered since the session started.
  - ``min_power``/``max_power``: the period's ``max_power_w`` in kW.
  - ``min_current``/``max_current``: the period's ``max_current_a``; when that is ``None``
    (no current information) the current restrictions are ignored, i.e. they hold.
  - ``min_duration``/``max_duration``: seconds since the session started.

* **VAT** is per component (``vat`` percent, ``None`` meaning none: 0 on the line).
  Prices are excl. VAT, as in OCPI 2.2.1; negative prices (discounts) are accepted.
* **Lines and rounding** (:mod:`billing.money`). One line per (component, unit price, VAT
  %), ordered FLAT, ENERGY, TIME, PARKING_TIME, each by first use. Its volume (kWh, h, or
  1 session) is quantized to 6 decimals; its net is ``volume x unit price`` rounded half up
  once; VAT is rounded once per bill, on the exact sum of ``net x rate``, and distributed
  over the lines by largest remainder. The totals are exactly the sums of the lines.
* **min/max price.** ``Tariff.min_price_minor`` / ``max_price_minor`` are incl. VAT. A total
  below the minimum (above the maximum) gets one ``MIN_PRICE`` (``MAX_PRICE``) line that
  brings it exactly to the limit: the limit is split into net and VAT at one rate, and the
  line is the difference between that split and the bill's totals (so a limit of 0 makes
  both totals 0). The rate is the one rate of the bill's lines; with mixed rates the bill's
  effective rate (total VAT / total net, two decimals); with no line the tariff's rate, the
  highest if mixed. The line's ``unit_price`` is its net amount and its VAT is the
  difference, not ``net x rate``. OCPI's separate excl.-VAT limit does not exist in
  :class:`~topics.records.Tariff`, so only the incl.-VAT limit is enforced.

Deviations from the OCPI text, on purpose
-----------------------------------------
OCPI's step_size "switching to different Tariff Element #1" example bills no parking for 2
minutes parked after 10 charging minutes were rounded up to 15 ("the parking time is within
the extra 5 minutes of charging"). The same document's complex tariff example rounds charging
(147 -> 150 min) *and* parking (42 -> 45 min) independently, and only that reading
reproduces its 8.75 / 12.50 EUR. The two cannot both hold; voltguard rounds each dimension
independently, so example #1 costs 0.75 EUR here, not 0.50.

The "first hour free" example's 7.30 EUR treats its ``min/max_duration`` as parking time;
OCPI defines them as the session's duration, which is what is applied here (the example's
numbers hold when charging takes no time).

Out of scope: reservation costs, and the tariff-level ``start_date_time``/``end_date_time``
(not in :class:`~topics.records.Tariff`; choosing the tariff is the caller's job).

Examples
--------
>>> from datetime import UTC, datetime, timedelta
>>> from decimal import Decimal
>>> from topics.records import PriceComponent, Tariff, TariffElement
>>> t0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
>>> energy = PriceComponent(type="ENERGY", price=Decimal("0.25"), vat=Decimal(10))
>>> tariff = Tariff(event_id="e1", event_time=t0, source="doc", tariff_id="T1",
...                 currency="EUR", elements=[TariffElement(price_components=[energy])])
>>> bill = rate_session(tariff, start=t0, end=t0 + timedelta(hours=2),
...                     periods=[ChargingPeriod(t0, t0 + timedelta(hours=2), 20_000, 11_000.0)])
>>> bill.total_excl_vat_minor, bill.total_vat_minor, bill.total_minor
(500, 50, 550)
>>> line = bill.lines[0]
>>> line.component, line.volume, line.unit, line.unit_price, line.amount_excl_vat_minor
('ENERGY', Decimal('20.000000'), 'kWh', Decimal('0.25'), 500)
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from math import ceil, floor
from numbers import Integral
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing import money
from billing.exceptions import SessionError, TariffError, UnknownCurrencyError
from topics.records import BillLine, PriceComponent, Tariff, TariffRestrictions
from topics.times import EPOCH

__all__ = ["ChargingPeriod", "RatedSession", "rate_session"]

_ORDER: Final[dict[str, int]] = {"FLAT": 0, "ENERGY": 1, "TIME": 2, "PARKING_TIME": 3}
_UNIT: Final = {"FLAT": "session", "ENERGY": "kWh", "TIME": "h", "PARKING_TIME": "h"}
_PER_UNIT: Final = {"ENERGY": 1000, "TIME": 3600, "PARKING_TIME": 3600}  # Wh or s per unit
_WEEKDAYS: Final = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
_HHMM: Final = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_ONE_US: Final = timedelta(microseconds=1)
_US_PER_S: Final = 1_000_000
_HOUR_US: Final = 3600 * _US_PER_S


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class ChargingPeriod:
    """A stretch of a session with constant state: charging at some power, or idle.

    Energy is taken to flow evenly over the period, so a tariff boundary inside it (a
    time-of-day change) divides the energy in proportion to time.

    Parameters
    ----------
    start, end
        Timezone-aware; ``end > start``.
    energy_wh
        Energy delivered in the period, Wh, ``>= 0``.
    max_power_w
        Peak power in the period, W; ``0`` means not charging (idle, parking).
    max_current_a
        Optional peak current summed over phases, A, for ``min/max_current`` restrictions;
        ``None`` (the default) means unknown, and those restrictions are then ignored.

    Raises
    ------
    SessionError
        Naive datetimes, ``end <= start``, non-integer or negative energy, negative or
        non-finite power or current.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> t = datetime(2024, 1, 1, 8, tzinfo=UTC)
    >>> ChargingPeriod(t, t.replace(hour=9), 7_400, 7_400.0).energy_wh
    7400
    """

    start: datetime
    end: datetime
    energy_wh: int
    max_power_w: float
    max_current_a: float | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise SessionError(f"ChargingPeriod.{name} must be timezone-aware", field=name)
        if self.end <= self.start:
            raise SessionError("ChargingPeriod.end must be after start", field="end")
        if not isinstance(self.energy_wh, Integral) or isinstance(self.energy_wh, bool):
            raise SessionError(
                "ChargingPeriod.energy_wh must be an integer number of Wh", field="energy_wh"
            )
        if self.energy_wh < 0:
            raise SessionError("ChargingPeriod.energy_wh must be >= 0", field="energy_wh")
        _nonneg_number(self.max_power_w, "max_power_w")
        if self.max_current_a is not None:
            _nonneg_number(self.max_current_a, "max_current_a")


@dataclass(frozen=True, slots=True)
class RatedSession:
    """A session rated against its tariff: bill lines and their totals.

    ``total_excl_vat_minor``, ``total_vat_minor`` and ``total_minor`` are exactly the sums of
    the lines' columns (``total_minor = total_excl_vat_minor + total_vat_minor``).
    ``energy_wh`` is the energy delivered; ``charging_s`` and ``idle_s`` are the whole seconds
    (rounded down) charging and not charging; billing itself uses exact durations.
    """

    currency: str
    lines: tuple[BillLine, ...]
    total_excl_vat_minor: int
    total_vat_minor: int
    total_minor: int
    energy_wh: int
    charging_s: int
    idle_s: int


# --------------------------------------------------------------------------- compiled tariff


@dataclass(frozen=True, slots=True)
class _Component:
    dimension: str
    unit_price: Decimal
    vat_pct: Decimal
    step: int

    @property
    def key(self) -> tuple[str, Decimal, Decimal]:
        return (self.dimension, self.unit_price, self.vat_pct)


@dataclass(frozen=True, slots=True)
class _Restrictions:
    start_time: time | None = None
    end_time: time | None = None
    start_date: date | None = None
    end_date: date | None = None
    weekdays: frozenset[int] | None = None
    min_wh: Fraction | None = None
    max_wh: Fraction | None = None
    min_power_w: Fraction | None = None
    max_power_w: Fraction | None = None
    min_current_a: Fraction | None = None
    max_current_a: Fraction | None = None
    min_duration_us: int | None = None
    max_duration_us: int | None = None
    local: bool = False  # whether evaluating needs the local wall-clock time

    def holds(self, at: _Instant) -> bool:
        if self.local:
            wall = at.local
            if not _in_window(self.start_time, self.end_time, wall.time()):
                return False
            if self.weekdays and wall.weekday() not in self.weekdays:
                return False
            if self.start_date is not None and wall.date() < self.start_date:
                return False
            if self.end_date is not None and wall.date() >= self.end_date:
                return False
        if self.min_wh is not None and at.energy_wh < self.min_wh:
            return False
        if self.max_wh is not None and at.energy_wh >= self.max_wh:
            return False
        if self.min_power_w is not None and at.power_w < self.min_power_w:
            return False
        if self.max_power_w is not None and at.power_w >= self.max_power_w:
            return False
        if at.current_a is not None:
            if self.min_current_a is not None and at.current_a < self.min_current_a:
                return False
            if self.max_current_a is not None and at.current_a >= self.max_current_a:
                return False
        if self.min_duration_us is not None and at.elapsed_us < self.min_duration_us:
            return False
        return not (self.max_duration_us is not None and at.elapsed_us >= self.max_duration_us)


@dataclass(frozen=True, slots=True)
class _Element:
    components: dict[str, _Component]
    restrictions: _Restrictions


@dataclass(frozen=True, slots=True)
class _Compiled:
    tariff_id: str
    currency: str
    zone: tzinfo
    elements: tuple[_Element, ...]
    all_rates: frozenset[Decimal]
    min_price_minor: int | None
    max_price_minor: int | None
    local: bool  # whether any element needs the local wall-clock time

    def active(self, at: _Instant) -> dict[str, _Component]:
        found: dict[str, _Component] = {}
        for element in self.elements:
            if element.components.keys() <= found.keys():
                continue
            if element.restrictions.holds(at):
                for dimension, component in element.components.items():
                    found.setdefault(dimension, component)
        return found


@dataclass(frozen=True, slots=True)
class _Instant:
    """The state at one instant (the midpoint of a piece) that restrictions look at."""

    local: datetime
    elapsed_us: Fraction
    energy_wh: Fraction
    power_w: Fraction
    current_a: Fraction | None


def _compile(tariff: Tariff) -> _Compiled:
    tid = tariff.tariff_id
    try:
        money.minor_exponent(tariff.currency)
    except UnknownCurrencyError as exc:
        raise TariffError(str(exc), tariff_id=tid, field="currency") from exc
    try:
        zone: tzinfo = ZoneInfo(tariff.timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise TariffError(
            f"unknown timezone {tariff.timezone!r}", tariff_id=tid, field="timezone"
        ) from exc
    lo, hi = tariff.min_price_minor, tariff.max_price_minor
    if lo is not None and hi is not None and lo > hi:
        raise TariffError(
            f"min_price_minor {lo} exceeds max_price_minor {hi}",
            tariff_id=tid,
            field="min_price_minor",
        )
    if (lo is not None and lo < 0) or (hi is not None and hi < 0):
        raise TariffError("min/max price must be >= 0", tariff_id=tid, field="min_price_minor")
    elements: list[_Element] = []
    rates: set[Decimal] = set()
    for i, element in enumerate(tariff.elements):
        where = f"elements[{i}]"
        if not element.price_components:
            raise TariffError("element has no price components", tariff_id=tid, field=where)
        components: dict[str, _Component] = {}
        for j, pc in enumerate(element.price_components):
            component = _compile_component(pc, tid, f"{where}.price_components[{j}]")
            components.setdefault(component.dimension, component)
        if element.restrictions is not None and element.restrictions.reservation is not None:
            continue  # reservation costs: not part of a charging session
        rates.update(c.vat_pct for c in components.values())
        restrictions = _compile_restrictions(element.restrictions, tid, f"{where}.restrictions")
        elements.append(_Element(components, restrictions))
    return _Compiled(
        tariff_id=tid,
        currency=tariff.currency,
        zone=zone,
        elements=tuple(elements),
        all_rates=frozenset(rates),
        min_price_minor=lo,
        max_price_minor=hi,
        local=any(e.restrictions.local for e in elements),
    )


def _compile_component(pc: PriceComponent, tid: str, where: str) -> _Component:
    if pc.type not in _ORDER:
        raise TariffError(f"unknown component type {pc.type!r}", tariff_id=tid, field=where)
    if not _finite(pc.price):
        raise TariffError(f"price must be finite, got {pc.price}", tariff_id=tid, field=where)
    vat = Decimal(0) if pc.vat is None else pc.vat
    if not _finite(vat) or vat < 0:
        raise TariffError(f"vat must be >= 0, got {pc.vat}", tariff_id=tid, field=where)
    if not isinstance(pc.step_size, int) or pc.step_size < 1:
        raise TariffError(
            f"step_size must be an integer >= 1, got {pc.step_size}", tariff_id=tid, field=where
        )
    return _Component(pc.type, pc.price, vat, pc.step_size)


def _compile_restrictions(r: TariffRestrictions | None, tid: str, where: str) -> _Restrictions:
    if r is None:
        return _Restrictions()

    def hhmm(value: str | None, name: str) -> time | None:
        if value is None:
            return None
        match = _HHMM.match(value) if isinstance(value, str) else None
        if match is None:
            raise TariffError(f"{name} must be HH:MM, got {value!r}", tariff_id=tid, field=where)
        return time(int(match[1]), int(match[2]))

    def day(value: str | None, name: str) -> date | None:
        if value is None:
            return None
        try:
            return date.fromisoformat(value)
        except (TypeError, ValueError):
            raise TariffError(
                f"{name} must be YYYY-MM-DD, got {value!r}", tariff_id=tid, field=where
            ) from None

    def number(value: Decimal | None, name: str, scale: int = 1) -> Fraction | None:
        if value is None:
            return None
        if not _finite(value) or value < 0:
            raise TariffError(f"{name} must be >= 0, got {value}", tariff_id=tid, field=where)
        return Fraction(value) * scale

    weekdays: frozenset[int] | None = None
    if r.day_of_week:
        try:
            weekdays = frozenset(_WEEKDAYS.index(d) for d in r.day_of_week)
        except ValueError:
            raise TariffError(
                f"day_of_week has an unknown day: {r.day_of_week}", tariff_id=tid, field=where
            ) from None
    durations = []
    for name, value in (("min_duration", r.min_duration), ("max_duration", r.max_duration)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise TariffError(f"{name} must be >= 0, got {value}", tariff_id=tid, field=where)
        durations.append(None if value is None else value * _US_PER_S)
    start_time, end_time = hhmm(r.start_time, "start_time"), hhmm(r.end_time, "end_time")
    start_date, end_date = day(r.start_date, "start_date"), day(r.end_date, "end_date")
    return _Restrictions(
        start_time=start_time,
        end_time=end_time,
        start_date=start_date,
        end_date=end_date,
        weekdays=weekdays,
        min_wh=number(r.min_kwh, "min_kwh", 1000),
        max_wh=number(r.max_kwh, "max_kwh", 1000),
        min_power_w=number(r.min_power, "min_power", 1000),
        max_power_w=number(r.max_power, "max_power", 1000),
        min_current_a=number(r.min_current, "min_current"),
        max_current_a=number(r.max_current, "max_current"),
        min_duration_us=durations[0],
        max_duration_us=durations[1],
        local=bool(weekdays)
        or any(v is not None for v in (start_time, end_time, start_date, end_date)),
    )


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True, slots=True)
class _Segment:
    start_us: int
    end_us: int
    energy_wh: int
    energy_before_wh: int
    power_w: Fraction
    current_a: Fraction | None


@dataclass(frozen=True, slots=True)
class _Piece:
    start_us: Fraction
    end_us: Fraction
    energy_wh: Fraction
    charging: bool
    at: _Instant


def _timeline(start: datetime, end: datetime, periods: Sequence[ChargingPeriod]) -> list[_Segment]:
    """Periods in time order, with the gaps between them filled by idle segments."""
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise SessionError(f"{name} must be a timezone-aware datetime", field=name)
    start_us, end_us = _to_us(start), _to_us(end)
    if end_us <= start_us:
        raise SessionError("session end must be after its start", field="end")
    segments: list[_Segment] = []
    cursor, energy = start_us, 0
    for p in sorted(periods, key=lambda p: (_to_us(p.start), _to_us(p.end))):
        p_start, p_end = _to_us(p.start), _to_us(p.end)
        if p_start < start_us or p_end > end_us:
            raise SessionError(
                f"period {p.start.isoformat()}..{p.end.isoformat()} lies outside the session",
                field="periods",
            )
        if p_start < cursor:
            raise SessionError(
                f"period starting {p.start.isoformat()} overlaps the previous one",
                field="periods",
            )
        if p_start > cursor:
            segments.append(_Segment(cursor, p_start, 0, energy, Fraction(0), None))
        current = None if p.max_current_a is None else _exact(p.max_current_a)
        wh = int(p.energy_wh)
        segments.append(_Segment(p_start, p_end, wh, energy, _exact(p.max_power_w), current))
        cursor, energy = p_end, energy + wh
    if cursor < end_us:
        segments.append(_Segment(cursor, end_us, 0, energy, Fraction(0), None))
    return segments


def _cuts(tariff: _Compiled, start_us: int, end_us: int) -> list[int]:
    """Instants (integer microseconds) where a restriction other than kWh may change."""
    cuts: set[int] = set()
    for element in tariff.elements:
        for offset in (element.restrictions.min_duration_us, element.restrictions.max_duration_us):
            if offset is not None:
                cuts.add(start_us + offset)
    if tariff.local:
        zone = tariff.zone
        walls = {time(0, 0)}
        for element in tariff.elements:
            walls.update(
                t
                for t in (element.restrictions.start_time, element.restrictions.end_time)
                if t is not None
            )
        day = _from_us(start_us).astimezone(zone).date() - timedelta(days=1)
        last = _from_us(end_us).astimezone(zone).date() + timedelta(days=1)
        while day <= last:
            for wall in walls:
                for fold in (0, 1):  # a repeated wall time (DST fold) happens twice
                    cuts.add(_to_us(datetime.combine(day, wall, zone).replace(fold=fold)))
            day += timedelta(days=1)
        cuts.update(_offset_changes(zone, start_us, end_us))
    return sorted(c for c in cuts if start_us < c < end_us)


def _offset_changes(zone: tzinfo, start_us: int, end_us: int) -> Iterator[int]:
    """First microsecond of each UTC-offset change (DST) in ``(start_us, end_us]``.

    A wall-clock boundary inside a DST gap (02:30 on a spring-forward night) never occurs;
    the wall clock jumps over it at the transition, so the transition is a cut too.
    """
    t, offset = start_us, _offset(zone, start_us)
    while t < end_us:
        nxt = min(t + _HOUR_US, end_us)
        nxt_offset = _offset(zone, nxt)
        if nxt_offset != offset:
            lo, hi = t, nxt  # offset(lo) == offset, offset(hi) == nxt_offset
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == offset:
                    lo = mid
                else:
                    hi = mid
            yield hi
        t, offset = nxt, nxt_offset


def _pieces(
    segment: _Segment,
    cuts: list[int],
    thresholds_wh: Sequence[Fraction],
    tariff: _Compiled,
    session_start_us: int,
) -> Iterator[_Piece]:
    """Cut a segment where restrictions may change; evaluate each piece at its midpoint.

    Every point where a restriction can change is a cut, so a restriction has one value
    over a piece's interior; evaluating at the midpoint avoids deciding boundary ties.
    Time-of-day cuts are whole microseconds, so flooring the midpoint stays inside.
    """
    s, e, energy = segment.start_us, segment.end_us, segment.energy_wh
    points: set[Fraction] = {Fraction(s), Fraction(e)}
    points.update(Fraction(c) for c in cuts[bisect_right(cuts, s) : bisect_right(cuts, e - 1)])
    if energy:
        for threshold in thresholds_wh:
            share = (threshold - segment.energy_before_wh) / energy
            if 0 < share < 1:
                points.add(s + share * (e - s))
    ordered = sorted(points)
    length = Fraction(e - s)
    for a, b in pairwise(ordered):
        mid = (a + b) / 2
        at = _Instant(
            local=_from_us(floor(mid)).astimezone(tariff.zone) if tariff.local else EPOCH,
            elapsed_us=mid - session_start_us,
            energy_wh=segment.energy_before_wh + energy * (mid - s) / length,
            power_w=segment.power_w,
            current_a=segment.current_a,
        )
        yield _Piece(a, b, energy * (b - a) / length, segment.power_w > 0, at)


# --------------------------------------------------------------------------- rating


def rate_session(
    tariff: Tariff,
    *,
    start: datetime,
    end: datetime,
    periods: Sequence[ChargingPeriod],
) -> RatedSession:
    """Rate one charging session against an OCPI 2.2.1 tariff.

    See the module docstring for the semantics: active elements per dimension, step_size on
    each dimension's total, restrictions, VAT and min/max price.

    Parameters
    ----------
    tariff
        The tariff the session was started under.
    start, end
        The session, timezone-aware; time not covered by ``periods`` is idle (parking).
    periods
        Non-overlapping stretches inside ``[start, end]``, in any order.

    Returns
    -------
    RatedSession
        Lines in the order FLAT, ENERGY, TIME, PARKING_TIME (each by first use), then any
        MIN_PRICE/MAX_PRICE adjustment; one line per (component, unit price, VAT).

    Raises
    ------
    TariffError
        The tariff cannot be rated (unknown currency or timezone, malformed restriction).
    SessionError
        Naive datetimes, ``end <= start``, overlapping periods or periods outside the session.

    Examples
    --------
    Parking billed per started 15 minutes: 40 minutes parked cost 45.

    >>> from datetime import UTC, datetime, timedelta
    >>> from decimal import Decimal
    >>> from topics.records import PriceComponent, Tariff, TariffElement
    >>> t0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
    >>> parking = PriceComponent(type="PARKING_TIME", price=Decimal(2), step_size=900)
    >>> tariff = Tariff(event_id="e1", event_time=t0, source="doc", tariff_id="P1",
    ...                 currency="EUR", elements=[TariffElement(price_components=[parking])])
    >>> bill = rate_session(tariff, start=t0, end=t0 + timedelta(minutes=40), periods=[])
    >>> bill.lines[0].volume, bill.total_minor, bill.idle_s
    (Decimal('0.750000'), 150, 2400)
    """
    compiled = _compile(tariff)
    segments = _timeline(start, end, periods)
    start_us, end_us = _to_us(start), _to_us(end)
    cuts = _cuts(compiled, start_us, end_us)
    thresholds = sorted(
        {
            t
            for el in compiled.elements
            for t in (el.restrictions.min_wh, el.restrictions.max_wh)
            if t is not None
        }
    )

    volumes: dict[tuple[str, Decimal, Decimal], Fraction] = {}
    totals: dict[str, Fraction] = {}
    last: dict[str, _Component] = {}
    flat: _Component | None = None
    charging_us = idle_us = Fraction(0)
    for segment in segments:
        for piece in _pieces(segment, cuts, thresholds, compiled, start_us):
            duration_s = (piece.end_us - piece.start_us) / _US_PER_S
            if piece.charging:
                charging_us += piece.end_us - piece.start_us
            else:
                idle_us += piece.end_us - piece.start_us
            active = compiled.active(piece.at)
            if flat is None and "FLAT" in active:
                flat = active["FLAT"]
            amounts = {
                "ENERGY": piece.energy_wh,
                "TIME": duration_s if piece.charging else Fraction(0),
                "PARKING_TIME": Fraction(0) if piece.charging else duration_s,
            }
            for dimension, volume in amounts.items():
                component = active.get(dimension)
                if component is None or volume <= 0:
                    continue
                volumes[component.key] = volumes.get(component.key, Fraction(0)) + volume
                totals[dimension] = totals.get(dimension, Fraction(0)) + volume
                last[dimension] = component

    for dimension, component in last.items():  # step_size on the dimension's total
        total = totals[dimension]
        billed = ceil(total / component.step) * component.step
        volumes[component.key] += billed - total

    lines = _lines(compiled, flat, volumes)
    lines += _adjustment(compiled, lines)
    net = sum(line.amount_excl_vat_minor for line in lines)
    vat = sum(line.vat_minor for line in lines)
    return RatedSession(
        currency=compiled.currency,
        lines=tuple(lines),
        total_excl_vat_minor=net,
        total_vat_minor=vat,
        total_minor=net + vat,
        energy_wh=sum(int(p.energy_wh) for p in periods),
        charging_s=floor(charging_us / _US_PER_S),
        idle_s=floor(idle_us / _US_PER_S),
    )


def _lines(
    tariff: _Compiled,
    flat: _Component | None,
    volumes: dict[tuple[str, Decimal, Decimal], Fraction],
) -> list[BillLine]:
    """Priced lines (net rounded per line), VAT allocated over them (rounded per bill)."""
    raw: list[tuple[str, Decimal, Decimal, Decimal]] = []  # component, volume, price, vat
    if flat is not None:
        raw.append(("FLAT", Decimal(1), flat.unit_price, flat.vat_pct))
    for key in sorted(volumes, key=lambda k: _ORDER[k[0]]):  # stable: first use within type
        dimension, price, vat = key
        volume = money.quantize_volume(volumes[key] / _PER_UNIT[dimension])
        if volume:
            raw.append((dimension, volume, price, vat))
    nets = [money.line_net_minor(volume, price, tariff.currency) for _, volume, price, _ in raw]
    vats = money.allocate_vat_minor(nets, [vat for *_, vat in raw])
    return [
        BillLine(
            component=component,  # type: ignore[arg-type]
            volume=volume,
            unit=_UNIT[component],  # type: ignore[arg-type]
            unit_price=price,
            vat_pct=vat_pct,
            amount_excl_vat_minor=net,
            vat_minor=vat,
        )
        for (component, volume, price, vat_pct), net, vat in zip(raw, nets, vats, strict=True)
    ]


def _adjustment(tariff: _Compiled, lines: list[BillLine]) -> list[BillLine]:
    """The MIN_PRICE or MAX_PRICE line bringing the total incl. VAT to the limit, if any.

    The limit is split into net and VAT at one rate; the line is the difference to the
    bill's net and VAT totals, so the clamped totals are exactly that split.
    """
    net = sum(line.amount_excl_vat_minor for line in lines)
    vat = sum(line.vat_minor for line in lines)
    total = net + vat
    if tariff.max_price_minor is not None and total > tariff.max_price_minor:
        kind, delta = "MAX_PRICE", tariff.max_price_minor - total
    elif tariff.min_price_minor is not None and total < tariff.min_price_minor:
        kind, delta = "MIN_PRICE", tariff.min_price_minor - total
    else:
        return []
    rates = {line.vat_pct for line in lines} or set(tariff.all_rates)
    if len(rates) == 1:
        rate = rates.pop()
    elif net > 0 and vat >= 0:
        rate = money.quantize_pct(Fraction(vat * 100, net))
    else:
        rate = max(rates)
    limit_net, limit_vat = money.split_gross_minor(total + delta, rate)
    adj_net, adj_vat = limit_net - net, limit_vat - vat
    return [
        BillLine(
            component=kind,  # type: ignore[arg-type]
            volume=Decimal(1),
            unit="adjustment",
            unit_price=money.from_minor(adj_net, tariff.currency),
            vat_pct=rate,
            amount_excl_vat_minor=adj_net,
            vat_minor=adj_vat,
        )
    ]


# --------------------------------------------------------------------------- helpers


def _in_window(start: time | None, end: time | None, wall: time) -> bool:
    if start is None and end is None:
        return True
    if start is None:
        return wall < end  # type: ignore[operator]
    if end is None:
        return wall >= start
    if start < end:
        return start <= wall < end
    if start > end:  # crosses midnight
        return wall >= start or wall < end
    return True  # start == end: the whole day


def _to_us(moment: datetime) -> int:
    return (moment - EPOCH) // _ONE_US


def _from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _offset(zone: tzinfo, us: int) -> timedelta | None:
    return _from_us(us).astimezone(zone).utcoffset()


def _finite(value: Decimal) -> bool:
    return isinstance(value, Decimal) and value.is_finite()


def _exact(value: float) -> Fraction:
    """A float as the decimal it was written as (7.4 -> 37/5), not its binary expansion."""
    return Fraction(Decimal(repr(float(value))))


def _nonneg_number(value: float, name: str) -> None:
    try:
        ok = float(value) >= 0 and float(value) != float("inf")
    except (TypeError, ValueError):
        ok = False
    if not ok:  # also catches NaN, for which every comparison is False
        raise SessionError(f"ChargingPeriod.{name} must be a finite number >= 0", field=name)
