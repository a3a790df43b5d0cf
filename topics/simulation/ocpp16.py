"""OCPP 1.6 frames of a session, both directions, as a CSMS forwards them.

``StartTransaction`` and the CSMS's CALLRESULT assigning the ``transactionId``, one
``MeterValues`` per sample (string values; energy in Wh or kWh and power in W or kW by the
station's habit; per-phase current and voltage on AC, current, voltage and SoC on DC;
contexts Sample.Periodic / Sample.Clock) with its empty CALLRESULT, and ``StopTransaction``
with ``transactionData`` (Transaction.Begin and Transaction.End samples) and a reason.
uniqueIds are the station's own counter, so they are unique per station.

Examples
--------
>>> from topics.simulation.config import SimulationConfig
>>> from topics.simulation.world import build_world
>>> w = build_world(SimulationConfig(seed=1, stations=2, drivers=4), hash_secret=b"k")
>>> ws = WireSession(station=w.stations[0], evse_id=1, id_tag="04A1B2C3", id_token_type="ISO14443",
...     transaction_id="1001", times_ms=[0, 60_000, 90_000], recv_ms=[80, 60_090, 90_070],
...     contexts=["Transaction.Begin", "Sample.Periodic", "Transaction.End"],
...     register_wh=[5000, 5100, 5150], power_w=[6000.0, 6000.0, 6000.0], soc_pct=None,
...     voltage_v=[230.0, 230.0, 230.0], charge_end_index=2, stop_reason="EVDisconnected",
...     stop_with_token=False)
>>> frames = build_frames(ws, first_uid=1)
>>> [e[3][e[3].index(b'"frame":') + 8:][:24] for e in frames.entries][:2]
[b'[2,"1","StartTransaction', b'[3,"1",{"transactionId":']
>>> len(frames.entries), frames.sample_uids, frames.next_uid
(6, ['1', '2', '3'], 4)
"""

from __future__ import annotations

from topics.simulation._time import iso_s
from topics.simulation._wire import (
    Frames,
    WireSession,
    envelope,
    kwh_text,
    response_latency_ms,
)

__all__ = ["PROTOCOL", "build_frames", "sampled_values"]

PROTOCOL = "ocpp1.6"
_PHASES = ("L1", "L2", "L3")
_PHASES_N = ("L1-N", "L2-N", "L3-N")


def sampled_values(ws: WireSession, i: int, context: str) -> list[dict[str, str]]:
    """The ``sampledValue`` list of sample ``i`` (strings, as 1.6 sends them)."""
    st = ws.station
    reg = ws.register_wh[i]
    p = ws.power_w[i]
    energy_unit = st.energy_format[0]
    power_unit = st.power_format[0]
    out = [
        {
            "value": str(reg) if energy_unit == "Wh" else kwh_text(reg),
            "context": context,
            "format": "Raw",
            "measurand": "Energy.Active.Import.Register",
            "location": "Outlet",
            "unit": energy_unit,
        },
        {
            "value": f"{p:.0f}" if power_unit == "W" else f"{p / 1000:.2f}",
            "context": context,
            "measurand": "Power.Active.Import",
            "location": "Outlet",
            "unit": power_unit,
        },
    ]
    v = ws.voltage_v[i]
    ptype = st.evse_power_type[ws.evse_id - 1]
    if ptype == "AC_3_PHASE":
        amps = f"{p / (3 * v):.1f}"
        offsets = st.voltage_offsets
        for k in range(3):
            out.append(
                {"value": amps, "context": context, "measurand": "Current.Import",
                 "phase": _PHASES[k], "unit": "A"}
            )  # fmt: skip
        for k in range(3):
            out.append(
                {"value": f"{v + offsets[k]:.1f}", "context": context, "measurand": "Voltage",
                 "phase": _PHASES_N[k], "unit": "V"}
            )  # fmt: skip
    elif ptype == "AC_1_PHASE":
        out.append(
            {"value": f"{p / v:.1f}", "context": context, "measurand": "Current.Import",
             "phase": "L1", "unit": "A"}
        )  # fmt: skip
        out.append(
            {"value": f"{v:.1f}", "context": context, "measurand": "Voltage",
             "phase": "L1-N", "unit": "V"}
        )  # fmt: skip
    else:
        out.append(
            {"value": f"{p / v:.1f}", "context": context, "measurand": "Current.Import",
             "unit": "A"}
        )  # fmt: skip
        out.append({"value": f"{v:.1f}", "context": context, "measurand": "Voltage", "unit": "V"})
        if ws.soc_pct is not None:
            out.append(
                {"value": f"{ws.soc_pct[i]:.0f}", "context": context, "measurand": "SoC",
                 "location": "EV", "unit": "Percent"}
            )  # fmt: skip
    return out


def build_frames(ws: WireSession, *, first_uid: int) -> Frames:
    """All frames of one 1.6 session (calls and results), uniqueIds from ``first_uid``.

    The transaction id must be the CSMS-assigned integer (as text in ``ws``).
    """
    sid = ws.station.station_id
    tx = int(ws.transaction_id)
    n = len(ws.times_ms)
    times, recv = ws.times_ms, ws.recv_ms
    entries = []
    uids: list[str | None] = [None] * n
    uid = first_uid

    u = str(uid)
    uids[0] = u
    start = {
        "connectorId": ws.evse_id,
        "idTag": ws.id_tag,
        "meterStart": ws.register_wh[0],
        "timestamp": iso_s(times[0]),
    }
    entries.append(envelope(sid, recv[0], PROTOCOL, [2, u, "StartTransaction", start]))
    result = {"transactionId": tx, "idTagInfo": {"status": ws.auth_status}}
    entries.append(envelope(sid, recv[0] + response_latency_ms(uid), PROTOCOL, [3, u, result]))
    uid += 1

    skip = ws.skip
    contexts = ws.contexts
    evse = ws.evse_id
    for i in range(1, n - 1):
        if i in skip:
            continue
        u = str(uid)
        uids[i] = u
        payload = {
            "connectorId": evse,
            "transactionId": tx,
            "meterValue": [
                {"timestamp": iso_s(times[i]), "sampledValue": sampled_values(ws, i, contexts[i])}
            ],
        }
        entries.append(envelope(sid, recv[i], PROTOCOL, [2, u, "MeterValues", payload]))
        entries.append(envelope(sid, recv[i] + response_latency_ms(uid), PROTOCOL, [3, u, {}]))
        uid += 1

    last = n - 1
    u = str(uid)
    uids[last] = u
    begin = sampled_values(ws, 0, "Transaction.Begin")[:1]
    stop: dict[str, object] = {
        "transactionId": tx,
        "meterStop": ws.register_wh[last],
        "timestamp": iso_s(times[last]),
        "reason": ws.stop_reason,
        "transactionData": [
            {"timestamp": iso_s(times[0]), "sampledValue": begin},
            {
                "timestamp": iso_s(times[last]),
                "sampledValue": sampled_values(ws, last, "Transaction.End"),
            },
        ],
    }
    answer: dict[str, object] = {}
    if ws.stop_with_token:
        stop["idTag"] = ws.id_tag
        answer = {"idTagInfo": {"status": "Accepted"}}
    entries.append(envelope(sid, recv[last], PROTOCOL, [2, u, "StopTransaction", stop]))
    entries.append(envelope(sid, recv[last] + response_latency_ms(uid), PROTOCOL, [3, u, answer]))
    return Frames(entries=entries, sample_uids=uids, next_uid=uid + 1)
