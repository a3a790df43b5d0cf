"""Small builders for tariffs and sessions in billing tests (plain functions, no fixtures)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from billing.rating import ChargingPeriod, RatedSession
from topics.records import PriceComponent, Tariff, TariffElement, TariffRestrictions

__all__ = ["charge", "comp", "el", "lines_by", "local", "tariff"]

_EVENT_TIME = datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC"))


def comp(
    kind: str, price: str | int, vat: str | int | None = None, step: int = 1
) -> PriceComponent:
    """A price component; prices and VAT as strings or ints so they stay exact Decimals."""
    return PriceComponent(
        type=kind,  # type: ignore[arg-type]
        price=Decimal(price),
        vat=None if vat is None else Decimal(vat),
        step_size=step,
    )


def el(*components: PriceComponent, **restrictions: Any) -> TariffElement:
    """A tariff element; keyword arguments become its TariffRestrictions."""
    for key in ("min_kwh", "max_kwh", "min_power", "max_power", "min_current", "max_current"):
        if key in restrictions:
            restrictions[key] = Decimal(restrictions[key])
    return TariffElement(
        price_components=list(components),
        restrictions=TariffRestrictions(**restrictions) if restrictions else None,
    )


def tariff(
    *elements: TariffElement,
    currency: str = "EUR",
    tz: str = "Europe/Berlin",
    min_price: int | None = None,
    max_price: int | None = None,
) -> Tariff:
    """A tariff (local times in ``tz``); min/max prices in minor units incl. VAT."""
    return Tariff(
        event_id="tariff-event",
        event_time=_EVENT_TIME,
        source="test",
        tariff_id="T-test",
        currency=currency,
        elements=list(elements),
        min_price_minor=min_price,
        max_price_minor=max_price,
        timezone=tz,
    )


def local(text: str, tz: str = "Europe/Berlin") -> datetime:
    """``"2024-06-03 09:30"`` as an aware datetime in ``tz``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))


def charge(
    start: datetime,
    *,
    minutes: float = 0,
    seconds: int = 0,
    wh: int = 0,
    kw: float = 11.0,
    amps: float | None = None,
) -> ChargingPeriod:
    """A charging period of ``minutes`` (+ ``seconds``) delivering ``wh`` at peak ``kw``."""
    end = start + timedelta(minutes=minutes, seconds=seconds)
    return ChargingPeriod(start, end, wh, kw * 1000, amps)


def lines_by(bill: RatedSession) -> dict[tuple[str, Decimal], tuple[Decimal, int, int]]:
    """``{(component, unit_price): (volume, net, vat)}`` for compact assertions."""
    return {
        (line.component, line.unit_price): (
            line.volume,
            line.amount_excl_vat_minor,
            line.vat_minor,
        )
        for line in bill.lines
    }
