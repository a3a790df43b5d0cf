"""The simulated world: stations with connectors and OCPI tariffs, and drivers with tokens.

:func:`build_world` draws a fleet inside a circular region from a seeded generator:

* stations, AC (7.4 kW single-phase, 11 or 22 kW three-phase) or DC (50, 150 or 350 kW), each
  speaking OCPP 1.6 or 2.0.1, with its own way of writing meter values (Wh or kWh, W or kW,
  2.0.1 ``unitOfMeasure`` multipliers) and, on DC and some AC sites, a card payment terminal;
* one OCPI 2.2.1 tariff per station: energy only, energy plus parking, energy plus charging
  time, flat fee plus energy, or a peak/off-peak pair with time-of-day and day-of-week
  restrictions, with VAT and sometimes a minimum or maximum price;
* drivers with a home, a vehicle (battery, AC and DC limits), habits (preference for fast
  charging, target state of charge, how long they leave the car plugged in, how often they
  charge) and one token: an RFID card (prepaid account), an app (wallet with a card on
  file), a roaming eMAID (settled by a hub), or a bank card used at a terminal.

Tokens and card fingerprints exist raw only inside the simulator (they go on the wire in
OCPP frames, as a charger sends them); every label names them by
:func:`topics.identity.hash_identifier`, as ingest will.

Examples
--------
>>> from topics.simulation.config import SimulationConfig
>>> world = build_world(SimulationConfig(seed=1, stations=4, drivers=10), hash_secret=b"k")
>>> len(world.stations), len(world.drivers)
(4, 10)
>>> world.stations[0].record.station_id, world.stations[0].tariff.currency
('VG-00001', 'EUR')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np

from billing.rating import ChargingPeriod, rate_session
from topics.identity import hash_identifier, stable_id
from topics.records import (
    Connector,
    PriceComponent,
    Station,
    Tariff,
    TariffElement,
    TariffRestrictions,
)
from topics.simulation.config import SimulationConfig

__all__ = ["SOURCE", "Driver", "StationProfile", "World", "build_world", "km_between"]

SOURCE = "voltguard-simulator"
"""``source`` of every record the simulator makes itself (reference data, labels)."""

_KM_PER_DEG_LAT = 111.32
_AC_POWERS = ((7400, "AC_1_PHASE"), (11000, "AC_3_PHASE"), (22000, "AC_3_PHASE"))
_AC_POWER_P = (0.25, 0.45, 0.30)
_DC_POWERS = (50_000, 150_000, 350_000)
_DC_POWER_P = (0.35, 0.45, 0.20)
_VAT = {"EUR": Decimal("19"), "CHF": Decimal("8.1"), "GBP": Decimal("20"), "USD": Decimal("0")}
_WEEKDAYS = ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY"]
_AC_TARIFFS = (("energy", 0.35), ("energy_parking", 0.25), ("tod", 0.2), ("flat_energy", 0.2))
_DC_TARIFFS = (("energy", 0.3), ("energy_time", 0.2), ("tod", 0.2), ("energy_parking", 0.3))
_TOKEN_KINDS = ("rfid", "app", "emaid", "card")
_TOKEN_P = (0.35, 0.30, 0.20, 0.15)
_METHOD = {"rfid": "prepaid", "app": "wallet", "emaid": "roaming", "card": "card"}
_TOKEN_TYPE_201 = {"rfid": "ISO14443", "app": "Central", "emaid": "eMAID", "card": "Central"}
_ENERGY_FORMATS_201 = (("Wh", 0), ("Wh", 3), ("kWh", 0))
_POWER_FORMATS_201 = (("W", 0), ("W", 3), ("kW", 0))


@dataclass(frozen=True, slots=True)
class StationProfile:
    """A station as the simulator drives it: its reference record plus wire habits.

    ``evse_power_w[i]`` and ``evse_power_type[i]`` describe EVSE ``i + 1`` (one connector
    each, connector id 1). ``energy_format``/``power_format`` are ``(unit, multiplier)``; on
    1.6 the multiplier is always 0 and the unit is ``Wh``/``kWh`` or ``W``/``kW``.
    ``tod_boundaries`` are the local ``(hour, minute)`` instants where the tariff's
    time-of-day restrictions switch; the station sends a clock-aligned meter value there.
    """

    index: int
    record: Station
    tariff: Tariff
    protocol: str
    dc: bool
    x_km: float
    y_km: float
    evse_power_w: tuple[int, ...]
    evse_power_type: tuple[str, ...]
    terminal_id: str | None
    energy_format: tuple[str, int]
    power_format: tuple[str, int]
    tod_boundaries: tuple[tuple[int, int], ...]
    tariff_kind: str
    voltage_offsets: tuple[float, float, float]

    @property
    def station_id(self) -> str:
        """The station's id."""
        return self.record.station_id


