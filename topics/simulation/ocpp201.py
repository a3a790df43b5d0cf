"""OCPP 2.0.1 frames of a session, both directions, as a CSMS forwards them.

One ``TransactionEvent`` per sample: ``Started`` (seqNo 0, idToken ``{idToken, type}``, evse
``{id, connectorId}``, Transaction.Begin reading), ``Updated`` (MeterValuePeriodic,
MeterValueClock, or ChargingStateChanged when charging stops) and ``Ended`` (stoppedReason,
Transaction.End reading). Values are numbers with ``unitOfMeasure {unit, multiplier}`` in the
station's habit (Wh, Wh x 10^3 or kWh; W, W x 10^3 or kW). Each call is answered by the
CSMS (``idTokenInfo`` when the call carried a token). Events after ``offline_from`` carry
``offline: true``; a ``replay`` re-sends events with new uniqueIds and ``offline: true``.

Examples
--------
>>> from topics.simulation.config import SimulationConfig
>>> from topics.simulation.world import build_world
>>> w = build_world(SimulationConfig(seed=1, stations=2, drivers=4), hash_secret=b"k")
>>> ws = WireSession(station=w.stations[0], evse_id=1, id_tag="APP0123456789AB",
...     id_token_type="Central", transaction_id="tx-1", times_ms=[0, 60_000, 90_000],
...     recv_ms=[80, 60_090, 90_070],
...     contexts=["Transaction.Begin", "Sample.Periodic", "Transaction.End"],
...     register_wh=[5000, 5100, 5150], power_w=[6000.0, 6000.0, 6000.0], soc_pct=None,
...     voltage_v=[230.0, 230.0, 230.0], charge_end_index=2, stop_reason="Local",
...     stop_with_token=True, skip=frozenset({1}))
>>> frames = build_frames(ws, first_uid=10)
>>> len(frames.entries), frames.sample_uids
(4, ['10', None, '11'])
"""

from __future__ import annotations

from topics.simulation._time import iso_s
from topics.simulation._wire import Frames, WireSession, envelope, response_latency_ms

__all__ = ["PROTOCOL", "build_frames", "sampled_values"]

PROTOCOL = "ocpp2.0.1"
_PHASES = ("L1", "L2", "L3")
_PHASES_N = ("L1-N", "L2-N", "L3-N")
_TRIGGER = {
    "Sample.Periodic": "MeterValuePeriodic",
    "Sample.Clock": "MeterValueClock",
}
_STOP_TRIGGER = {"EVDisconnected": "EVDeparted", "Local": "StopAuthorized", "Remote": "RemoteStop"}
_AMPS = {"unit": "A", "multiplier": 0}
_VOLTS = {"unit": "V", "multiplier": 0}
_PERCENT = {"unit": "Percent", "multiplier": 0}


def sampled_values(ws: WireSession, i: int, context: str) -> list[dict[str, object]]:
    """The ``sampledValue`` list of sample ``i`` (numbers with ``unitOfMeasure``)."""
    st = ws.station
    reg = ws.register_wh[i]
    p = ws.power_w[i]
    e_unit, e_mult = st.energy_format
    p_unit, p_mult = st.power_format
    scaled_energy = reg if (e_unit == "Wh" and e_mult == 0) else round(reg / 1000, 3)
    scaled_power = round(p, 1) if (p_unit == "W" and p_mult == 0) else round(p / 1000, 3)
    out: list[dict[str, object]] = [
        {
            "value": scaled_energy,
            "context": context,
            "measurand": "Energy.Active.Import.Register",
            "location": "Outlet",
            "unitOfMeasure": {"unit": e_unit, "multiplier": e_mult},
        },
        {
            "value": scaled_power,
            "context": context,
            "measurand": "Power.Active.Import",
            "unitOfMeasure": {"unit": p_unit, "multiplier": p_mult},
        },
    ]
    v = ws.voltage_v[i]
    ptype = st.evse_power_type[ws.evse_id - 1]
    if ptype == "AC_3_PHASE":
        amps = round(p / (3 * v), 1)
        offsets = st.voltage_offsets
        for k in range(3):
            out.append(
                {"value": amps, "context": context, "measurand": "Current.Import",
                 "phase": _PHASES[k], "unitOfMeasure": _AMPS}
            )  # fmt: skip
        for k in range(3):
            out.append(
                {"value": round(v + offsets[k], 1), "context": context, "measurand": "Voltage",
                 "phase": _PHASES_N[k], "unitOfMeasure": _VOLTS}
            )  # fmt: skip
    elif ptype == "AC_1_PHASE":
        out.append(
            {"value": round(p / v, 1), "context": context, "measurand": "Current.Import",
             "phase": "L1", "unitOfMeasure": _AMPS}
        )  # fmt: skip
        out.append(
            {"value": round(v, 1), "context": context, "measurand": "Voltage",
             "phase": "L1-N", "unitOfMeasure": _VOLTS}
        )  # fmt: skip
    else:
        out.append(
            {"value": round(p / v, 1), "context": context, "measurand": "Current.Import",
             "unitOfMeasure": _AMPS}
        )  # fmt: skip
        out.append(
            {"value": round(v, 1), "context": context, "measurand": "Voltage",
             "unitOfMeasure": _VOLTS}
        )  # fmt: skip
        if ws.soc_pct is not None:
            out.append(
                {"value": round(ws.soc_pct[i]), "context": context, "measurand": "SoC",
                 "location": "EV", "unitOfMeasure": _PERCENT}
            )  # fmt: skip
    return out


