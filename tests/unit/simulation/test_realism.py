"""Honest sessions look physically and financially right, read from the wire alone."""

from __future__ import annotations

import itertools
from collections import defaultdict

import orjson

from billing.rating import ChargingPeriod, rate_session
from tests.unit.simulation.conftest import (
    Run,
    WireSession,
    labelled_sessions,
    sessions_from_frames,
    ts,
)
from topics.codec import decode
from topics.records import Station, Tariff
from topics.simulation.faults import is_honest


def _honest(run: Run) -> tuple[dict[str, WireSession], dict[str, set[str]]]:
    sessions = sessions_from_frames(run.values("ocpp_frames"))
    kinds = labelled_sessions(run.values("sim_labels"))
    honest = {
        sid: ws for sid, ws in sessions.items() if all(is_honest(k) for k in kinds.get(sid, ()))
    }
    return honest, kinds


def _reference(run: Run) -> tuple[dict[str, Station], dict[str, Tariff]]:
    stations = {k: decode(v, Station) for t, k, v in run.records if t == "stations"}
    tariffs = {k: decode(v, Tariff) for t, k, v in run.records if t == "tariffs"}
    return stations, tariffs


def _periods(ws: WireSession) -> list[ChargingPeriod]:
    """Periods as a CSMS cuts them: at clock-aligned samples and where charging stops."""
    samples = [s for s in ws.samples if s.energy_wh is not None]
    charge_end = 0
    for i in range(1, len(samples)):
        if samples[i].energy_wh > samples[i - 1].energy_wh:  # type: ignore[operator]
            charge_end = i
    last = len(samples) - 1
    breaks = [0]
    for i in range(1, last):
        if samples[i].context == "Sample.Clock" or (i == charge_end and charge_end < last):
            breaks.append(i)
    breaks.append(last)
    periods = []
    for a, b in itertools.pairwise(breaks):
        energy = max(0, samples[b].energy_wh - samples[a].energy_wh)  # type: ignore[operator]
        peak = 0.0
        if a < charge_end:
            peak = max((s.power_w or 0.0) for s in samples[a + 1 : b + 1])
        periods.append(ChargingPeriod(samples[a].time, samples[b].time, energy, peak))
    return periods


def test_most_sessions_are_honest_and_seen_on_the_wire(normal_run: Run) -> None:
    honest, _ = _honest(normal_run)
    assert len(honest) >= 0.8 * normal_run.sim.summary.sessions
    for ws in honest.values():
        assert ws.start is not None and ws.end is not None and ws.end > ws.start


def test_energy_never_exceeds_connector_power_times_time(normal_run: Run) -> None:
    honest, _ = _honest(normal_run)
    stations, _ = _reference(normal_run)
    for sid, ws in honest.items():
        station = stations[ws.station_id]
        max_w = next(c.max_power_w for c in station.connectors if c.evse_id == ws.evse_id)
        hours = (ws.end - ws.start).total_seconds() / 3600  # type: ignore[operator]
        energy = ws.meter_stop - ws.meter_start  # type: ignore[operator]
        assert 0 <= energy <= max_w * hours, (sid, energy, max_w, hours)
        samples = [s for s in ws.samples if s.energy_wh is not None]
        for a, b in itertools.pairwise(samples):
            dt_h = (b.time - a.time).total_seconds() / 3600
            assert b.energy_wh - a.energy_wh <= max_w * dt_h + 1, (sid, a, b)  # type: ignore[operator]
        for s in samples:
            assert s.power_w is None or s.power_w <= max_w * 1.0001


def test_register_is_monotone_in_honest_sessions(normal_run: Run) -> None:
    honest, _ = _honest(normal_run)
    for sid, ws in honest.items():
        registers = [s.energy_wh for s in ws.samples if s.energy_wh is not None]
        assert registers == sorted(registers), sid
        assert registers[0] == ws.meter_start and registers[-1] == ws.meter_stop, sid


def test_honest_captures_equal_the_rated_total_in_tariff_currency(normal_run: Run) -> None:
    honest, _ = _honest(normal_run)
    stations, tariffs = _reference(normal_run)
    payments: dict[str, list[dict[str, object]]] = defaultdict(list)
    for p in normal_run.values("psp_payment_events"):
        if p.get("session_id"):
            payments[p["session_id"]].append(p)
    checked = with_money = 0
    for sid, ws in honest.items():
        tariff = tariffs[stations[ws.station_id].tariff_id]
        rated = rate_session(tariff, start=ws.start, end=ws.end, periods=_periods(ws))
        assert rated.currency == tariff.currency
        captures = [p for p in payments[sid] if p["kind"] == "captured"]
        for p in payments[sid]:
            assert p["currency"] == tariff.currency, (sid, p)
            assert p["station_id"] == ws.station_id and p["transaction_id"] == ws.transaction_id
        if rated.total_minor == 0:
            assert captures == [], sid
        else:
            assert [p["amount_minor"] for p in captures] == [rated.total_minor], sid
            with_money += 1
        checked += 1
    assert checked > 300 and with_money > 250


def test_holds_are_released_or_adjusted(normal_run: Run) -> None:
    honest, _ = _honest(normal_run)
    by_payment: dict[str, list[dict[str, object]]] = defaultdict(list)
    for p in normal_run.values("psp_payment_events"):
        if p.get("session_id") in honest:
            by_payment[p["payment_id"]].append(p)
    for events in by_payment.values():
        held = [e["amount_minor"] for e in events if e["kind"] == "authorized"]
        captured = sum(e["amount_minor"] for e in events if e["kind"] == "captured")
        if not held:
            continue
        adjusted = [e["amount_minor"] for e in events if e["kind"] == "auth_adjusted"]
        authorized = adjusted[-1] if adjusted else held[0]
        released = sum(e["amount_minor"] for e in events if e["kind"] == "voided")
        assert captured <= authorized
        assert captured + released == authorized or (adjusted and captured == authorized)


def test_stream_is_in_event_time_order(normal_run: Run) -> None:
    """Frames by receive time, payments and labels by event time; reference data first."""
    topics = [t for t, _, _ in normal_run.records]
    n_ref = topics.count("stations") + topics.count("tariffs")
    assert set(topics[:n_ref]) == {"stations", "tariffs"}
    last = None
    for topic, _, value in normal_run.records[n_ref:]:
        record = orjson.loads(value)
        at = ts(record["received_at"] if topic == "ocpp_frames" else record["event_time"])
        assert last is None or at >= last, (topic, at, last)
        last = at