@dataclass(frozen=True, slots=True)
class Driver:
    """A driver: token, payment method, home, vehicle and habits.

    ``method`` follows the token: RFID -> ``prepaid``, app -> ``wallet``, eMAID ->
    ``roaming``, bank card at a terminal -> ``card``.
    """

    index: int
    driver_id: str
    token_kind: str
    id_tag: str
    id_token_type: str
    token_hash: str
    method: str
    card_fingerprint_hash: str | None
    home_x_km: float
    home_y_km: float
    battery_wh: int
    ac_max_w: int
    dc_max_w: int
    dc_voltage_v: float
    prefers_dc: float
    target_soc: float
    idle_median_s: float
    weight: float


@dataclass(frozen=True, slots=True)
class World:
    """Stations, tariffs and drivers of one simulation, plus the designated anomalies.

    The numpy arrays are per-station (``st_*``) or per-driver (``drv_*``) columns used by the
    session planner. ``anomaly_station`` inflates reported energy by ``anomaly_factor`` in
    sessions labelled ``anomaly:energy_inflation``; ``night_drivers`` are the (up to three)
    tokens that turn up at unusual hours (``anomaly:unusual_hours``).
    """

    config: SimulationConfig
    tz: ZoneInfo
    stations: tuple[StationProfile, ...]
    drivers: tuple[Driver, ...]
    st_x: np.ndarray
    st_y: np.ndarray
    st_dc: np.ndarray
    st_ocpp201: np.ndarray
    st_terminal: np.ndarray
    st_parking: np.ndarray
    st_zero_cost_idle: np.ndarray
    st_no_tod: np.ndarray
    drv_weight_cdf: np.ndarray
    drv_method: np.ndarray
    anomaly_station: int
    anomaly_factor: float
    night_drivers: tuple[int, ...]

    @property
    def tariffs(self) -> tuple[Tariff, ...]:
        """Every station's tariff, in station order."""
        return tuple(s.tariff for s in self.stations)


def km_between(ax: float, ay: float, bx: float, by: float) -> float:
    """Distance in km between two points given in km east/north of the region centre.

    >>> km_between(0.0, 0.0, 3.0, 4.0)
    5.0
    """
    return math.hypot(ax - bx, ay - by)


def _money(cents: int) -> Decimal:
    return Decimal(cents) / Decimal(100)


