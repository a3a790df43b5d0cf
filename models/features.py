"""Per-session features: one vector per ended session, from what billing knows of it.

Pure. :func:`session_features` reads the session's state (samples, registers, seqNos,
flags), its bill, the payment events seen so far and the station's reference record, and
returns a :class:`~topics.records.SessionFeatures`: the numeric ``features`` (for rules,
online models and retraining) plus the identifiers detection repartitions by (token, card,
station) and the facts the explanations quote. Token history (novelty, time and distance
from the token's previous session) is added later, by the token-keyed stage, under the
``token_`` prefix (:data:`TOKEN_FEATURES`).

Names are stable: a model's input is the sorted list of :data:`SESSION_FEATURES` (and
:data:`TOKEN_FEATURES`); ``model_input_version`` changes when it does. Version 2 added
``power_integral_kwh`` and ``energy_over_power_integral`` (the register's energy over what
the reported power samples add up to: a meter whose register drifts away from its own power
readings shows here), ``hours_from_0300`` and the token features ``token_night_share`` and
``token_night_sessions``.

Examples
--------
>>> from datetime import UTC, datetime, timedelta
>>> from topics.records import MeterReading, SessionEvent
>>> from billing.session_state import SessionState
>>> t = lambda m: datetime(2024, 5, 6, 10, m, tzinfo=UTC)
>>> s = SessionState(session_id="s1", station_id="CP1", evse_id=1)
>>> _ = s.apply_event(SessionEvent(event_id="a", event_time=t(0), source="x", session_id="s1",
...     station_id="CP1", evse_id=1, kind="started", meter_start_wh=1000))
>>> _ = s.apply_reading(MeterReading(event_id="b", event_time=t(30), source="x",
...     session_id="s1", station_id="CP1", evse_id=1, energy_wh=6000, power_w=10_000.0))
>>> _ = s.apply_event(SessionEvent(event_id="c", event_time=t(40), source="x", session_id="s1",
...     station_id="CP1", evse_id=1, kind="ended", meter_stop_wh=6000))
>>> f = session_features(s, bill=None, payments=[], station=None).features
>>> f["energy_kwh"], f["duration_min"], f["charging_min"], f["max_sample_gap_s"]
(5.0, 40.0, 30.0, 1800.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from statistics import median
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing.periods import charging_periods
from billing.reconciliation import PaymentRecord
from billing.session_state import SessionState
from topics.identity import stable_id
from topics.records import SessionBill, SessionFeatures, Station
from topics.times import from_ms

__all__ = [
    "MODEL_INPUT_VERSION",
    "NIGHT_HOURS",
    "SESSION_FEATURES",
    "TOKEN_FEATURES",
    "power_integral_wh",
    "session_features",
]

MODEL_INPUT_VERSION: Final = 2

SESSION_FEATURES: Final = (
    "energy_kwh",
    "duration_min",
    "charging_min",
    "idle_min",
    "avg_power_kw",
    "peak_power_kw",
    "connector_max_kw",
    "peak_over_rating",
    "energy_over_capability",
    "price_minor",
    "price_per_kwh_minor",
    "hour_of_day",
    "day_of_week",
    "sample_count",
    "max_sample_gap_s",
    "median_sample_gap_s",
    "register_resets",
    "register_rollbacks",
    "rollback_wh",
    "meter_stop_below_start",
    "seq_gaps",
    "seq_repeats",
    "duplicate_readings",
    "conflicting_readings",
    "offline",
    "offline_start",
    "auth_not_accepted",
    "payment_events",
    "failed_payments",
    "authorized_minor",
    "captured_minor",
    "refunded_minor",
    "chargebacks",
    "captured_over_price",
    "power_integral_kwh",
    "energy_over_power_integral",
    "hours_from_0300",
)
"""Features computed from the session itself.

``power_integral_kwh`` is what the power samples add up to (:func:`power_integral_wh`);
``energy_over_power_integral`` is
the register's energy (``energy_kwh``) over it, about 1.0 on an honest meter, and 0.0 when
the samples carry too little power to compare (under 0.05 kWh). ``hours_from_0300`` is the
distance of the local start time from 03:00 (the quietest hour of a fleet) on the 24-hour
circle, in ``[0, 12]``: it puts the night at one end of the range, where a model's edge
cells isolate it, instead of splitting it between 0 and 24 as ``hour_of_day`` does."""

TOKEN_FEATURES: Final = (
    "token_sessions_before",
    "token_new",
    "token_overlapping",
    "token_hours_since_prev",
    "token_km_from_prev",
    "token_kmh_from_prev",
    "token_night_share",
    "token_night_sessions",
)
"""Features the token-keyed stage adds from the token's history.

