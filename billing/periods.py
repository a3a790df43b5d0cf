"""Charging periods from meter samples: the one definition the biller and the simulator share.

A CSMS bills a session from the meter values its station sent. This module states how those
samples become the :class:`~billing.rating.ChargingPeriod` stretches that
:func:`~billing.rating.rate_session` prices, so that voltguard and the simulated CSMS it
checks derive periods the same way.

Rules
-----
* Samples are ``(time_ms, register_wh, power_w, clock)`` in time order, one per timestamp;
  ``clock`` marks a clock-aligned sample (OCPP ``Sample.Clock``), which a CSMS takes at
  tariff boundaries so that the energy on each side is measured rather than interpolated.
* The interval between consecutive samples delivered ``max(0, register difference)`` Wh. A
  negative difference (a rollback or a reset) delivers nothing in that interval and is
  reported by :func:`register_anomalies`; the energy after it counts again from the new
  register value.
* An interval is *charging* when the register rose in it or the power sampled at its end is
  at least :data:`CHARGING_POWER_W`; otherwise it is idle (parking).
* Periods are the maximal runs of intervals with the same charging state, cut at clock
  samples. A charging period's ``max_power_w`` is the highest power sampled at the end of
  its intervals (at least 1 W, so that it counts as charging); an idle period has 0.

Examples
--------
>>> s = [(0, 1000, 7000.0, False), (60_000, 1100, 7000.0, True),
...      (120_000, 1150, 6000.0, False), (180_000, 1150, 0.0, False)]
>>> [(p.end.minute, p.energy_wh, p.max_power_w) for p in charging_periods(s)]
[(1, 100, 7000.0), (2, 50, 6000.0), (3, 0, 0.0)]
>>> register_anomalies([(0, 5000, None, False), (60_000, 200, None, False)])
[MeterAnomaly(at_ms=60000, before_wh=5000, after_wh=200, kind='reset')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from billing.rating import ChargingPeriod
from topics.times import from_ms

__all__ = [
    "CHARGING_POWER_W",
    "MeterAnomaly",
    "Sample",
    "charging_periods",
    "register_anomalies",
]

CHARGING_POWER_W: Final = 100.0
"""Power (W) at or above which an interval counts as charging even if the register stood still."""


Sample = tuple[int, int, float | None, bool]
"""``(time_ms, register_wh, power_w or None, clock_aligned)``."""


@dataclass(frozen=True, slots=True)
class MeterAnomaly:
    """The register went backwards between two samples.

    ``kind`` is ``"reset"`` when the new value is at most a tenth of the old one (the meter
    restarted near zero), ``"rollback"`` otherwise.
    """

    at_ms: int
    before_wh: int
    after_wh: int
    kind: Literal["reset", "rollback"]


def charging_periods(samples: Sequence[Sample]) -> list[ChargingPeriod]:
    """The charging and idle periods between ``samples`` (time-ordered, distinct times).

    Fewer than two samples give no period (the rater then treats the session as idle).
    """
    periods: list[ChargingPeriod] = []
    run_start = run_energy = 0
    run_peak = 0.0
    run_charging: bool | None = None
    for k in range(1, len(samples)):
        t0, r0 = samples[k - 1][0], samples[k - 1][1]
        r1, p1 = samples[k][1], samples[k][2]
        energy = r1 - r0 if r1 > r0 else 0
        charging = energy > 0 or (p1 is not None and p1 >= CHARGING_POWER_W)
        cut = samples[k - 1][3]  # a clock sample ends the run before it
        if run_charging is None:
            run_start, run_energy, run_peak, run_charging = t0, 0, 0.0, charging
        elif charging != run_charging or cut:
            periods.append(_period(run_start, t0, run_energy, run_peak, run_charging))
            run_start, run_energy, run_peak, run_charging = t0, 0, 0.0, charging
        run_energy += energy
        if charging and p1 is not None and p1 > run_peak:
            run_peak = p1
    if run_charging is not None:
        periods.append(_period(run_start, samples[-1][0], run_energy, run_peak, run_charging))
    return periods


def _period(start: int, end: int, energy: int, peak: float, charging: bool) -> ChargingPeriod:
    power = max(peak, 1.0) if charging else 0.0
    return ChargingPeriod(from_ms(start), from_ms(end), energy, power)


def register_anomalies(samples: Sequence[Sample]) -> list[MeterAnomaly]:
    """Every place where the register went backwards, in time order."""
    out: list[MeterAnomaly] = []
    for k in range(1, len(samples)):
        before, after = samples[k - 1][1], samples[k][1]
        if after < before:
            kind: Literal["reset", "rollback"] = "reset" if after * 10 <= before else "rollback"
            out.append(MeterAnomaly(samples[k][0], before, after, kind))
    return out