def _tariff(
    rng: np.random.Generator, *, station_id: str, dc: bool, currency: str, cfg: SimulationConfig
) -> tuple[Tariff, str, tuple[tuple[int, int], ...]]:
    kinds, weights = zip(*(_DC_TARIFFS if dc else _AC_TARIFFS), strict=True)
    kind = str(kinds[int(rng.choice(len(kinds), p=weights))])
    vat = _VAT.get(currency, Decimal("20"))
    energy = _money(int(rng.integers(45, 70) if dc else rng.integers(28, 50)))
    parts: list[PriceComponent] = [PriceComponent(type="ENERGY", price=energy, vat=vat)]
    boundaries: tuple[tuple[int, int], ...] = ()
    elements: list[TariffElement]
    if kind == "energy_parking":
        per_h = _money(int(rng.integers(300, 720) if dc else rng.integers(100, 300)))
        parts.append(PriceComponent(type="PARKING_TIME", price=per_h, vat=vat, step_size=60))
        elements = [TariffElement(price_components=parts)]
    elif kind == "energy_time":
        per_h = _money(int(rng.integers(240, 600)))
        parts.append(PriceComponent(type="TIME", price=per_h, vat=vat, step_size=60))
        elements = [TariffElement(price_components=parts)]
    elif kind == "flat_energy":
        flat = _money(int(rng.integers(25, 100)))
        parts.insert(0, PriceComponent(type="FLAT", price=flat, vat=vat))
        elements = [TariffElement(price_components=parts)]
    elif kind == "tod":
        off_peak = _money(int(rng.integers(25, 40) if not dc else rng.integers(40, 55)))
        peak_start, peak_end = (7, 0), (22, 0)
        boundaries = (peak_start, peak_end)
        restrictions = TariffRestrictions(
            start_time=f"{peak_start[0]:02d}:{peak_start[1]:02d}",
            end_time=f"{peak_end[0]:02d}:{peak_end[1]:02d}",
            day_of_week=list(_WEEKDAYS),  # type: ignore[arg-type]
        )
        elements = [
            TariffElement(price_components=parts, restrictions=restrictions),
            TariffElement(
                price_components=[PriceComponent(type="ENERGY", price=off_peak, vat=vat)]
            ),
        ]
    else:
        elements = [TariffElement(price_components=parts)]
    min_price = int(rng.integers(100, 300)) if rng.random() < 0.1 else None
    max_price = int(rng.integers(6000, 12000)) if rng.random() < 0.05 else None
    tariff = Tariff(
        event_id=stable_id("tariff", station_id, 1),
        event_time=cfg.start,
        source=SOURCE,
        tariff_id=f"T-{station_id}",
        currency=currency,
        elements=elements,
        min_price_minor=min_price,
        max_price_minor=max_price,
        timezone=cfg.timezone,
    )
    return tariff, kind, boundaries


def _free_of_charge_when_idle(tariff: Tariff, cfg: SimulationConfig) -> bool:
    """Whether a 10-minute session without energy rates to zero (no flat, parking, minimum)."""
    start = cfg.start
    end = start + timedelta(minutes=10)
    rated = rate_session(tariff, start=start, end=end, periods=[ChargingPeriod(start, end, 0, 0.0)])
    return rated.total_minor == 0


def _hex(rng: np.random.Generator, digits: int) -> str:
    value = int(rng.integers(0, 16**digits if digits <= 15 else 2**62))
    return f"{value:0{digits}X}"[-digits:]


