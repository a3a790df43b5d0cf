"""Configuration of a simulation run: one frozen dataclass, validated on construction.

Everything that shapes the simulated world is an argument here (seed, start, size, region,
fault rates); the core never reads the environment or the clock. The CLI builds one
:class:`SimulationConfig` from its options and passes it down.

Examples
--------
>>> cfg = SimulationConfig(seed=7, sessions=100, stations=10)
>>> cfg.effective_rates()["meter_rollback"]
0.002
>>> cfg = SimulationConfig(fault_scale=0.0)
>>> sum(cfg.effective_rates().values())
0.0
>>> SimulationConfig(stations=0)
Traceback (most recent call last):
...
topics.simulation.config.SimulationConfigError: stations: must be at least 1, got 0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from topics.exceptions import TopicsError
from topics.simulation.faults import ALL_KINDS, DEFAULT_FAULT_RATES

__all__ = ["DEFAULT_START", "SimulationConfig", "SimulationConfigError"]

DEFAULT_START = datetime(2024, 5, 6, tzinfo=UTC)
"""A Monday, 00:00 UTC."""


class SimulationConfigError(TopicsError, ValueError):
    """A simulation setting is out of range; the message starts with the setting's name."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Everything that shapes a simulated fleet and its traffic.

    Parameters
    ----------
    seed
        Seed of the one :class:`numpy.random.Generator` tree the run draws from. Same seed and
        same settings give the same bytes.
    start
        Simulated UTC start (timezone-aware).
    sessions
        Number of charging sessions to simulate. When ``None`` it follows from ``duration_s``
        and ``sessions_per_station_day``; when both are ``None``, 1000.
    duration_s
        Simulated span over which session arrivals are spread, in seconds. When ``None`` it
        follows from ``sessions`` and ``sessions_per_station_day``.
    stations
        Number of charging stations.
    drivers
        Number of drivers (each with one token). ``None``: ten per station, at least 50.
    center_lat, center_lon, radius_km
        The region: stations and homes lie within ``radius_km`` of the centre.
    timezone
        IANA zone of the region: local time of the daily arrival curve and of tariff
        time-of-day restrictions.
    sample_interval_s
        Meter sampling interval (OCPP MeterValueSampleInterval), seconds.
    sessions_per_station_day
        Mean arrivals per station and day, used to derive the span or the session count.
    ocpp201_share
        Share of stations speaking OCPP 2.0.1 (the rest speak 1.6).
    dc_share
        Share of DC fast-charging stations (the rest are AC).
    currencies
        ``(currency, weight)`` pairs for tariff currencies.
    fault_rates
        Per-session probability of each fault, anomaly or honest oddity kind
        (see :data:`topics.simulation.faults.ALL_KINDS`). Missing kinds use the default.
    fault_scale
        Multiplies every rate (0 turns all injection off).
    fault_filter
        When given, only these kinds are injected.
    """

    seed: int = 0
    start: datetime = DEFAULT_START
    sessions: int | None = None
    duration_s: int | None = None
    stations: int = 200
    drivers: int | None = None
    center_lat: float = 52.52
    center_lon: float = 13.405
    radius_km: float = 25.0
    timezone: str = "Europe/Berlin"
    sample_interval_s: int = 60
    sessions_per_station_day: float = 6.0
    ocpp201_share: float = 0.35
    dc_share: float = 0.3
    currencies: tuple[tuple[str, float], ...] = (("EUR", 1.0),)
    fault_rates: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_FAULT_RATES))
    )
    fault_scale: float = 1.0
    fault_filter: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise SimulationConfigError("start", f"must be timezone-aware, got {self.start}")
        if self.sessions is not None and self.sessions < 0:
            raise SimulationConfigError("sessions", f"must be >= 0, got {self.sessions}")
        if self.duration_s is not None and self.duration_s < 60:
            raise SimulationConfigError("duration_s", f"must be >= 60 s, got {self.duration_s}")
        if self.stations < 1:
            raise SimulationConfigError("stations", f"must be at least 1, got {self.stations}")
        if self.drivers is not None and self.drivers < 2:
            raise SimulationConfigError("drivers", f"must be at least 2, got {self.drivers}")
        if not -90 <= self.center_lat <= 90 or not -180 <= self.center_lon <= 180:
            raise SimulationConfigError("center", "latitude/longitude out of range")
        if not 0.5 <= self.radius_km <= 2000:
            raise SimulationConfigError("radius_km", f"must be 0.5-2000, got {self.radius_km}")
        if not 5 <= self.sample_interval_s <= 3600:
            raise SimulationConfigError(
                "sample_interval_s", f"must be 5-3600 s, got {self.sample_interval_s}"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise SimulationConfigError("timezone", f"unknown IANA zone {self.timezone!r}") from exc
        if self.sessions_per_station_day <= 0:
            raise SimulationConfigError("sessions_per_station_day", "must be > 0")
        for name in ("ocpp201_share", "dc_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SimulationConfigError(name, f"must be 0-1, got {getattr(self, name)}")
        if not self.currencies or any(
            len(c) != 3 or not c.isalpha() or not c.isupper() or w < 0 for c, w in self.currencies
        ):
            raise SimulationConfigError(
                "currencies", f"bad (code, weight) pairs: {self.currencies}"
            )
        unknown = set(self.fault_rates) - set(ALL_KINDS)
        if self.fault_filter is not None:
            unknown |= set(self.fault_filter) - set(ALL_KINDS)
        if unknown:
            raise SimulationConfigError(
                "faults", f"unknown kind(s) {sorted(unknown)}; known: {', '.join(ALL_KINDS)}"
            )
        if any(r < 0 for r in self.fault_rates.values()) or self.fault_scale < 0:
            raise SimulationConfigError("fault_rate", "rates and scale must be >= 0")

    @property
    def driver_count(self) -> int:
        """Drivers in the world (``drivers`` or ten per station, at least 50)."""
        return self.drivers if self.drivers is not None else max(50, 10 * self.stations)

    def effective_rates(self) -> dict[str, float]:
        """Per-session probability of every kind after defaults, filter and scale.

        When the scaled rates add up to more than 1 they are normalised to sum to 1 (every
        session then carries exactly one kind).
        """
        rates: dict[str, float] = {}
        for kind in ALL_KINDS:
            rate = self.fault_rates.get(kind, DEFAULT_FAULT_RATES[kind])
            if self.fault_filter is not None and kind not in self.fault_filter:
                rate = 0.0
            rates[kind] = rate * self.fault_scale
        total = sum(rates.values())
        if total > 1.0:
            rates = {k: v / total for k, v in rates.items()}
        return rates
