"""Sessions: arrivals on a daily curve, who charges where, charging curves and meter samples.

* :func:`draw_arrivals` spreads arrivals over the simulated span following
  :data:`DAILY_CURVE` (local time, quieter at weekends).
* :class:`Planner` picks a driver that is free and a station near their home (fast chargers
  for drivers who prefer them, card terminals for card payers), never further from the
  driver's previous session than a car could have travelled since, and an EVSE that is free
  (the driver waits up to half an hour).
* :func:`plan_charge` runs the charging curve tick by tick: AC charges at the lower of the
  connector's and the vehicle's limit and tapers above 92 % SoC; DC tapers from 55 % SoC.
  Power never exceeds the connector's maximum. After charging the car may stay plugged in
  (idle / parking tail); some drivers unplug before the target.
* :func:`build_samples` lays the meter samples: Transaction.Begin, one Sample.Periodic every
  sample interval, one Sample.Clock at every tariff time-of-day boundary (so a session can
  be rated from its readings alone), and Transaction.End.

Examples
--------
>>> curve_weight(8), curve_weight(3) < curve_weight(8)
(1.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from billing.periods import Sample
from topics.simulation._time import HOUR_MS, MINUTE_MS
from topics.simulation.world import Driver, StationProfile, World

__all__ = [
    "DAILY_CURVE",
    "NIGHT_HOURS",
    "ChargeProfile",
    "Planner",
    "Samples",
    "build_samples",
    "clock_boundaries",
    "csms_samples",
    "curve_weight",
    "draw_arrivals",
    "plan_charge",
]

DAILY_CURVE: tuple[float, ...] = (
    0.15, 0.08, 0.05, 0.04, 0.05, 0.12, 0.35, 0.75, 1.0, 0.85, 0.7, 0.75,
    0.85, 0.8, 0.75, 0.8, 0.95, 1.0, 0.95, 0.8, 0.6, 0.45, 0.35, 0.22,
)  # fmt: skip
"""Relative arrival rate per local hour of day (weekends x 0.8)."""

NIGHT_HOURS: tuple[int, ...] = (1, 2, 3, 4)
"""Local hours of ``anomaly:unusual_hours`` sessions."""

_MAX_WAIT_MS = 30 * MINUTE_MS
_TRAVEL_KMH = 50.0
_HOME_SCALE_KM = 6.0


def curve_weight(local_hour: int) -> float:
    """Arrival weight of a local hour (0-23) on a weekday."""
    return DAILY_CURVE[local_hour % 24]


def draw_arrivals(
    rng: np.random.Generator,
    *,
    n: int,
    start_ms: int,
    duration_ms: int,
    tz: ZoneInfo,
    night: np.ndarray | None = None,
) -> np.ndarray:
    """Arrival instants (ms, whole seconds) of ``n`` sessions; not sorted.

    Parameters
    ----------
    rng
        Generator to draw from.
    n, start_ms, duration_ms
        How many arrivals, and the span they fall in.
    tz
        Local zone of the daily curve.
    night
        Boolean mask of arrivals that must fall in :data:`NIGHT_HOURS` (local).

    Examples
    --------
    >>> import numpy as np
    >>> from zoneinfo import ZoneInfo
    >>> t = draw_arrivals(np.random.default_rng(0), n=5, start_ms=0, duration_ms=86_400_000,
    ...                   tz=ZoneInfo("UTC"))
    >>> bool(((t >= 0) & (t < 86_400_000) & (t % 1000 == 0)).all())
    True
    """
    hours = max(1, math.ceil(duration_ms / HOUR_MS))
    starts = start_ms + np.arange(hours, dtype=np.int64) * HOUR_MS
    weights = np.empty(hours)
    is_night = np.zeros(hours, dtype=bool)
    for h in range(hours):
        local = datetime.fromtimestamp(int(starts[h]) / 1000, tz)
        weights[h] = DAILY_CURVE[local.hour] * (0.8 if local.weekday() >= 5 else 1.0)
        is_night[h] = local.hour in NIGHT_HOURS
    tail = duration_ms - (hours - 1) * HOUR_MS
    weights[-1] *= tail / HOUR_MS
    picked = rng.choice(hours, size=n, p=weights / weights.sum())
    if night is not None and night.any():
        night_hours = np.flatnonzero(is_night[: max(1, hours - 1)])
        if len(night_hours):
            picked[night] = night_hours[rng.integers(0, len(night_hours), size=int(night.sum()))]
    offsets = rng.integers(0, 3600, size=n, dtype=np.int64) * 1000
    times = starts[picked] + offsets
    return np.minimum(times, start_ms + duration_ms - 1000)


@dataclass(slots=True)
class ChargeProfile:
    """What physically happened on the connector.

    ``power_w[k]`` is the constant power of tick interval ``k`` (from ``start + k * dt`` to
    ``start + (k + 1) * dt``) and ``cum_wh[k]`` the energy delivered at its start
    (``len(cum_wh) == len(power_w) + 1``). Charging ends at ``charge_end_ms`` (a tick, or
    the end when the driver unplugged mid-charge); the car stays until ``end_ms``.
    """

    start_ms: int
    end_ms: int
    charge_end_ms: int
    interval_ms: int
    power_w: list[float]
    cum_wh: list[float]
    soc: list[float] | None
    max_power_w: int
    power_type: str

    def energy_at(self, t_ms: int) -> float:
        """Energy delivered between the start and ``t_ms`` (Wh, float)."""
        k, rest = divmod(t_ms - self.start_ms, self.interval_ms)
        if k >= len(self.power_w):
            return self.cum_wh[-1]
        if k < 0:
            return 0.0
        return self.cum_wh[k] + self.power_w[k] * rest / 3_600_000

    def power_at(self, t_ms: int) -> float:
        """Power of the interval ending at ``t_ms`` (the first interval at the start)."""
        if t_ms > self.charge_end_ms or not self.power_w:
            return 0.0
        k = max(0, -(-(t_ms - self.start_ms) // self.interval_ms) - 1)
        return self.power_w[min(k, len(self.power_w) - 1)]

    def soc_at(self, t_ms: int) -> float | None:
        """State of charge (0-1) at ``t_ms``, DC only."""
        soc = self.soc
        if soc is None:
            return None
        k, rest = divmod(t_ms - self.start_ms, self.interval_ms)
        if k >= len(soc) - 1:
            return soc[-1]
        return soc[k] + (soc[k + 1] - soc[k]) * rest / self.interval_ms


def plan_charge(
    rng: np.random.Generator,
    *,
    station: StationProfile,
    evse_index: int,
    driver: Driver,
    start_ms: int,
    interval_s: int,
    zero_energy: bool = False,
    long_idle: bool = False,
) -> ChargeProfile:
    """Run one session's charging curve.

    Parameters
    ----------
    rng
        Generator to draw from.
    station, evse_index, driver
        Where and who; power is capped by the connector and the vehicle.
    start_ms
        Transaction start (whole seconds).
    interval_s
        Meter sampling interval = tick of the curve.
    zero_energy
        The vehicle takes no energy; the driver gives up after 1-5 minutes.
    long_idle
        The car stays plugged in 6-14 hours after charging.

    Examples
    --------
    >>> import numpy as np
    >>> from topics.simulation.config import SimulationConfig
    >>> from topics.simulation.world import build_world
    >>> w = build_world(SimulationConfig(seed=2, stations=3, drivers=5), hash_secret=b"k")
    >>> p = plan_charge(np.random.default_rng(0), station=w.stations[0], evse_index=0,
    ...                 driver=w.drivers[0], start_ms=0, interval_s=60)
    >>> max(p.power_w) <= p.max_power_w and p.charge_end_ms <= p.end_ms
    True
    """
    dt_ms = interval_s * 1000
    conn_max = station.evse_power_w[evse_index]
    ptype = station.evse_power_type[evse_index]
    dc = ptype == "DC"
    if zero_energy:
        end_ms = start_ms + int(rng.integers(60, 300)) * 1000
        return ChargeProfile(
            start_ms, end_ms, start_ms, dt_ms, [], [0.0], [0.5] if dc else None, conn_max, ptype
        )
    battery = driver.battery_wh
    if dc:
        cap = min(conn_max, driver.dc_max_w)
        soc = float(rng.uniform(0.08, 0.45))
        target = min(driver.target_soc, float(rng.uniform(0.75, 0.9)))
        efficiency = 0.95
    else:
        cap = min(conn_max, driver.ac_max_w)
        soc = float(rng.uniform(0.2, 0.7))
        target = driver.target_soc
        efficiency = 0.92
    max_ticks = (48 * 3600) // interval_s
    noise = rng.uniform(0.96, 1.0, size=64)
    powers: list[float] = []
    cum = [0.0]
    socs = [soc]
    energy = 0.0
    k = 0
    while soc < target and k < max_ticks:
        if dc:
            taper = 1.0 if soc < 0.55 else max(0.12, 1.0 - (soc - 0.55) * 1.9)
            if k == 0:
                taper *= 0.6
        else:
            taper = 1.0 if soc < 0.92 else max(0.15, 1.0 - (soc - 0.92) * 10.0)
        p = min(cap * taper * float(noise[k & 63]), float(conn_max))
        p = round(max(p, 1000.0), 1)
        e = p * interval_s / 3600.0
        energy += e
        soc = min(1.0, soc + e * efficiency / battery)
        powers.append(p)
        cum.append(energy)
        socs.append(soc)
        k += 1
    charge_end = start_ms + len(powers) * dt_ms
    if dc:
        idle_s = int(rng.uniform(30, 480))
        if long_idle:
            idle_s = int(rng.uniform(6, 14) * 3600)
        end_ms = charge_end + idle_s * 1000
        if not long_idle and rng.random() < 0.2 and len(powers) > 3:
            # Driver stops early, mid-charge.
            cut = int(rng.integers(2, len(powers)))
            end_ms = start_ms + cut * dt_ms - int(rng.integers(1, interval_s)) * 1000
            charge_end = end_ms
    else:
        idle_s = float(rng.lognormal(math.log(driver.idle_median_s), 0.6))
        if long_idle:
            idle_s = float(rng.uniform(6, 14) * 3600)
        end_ms = charge_end + int(idle_s) * 1000
        if not long_idle and rng.random() < 0.3:
            leave = start_ms + int(rng.lognormal(math.log(2.5 * 3600), 0.5)) * 1000
            if leave < charge_end and leave > start_ms + dt_ms:
                end_ms = charge_end = leave
    return ChargeProfile(
        start_ms=start_ms,
        end_ms=end_ms,
        charge_end_ms=charge_end,
        interval_ms=dt_ms,
        power_w=powers,
        cum_wh=cum,
        soc=socs if dc else None,
        max_power_w=conn_max,
        power_type=ptype,
    )


def clock_boundaries(
    start_ms: int, end_ms: int, tz: ZoneInfo, boundaries: tuple[tuple[int, int], ...]
) -> list[int]:
    """Instants strictly inside ``(start_ms, end_ms)`` at the local ``(hour, minute)`` marks.

    >>> from zoneinfo import ZoneInfo
    >>> clock_boundaries(0, 86_400_000, ZoneInfo("UTC"), ((7, 0), (22, 0)))
    [25200000, 79200000]
    """
    if not boundaries:
        return []
    out: list[int] = []
    day = datetime.fromtimestamp(start_ms / 1000, tz).date()
    last = datetime.fromtimestamp(end_ms / 1000, tz).date()
    while day <= last:
        for hour, minute in boundaries:
            local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
            t = int(local.timestamp()) * 1000
            if start_ms < t < end_ms:
                out.append(t)
        day += timedelta(days=1)
    return sorted(out)


@dataclass(slots=True)
class Samples:
    """The meter samples of a session, in time order (true time, true energy).

    ``breaks`` are the sample indices where a rated charging period starts or ends: begin,
    every Sample.Clock, the end of charging, and the end.
    """

    times_ms: list[int]
    contexts: list[str]
    energy_wh: list[float]
    power_w: list[float]
    soc_pct: list[float] | None
    breaks: list[int]
    charge_end_index: int


def build_samples(profile: ChargeProfile, clocks: list[int]) -> Samples:
    """Lay the meter samples of ``profile`` (see the module docstring).

    >>> p = ChargeProfile(0, 200_000, 120_000, 60_000, [7000.0, 7000.0], [0.0, 116.7, 233.3],
    ...                   None, 7400, "AC_1_PHASE")
    >>> s = build_samples(p, [])
    >>> s.times_ms, s.contexts[0], s.contexts[-1], s.breaks
    ([0, 60000, 120000, 180000, 200000], 'Transaction.Begin', 'Transaction.End', [0, 2, 4])
    """
    start, end, dt = profile.start_ms, profile.end_ms, profile.interval_ms
    marks: dict[int, str] = {start: "Transaction.Begin"}
    t = start + dt
    while t < end:
        marks[t] = "Sample.Periodic"
        t += dt
    for c in clocks:
        marks.setdefault(c, "Sample.Clock")
    marks[end] = "Transaction.End"
    times = sorted(marks)
    contexts = [marks[t] for t in times]
    energy_at, power_at = profile.energy_at, profile.power_at
    energy = [energy_at(t) for t in times]
    power = [power_at(t) for t in times]
    soc = None
    if profile.soc is not None:
        soc_at = profile.soc_at
        soc = [round(100.0 * (soc_at(t) or 0.0), 1) for t in times]
    charge_end = profile.charge_end_ms
    breaks = [0]
    charge_end_index = len(times) - 1
    clock_set = set(clocks)
    for i in range(1, len(times) - 1):
        t = times[i]
        if t == charge_end:
            charge_end_index = i
            breaks.append(i)
        elif t in clock_set:
            breaks.append(i)
    if charge_end == start:
        charge_end_index = 0
    breaks.append(len(times) - 1)
    return Samples(times, contexts, energy, power, soc, breaks, charge_end_index)


def csms_samples(
    times_ms: list[int],
    register_wh: list[int],
    power_w: list[float],
    contexts: list[str],
    skip: frozenset[int] = frozenset(),
) -> list[Sample]:
    """The samples a CSMS bills from: what arrived, at the whole seconds OCPP timestamps carry.

    Messages in ``skip`` never arrived. Two samples in the same second keep the first (the
    clock flag of either counts), as :class:`billing.session_state.SessionState` does.

    >>> csms_samples([500, 60_400, 60_900], [1000, 1100, 1101], [6000.0, 6000.0, 0.0],
    ...              ["Transaction.Begin", "Sample.Clock", "Transaction.End"])
    [(0, 1000, 6000.0, False), (60000, 1100, 6000.0, True)]
    """
    out: list[Sample] = []
    for i, t in enumerate(times_ms):
        if i in skip:
            continue
        at = t // 1000 * 1000
        clock = contexts[i] == "Sample.Clock"
        if out and out[-1][0] == at:
            prev = out[-1]
            out[-1] = (prev[0], prev[1], prev[2], prev[3] or clock)
            continue
        out.append((at, register_wh[i], power_w[i], clock))
    return out


class Planner:
    """Chooses driver, station and EVSE for each arrival, and remembers who is where.

    State: when each EVSE is free again, when each driver is free again and where their
    last session was. A driver is never in two honest sessions at once, and never at a
    station further than ``50 km/h x time since the last session`` (+2 km) from it.
    """

    def __init__(self, world: World, rng: np.random.Generator) -> None:
        self.world = world
        self.rng = rng
        self.evse_free_ms: list[list[int]] = [[0] * len(s.evse_power_w) for s in world.stations]
        self.driver_free_ms = [0] * len(world.drivers)
        self.driver_last: list[tuple[float, float, int] | None] = [None] * len(world.drivers)
        self._masked_cdf: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._st_dc = world.st_dc.astype(float)

    def pick_driver(
        self, at_ms: int, *, pool: str | None = None, mask: np.ndarray | None = None
    ) -> Driver | None:
        """A driver free at ``at_ms``, by activity weight, optionally from a masked pool."""
        world = self.world
        if mask is None:
            indices, cdf = None, world.drv_weight_cdf
        else:
            key = pool or "mask"
            cached = self._masked_cdf.get(key)
            if cached is None:
                indices = np.flatnonzero(mask)
                if not len(indices):
                    return None
                w = np.array([world.drivers[i].weight for i in indices])
                cached = (indices, np.cumsum(w) / w.sum())
                self._masked_cdf[key] = cached
            indices, cdf = cached
        for _ in range(8):
            j = min(int(np.searchsorted(cdf, self.rng.random())), len(cdf) - 1)
            i = int(indices[j]) if indices is not None else j
            if self.driver_free_ms[i] <= at_ms:
                return world.drivers[i]
        return None

    def station_weights(self, driver: Driver, at_ms: int) -> np.ndarray:
        """Relative preference of every station for ``driver`` now (0 = not possible)."""
        w = self.world
        d_home = np.hypot(w.st_x - driver.home_x_km, w.st_y - driver.home_y_km)
        weights = np.exp(-d_home / _HOME_SCALE_KM) * (1.0 + self._st_dc * (6.0 * driver.prefers_dc))
        if driver.method == "card":
            weights = weights * w.st_terminal
        last = self.driver_last[driver.index]
        if last is not None:
            lx, ly, last_end = last
            reach = 2.0 + _TRAVEL_KMH * max(0, at_ms - last_end) / HOUR_MS
            weights = weights * (np.hypot(w.st_x - lx, w.st_y - ly) <= reach)
        return weights

    def pick_station(
        self, driver: Driver, at_ms: int, *, mask: np.ndarray | None = None
    ) -> tuple[StationProfile, int, int] | None:
        """Station, EVSE index and start time for ``driver`` arriving at ``at_ms``, or None."""
        weights = self.station_weights(driver, at_ms)
        if mask is not None:
            weights = weights * mask
        for _ in range(4):
            total = float(weights.sum())
            if total <= 0.0:
                return None
            cdf = np.cumsum(weights)
            i = min(int(np.searchsorted(cdf, self.rng.random() * total)), len(cdf) - 1)
            got = self.free_evse(i, at_ms)
            if got is not None:
                return self.world.stations[i], got[0], got[1]
            weights[i] = 0.0
        return None

    def free_evse(
        self, station_index: int, at_ms: int, *, max_wait_ms: int = _MAX_WAIT_MS
    ) -> tuple[int, int] | None:
        """The EVSE of a station free soonest after ``at_ms`` and the start time there.

        The driver plugs in 20-90 s after arriving, or waits (at most ``max_wait_ms``) until
        a minute after the EVSE is free.
        """
        free = self.evse_free_ms[station_index]
        e = min(range(len(free)), key=free.__getitem__)
        plug = at_ms + int(self.rng.integers(20, 90)) * 1000
        start = max(plug, free[e] + 60_000)
        if start - plug > max_wait_ms:
            return None
        return e, start

    def occupy(self, station: StationProfile, evse_index: int, until_ms: int) -> None:
        """Mark an EVSE busy until ``until_ms``."""
        row = self.evse_free_ms[station.index]
        row[evse_index] = max(row[evse_index], until_ms)

    def driver_done(self, driver: Driver, station: StationProfile, end_ms: int) -> None:
        """Record a driver's session: busy until ``end_ms``, then at the station."""
        self.driver_free_ms[driver.index] = max(self.driver_free_ms[driver.index], end_ms)
        self.driver_last[driver.index] = (station.x_km, station.y_km, end_ms)