def _event(ws: WireSession, i: int, *, offline: bool) -> tuple[dict[str, object], bool]:
    """The TransactionEvent payload of sample ``i`` and whether it carries a token."""
    n = len(ws.times_ms)
    last = n - 1
    context = ws.contexts[i]
    info: dict[str, object] = {"transactionId": ws.transaction_id}
    token = False
    if i == 0:
        event_type, trigger = "Started", "Authorized"
        info["chargingState"] = "Charging" if ws.charge_end_index > 0 else "EVConnected"
        token = True
    elif i == last:
        event_type = "Ended"
        trigger = _STOP_TRIGGER.get(ws.stop_reason, "AbnormalCondition")
        info["chargingState"] = "Idle"
        info["stoppedReason"] = ws.stop_reason
        token = ws.stop_with_token
    else:
        event_type = "Updated"
        if i == ws.charge_end_index:
            trigger = "ChargingStateChanged"
            info["chargingState"] = "SuspendedEV"
        else:
            trigger = _TRIGGER.get(context, "MeterValuePeriodic")
    payload: dict[str, object] = {
        "eventType": event_type,
        "timestamp": iso_s(ws.times_ms[i]),
        "triggerReason": trigger,
        "seqNo": i,
        "transactionInfo": info,
    }
    if offline:
        payload["offline"] = True
    if i == 0:
        payload["evse"] = {"id": ws.evse_id, "connectorId": 1}
    if token:
        payload["idToken"] = {"idToken": ws.id_tag, "type": ws.id_token_type}
    payload["meterValue"] = [
        {"timestamp": iso_s(ws.times_ms[i]), "sampledValue": sampled_values(ws, i, context)}
    ]
    return payload, token


def build_frames(ws: WireSession, *, first_uid: int) -> Frames:
    """All frames of one 2.0.1 session (calls and results), uniqueIds from ``first_uid``."""
    sid = ws.station.station_id
    n = len(ws.times_ms)
    recv = ws.recv_ms
    entries = []
    uids: list[str | None] = [None] * n
    uid = first_uid
    offline_from = ws.offline_from if ws.offline_from is not None else n
    unknown = {"idTokenInfo": {"status": ws.auth_status}}
    for i in range(n):
        if i in ws.skip:
            continue
        payload, token = _event(ws, i, offline=i >= offline_from)
        u = str(uid)
        uids[i] = u
        entries.append(envelope(sid, recv[i], PROTOCOL, [2, u, "TransactionEvent", payload]))
        answer = unknown if token else {}
        entries.append(envelope(sid, recv[i] + response_latency_ms(uid), PROTOCOL, [3, u, answer]))
        uid += 1
    replayed: list[str] = []
    if ws.replay is not None:
        first, at_ms = ws.replay
        for j, i in enumerate(range(first, n)):
            if i in ws.skip:
                continue
            payload, token = _event(ws, i, offline=True)
            u = str(uid)
            replayed.append(u)
            t = at_ms + 150 * j
            entries.append(envelope(sid, t, PROTOCOL, [2, u, "TransactionEvent", payload]))
            answer = unknown if token else {}
            entries.append(envelope(sid, t + response_latency_ms(uid), PROTOCOL, [3, u, answer]))
            uid += 1
    return Frames(entries=entries, sample_uids=uids, replay_uids=replayed, next_uid=uid + 1)