``token_night_share`` is the share of the token's known sessions (the kept history plus
this one) that started in the deep night, :data:`NIGHT_HOURS` local time at the station;
``token_night_sessions`` is how many of them did (this one included)."""

NIGHT_HOURS: Final = (1.0, 5.0)
"""``[start, end)`` local hours of day that count as deep night (the fleet's quietest)."""

_MIN_INTEGRAL_WH: Final = 50.0


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _connector_max_w(station: Station | None, evse_id: int | None) -> float:
    if station is None:
        return 0.0
    powers = [c.max_power_w for c in station.connectors if evse_id is None or c.evse_id == evse_id]
    return float(max(powers or [c.max_power_w for c in station.connectors]))


def power_integral_wh(samples: Sequence[tuple[int, int, float | None, bool]]) -> float:
    """Energy the power samples add up to, Wh.

    A power reading is taken as the average power over the interval that ends at it (what a
    meter reporting per sampling interval gives, and what the register's increment over the
    same interval measures), so the integral is ``sum(power_k x (t_k - t_k-1))``. Intervals
    whose closing sample has no power reading do not count.

    >>> power_integral_wh([(0, 0, 0.0, False), (600_000, 1000, 6000.0, False),
    ...                    (1_200_000, 2000, None, False)])
    1000.0
    """
    total = 0.0
    for (t0, _, _, _), (t1, _, p1, _) in pairwise(samples):
        if p1 is not None and t1 > t0:
            total += p1 * (t1 - t0) / 3_600_000
    return total


def session_features(
    state: SessionState,
    *,
    bill: SessionBill | None = None,
    price_minor: int | None = None,
    bill_event_id: str | None = None,
    payments: Sequence[PaymentRecord],
    station: Station | None,
) -> SessionFeatures:
    """The feature record of one ended session (see the module docstring).

    The bill is given whole (``bill``) or as its total and event id.
    """
    if bill is not None:
        price_minor, bill_event_id = bill.total_minor, bill.event_id
    samples = state.samples()
    span = state.span_ms() or (0, 1000)
    start_ms, end_ms = span
    duration_s = (end_ms - start_ms) / 1000
    periods = charging_periods(samples)
    charging_s = sum((p.end - p.start).total_seconds() for p in periods if p.max_power_w > 0)
    energy_wh = sum(p.energy_wh for p in periods)
    anomalies = state.anomalies()
    gaps = [(b[0] - a[0]) / 1000 for a, b in pairwise(samples)]
    max_w = _connector_max_w(station, state.evse_id)
    capability_wh = max_w * duration_s / 3600
    peak_w = max(state.max_power_w, max((p.max_power_w for p in periods), default=0.0))
    zone = _zone(station.timezone if station else None)
    local = (from_ms(start_ms)).astimezone(zone)
    hour = local.hour + local.minute / 60
    price = price_minor or 0
    captured = sum(p.amount_minor for p in payments if p.kind == "captured")
    authorized = sum(p.amount_minor for p in payments if p.kind == "authorized")
    integral_wh = power_integral_wh(samples)
    first_reg = samples[0][1] if samples else 0
    last_reg = samples[-1][1] if samples else 0
    features = {
        "energy_kwh": energy_wh / 1000,
        "duration_min": duration_s / 60,
        "charging_min": charging_s / 60,
        "idle_min": max(0.0, duration_s - charging_s) / 60,
        "avg_power_kw": energy_wh / charging_s * 3.6 if charging_s else 0.0,
        "peak_power_kw": peak_w / 1000,
        "connector_max_kw": max_w / 1000,
        "peak_over_rating": peak_w / max_w if max_w else 0.0,
        "energy_over_capability": energy_wh / capability_wh if capability_wh else 0.0,
        "price_minor": float(price),
        "price_per_kwh_minor": price / (energy_wh / 1000) if energy_wh else 0.0,
        "hour_of_day": hour,
        "hours_from_0300": abs((hour - 3.0 + 12.0) % 24.0 - 12.0),
        "day_of_week": float(local.weekday()),
        "sample_count": float(len(samples)),
        "max_sample_gap_s": max(gaps, default=0.0),
        "median_sample_gap_s": median(gaps) if gaps else 0.0,
        "register_resets": float(sum(a.kind == "reset" for a in anomalies)),
        "register_rollbacks": float(sum(a.kind == "rollback" for a in anomalies)),
        "rollback_wh": float(sum(a.before_wh - a.after_wh for a in anomalies)),
        "meter_stop_below_start": float(bool(samples) and last_reg < first_reg),
        "seq_gaps": float(len(state.seq_gaps())),
        "seq_repeats": float(state.seq_repeats),
        "duplicate_readings": float(state.duplicates),
        "conflicting_readings": float(state.conflicts),
        "offline": float(state.offline),
        "offline_start": float(state.started_offline),
        "auth_not_accepted": float(state.auth_status not in (None, "Accepted")),
        "payment_events": float(len(payments)),
        "failed_payments": float(sum(p.kind == "failed" for p in payments)),
        "authorized_minor": float(authorized),
        "captured_minor": float(captured),
        "refunded_minor": float(sum(p.amount_minor for p in payments if p.kind == "refunded")),
        "chargebacks": float(sum(p.kind == "chargeback_opened" for p in payments)),
        "captured_over_price": captured / price if price else float(captured > 0),
        "power_integral_kwh": integral_wh / 1000,
        "energy_over_power_integral": (
            energy_wh / integral_wh if integral_wh >= _MIN_INTEGRAL_WH else 0.0
        ),
    }
    ids = [i for i in (state.started_event_id, state.ended_event_id) if i]
    if bill_event_id is not None:
        ids.append(bill_event_id)
    return SessionFeatures(
        event_id=stable_id(
            "session-features",
            state.session_id,
            bill_event_id or "",
            state.seq_repeats,
            len(payments),
        ),
        event_time=from_ms(end_ms),
        source="voltguard-billing",
        session_id=state.session_id,
        station_id=state.station_id or "unknown",
        features=features,
        model_input_version=MODEL_INPUT_VERSION,
        token_hash=state.token_hash,
        token_type=state.token_type,
        auth_status=state.auth_status,
        card_fingerprint_hashes=sorted({p.card for p in payments if p.card}),
        started_at=from_ms(start_ms),
        lat=station.lat if station else None,
        lon=station.lon if station else None,
        evidence_event_ids=ids + [p.event_id for p in payments][:20],
        anomalies=[
            {"at_ms": a.at_ms, "kind": a.kind, "before_wh": a.before_wh, "after_wh": a.after_wh}
            for a in anomalies[:10]
        ],
        seq_gaps=state.seq_gaps()[:20],
    )