def build_world(
    config: SimulationConfig, *, hash_secret: bytes, rng: np.random.Generator | None = None
) -> World:
    """Draw the stations, tariffs and drivers of a simulation.

    Parameters
    ----------
    config
        The run's settings (size, region, timezone, shares of DC and OCPP 2.0.1).
    hash_secret
        Secret of :func:`topics.identity.hash_identifier` for token and card hashes.
    rng
        Generator to draw from; by default one seeded with ``config.seed`` (the simulation
        passes a spawned child so the world does not depend on the session count).

    Examples
    --------
    >>> from topics.simulation.config import SimulationConfig
    >>> cfg = SimulationConfig(seed=3, stations=5, drivers=20)
    >>> a = build_world(cfg, hash_secret=b"k")
    >>> b = build_world(cfg, hash_secret=b"k")
    >>> [s.record for s in a.stations] == [s.record for s in b.stations]
    True
    """
    if rng is None:
        rng = np.random.default_rng(config.seed)
    tz = ZoneInfo(config.timezone)
    n_st = config.stations
    radius = config.radius_km
    lat0, lon0 = config.center_lat, config.center_lon
    km_per_deg_lon = _KM_PER_DEG_LAT * max(0.01, math.cos(math.radians(lat0)))

    r = radius * np.sqrt(rng.random(n_st))
    theta = rng.random(n_st) * 2 * math.pi
    st_x, st_y = r * np.cos(theta), r * np.sin(theta)
    st_dc = rng.random(n_st) < config.dc_share
    st_201 = rng.random(n_st) < config.ocpp201_share
    codes, cweights = zip(*config.currencies, strict=True)
    cp = np.asarray(cweights, dtype=float)
    cp = cp / cp.sum() if cp.sum() > 0 else np.full(len(cp), 1 / len(cp))

    stations: list[StationProfile] = []
    for i in range(n_st):
        station_id = f"VG-{i + 1:05d}"
        dc = bool(st_dc[i])
        if dc:
            n_evse = int(rng.integers(2, 7))
            power = _DC_POWERS[int(rng.choice(3, p=_DC_POWER_P))]
            evse_power = tuple([power] * n_evse)
            evse_type = tuple(["DC"] * n_evse)
            standard = "IEC_62196_T2_COMBO"
        else:
            n_evse = int(rng.integers(1, 3))
            power, ptype = _AC_POWERS[int(rng.choice(3, p=_AC_POWER_P))]
            evse_power = tuple([power] * n_evse)
            evse_type = tuple([ptype] * n_evse)
            standard = "IEC_62196_T2"
        currency = str(codes[int(rng.choice(len(codes), p=cp))])
        tariff, tariff_kind, boundaries = _tariff(
            rng, station_id=station_id, dc=dc, currency=currency, cfg=config
        )
        has_terminal = dc or rng.random() < 0.25
        protocol = "ocpp2.0.1" if st_201[i] else "ocpp1.6"
        if protocol == "ocpp1.6":
            energy_format = ("kWh", 0) if rng.random() < 0.4 else ("Wh", 0)
            power_format = ("kW", 0) if rng.random() < 0.4 else ("W", 0)
        else:
            energy_format = _ENERGY_FORMATS_201[int(rng.integers(0, 3))]
            power_format = _POWER_FORMATS_201[int(rng.integers(0, 3))]
        lat = lat0 + float(st_y[i]) / _KM_PER_DEG_LAT
        lon = lon0 + float(st_x[i]) / km_per_deg_lon
        record = Station(
            event_id=stable_id("station", station_id, 1),
            event_time=config.start,
            source=SOURCE,
            station_id=station_id,
            name=f"{'Fast charger' if dc else 'Charging point'} {i + 1}",
            operator_id="VGD",
            lat=round(max(-90.0, min(90.0, lat)), 6),
            lon=round(((lon + 180.0) % 360.0) - 180.0, 6),
            timezone=config.timezone,
            group=("HPC" if power >= 150_000 else "DC") if dc else "AC",
            tariff_id=tariff.tariff_id,
            connectors=[
                Connector(
                    evse_id=e + 1,
                    connector_id=1,
                    standard=standard,
                    power_type=evse_type[e],  # type: ignore[arg-type]
                    max_power_w=evse_power[e],
                )
                for e in range(n_evse)
            ],
        )
        offsets = rng.normal(0.0, 2.0, size=3)
        stations.append(
            StationProfile(
                index=i,
                record=record,
                tariff=tariff,
                protocol=protocol,
                dc=dc,
                x_km=float(st_x[i]),
                y_km=float(st_y[i]),
                evse_power_w=evse_power,
                evse_power_type=evse_type,
                terminal_id=f"TRM-{station_id}" if has_terminal else None,
                energy_format=energy_format,
                power_format=power_format,
                tod_boundaries=boundaries,
                tariff_kind=tariff_kind,
                voltage_offsets=(float(offsets[0]), float(offsets[1]), float(offsets[2])),
            )
        )

    drivers = _drivers(rng, config, hash_secret)
    weights = np.array([d.weight for d in drivers])
    methods = np.array([d.method for d in drivers])
    non_card = np.flatnonzero(methods != "card")
    pool = non_card if len(non_card) else np.arange(len(drivers))
    multi_dc = np.flatnonzero([s.dc and len(s.evse_power_w) > 1 for s in stations])
    candidates = multi_dc if len(multi_dc) else np.arange(n_st)
    night = rng.choice(pool, size=min(3, len(pool)), replace=False)
    return World(
        config=config,
        tz=tz,
        stations=tuple(stations),
        drivers=drivers,
        st_x=st_x,
        st_y=st_y,
        st_dc=st_dc,
        st_ocpp201=st_201,
        st_terminal=np.array([s.terminal_id is not None for s in stations]),
        st_parking=np.array([s.tariff_kind == "energy_parking" for s in stations]),
        st_zero_cost_idle=np.array([_free_of_charge_when_idle(s.tariff, config) for s in stations]),
        st_no_tod=np.array([not s.tod_boundaries for s in stations]),
        drv_weight_cdf=np.cumsum(weights) / weights.sum(),
        drv_method=methods,
        anomaly_station=int(candidates[int(rng.integers(0, len(candidates)))]),
        anomaly_factor=round(float(rng.uniform(1.10, 1.25)), 3),
        night_drivers=tuple(sorted(int(i) for i in night)),
    )


def _drivers(
    rng: np.random.Generator, config: SimulationConfig, secret: bytes
) -> tuple[Driver, ...]:
    n = config.driver_count
    radius = config.radius_km
    kinds = rng.choice(len(_TOKEN_KINDS), size=n, p=_TOKEN_P)
    hx = np.clip(rng.normal(0.0, radius / 2, size=n), -radius, radius)
    hy = np.clip(rng.normal(0.0, radius / 2, size=n), -radius, radius)
    battery = rng.choice([40_000, 52_000, 58_000, 64_000, 77_000, 82_000, 100_000], size=n)
    ac_max = rng.choice([7400, 11000, 11000, 22000], size=n)
    dc_max = rng.choice([50_000, 100_000, 150_000, 200_000, 270_000], size=n)
    prefers_dc = rng.beta(1.2, 3.0, size=n)
    target = rng.uniform(0.8, 1.0, size=n)
    idle = rng.lognormal(math.log(5400), 0.9, size=n)
    weight = rng.lognormal(0.0, 0.8, size=n)
    out = []
    for i in range(n):
        kind = _TOKEN_KINDS[int(kinds[i])]
        if kind == "rfid":
            id_tag = _hex(rng, 8 if rng.random() < 0.6 else 14)
        elif kind == "app":
            id_tag = "APP" + _hex(rng, 12)
        elif kind == "emaid":
            id_tag = "DEVGDC" + _hex(rng, 8) + str(int(rng.integers(0, 10)))
        else:
            id_tag = "PT" + _hex(rng, 14)
        fingerprint = None
        if kind in ("app", "card"):
            fingerprint = hash_identifier("fp_" + _hex(rng, 16), secret)
        out.append(
            Driver(
                index=i,
                driver_id=f"D{i + 1:06d}",
                token_kind=kind,
                id_tag=id_tag,
                id_token_type=_TOKEN_TYPE_201[kind],
                token_hash=hash_identifier(id_tag, secret),
                method=_METHOD[kind],
                card_fingerprint_hash=fingerprint,
                home_x_km=float(hx[i]),
                home_y_km=float(hy[i]),
                battery_wh=int(battery[i]),
                ac_max_w=int(ac_max[i]),
                dc_max_w=int(dc_max[i]),
                dc_voltage_v=800.0 if dc_max[i] >= 200_000 else 400.0,
                prefers_dc=float(prefers_dc[i]),
                target_soc=float(target[i]),
                idle_median_s=float(idle[i]),
                weight=float(weight[i]),
            )
        )
    return tuple(out)
