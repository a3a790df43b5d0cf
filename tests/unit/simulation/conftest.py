"""Shared runs of the simulator (small, seeded) and a wire-level reading of their frames.

The session rebuild here is deliberately independent of the simulator's internals: it reads
only the frames, as an adapter would, so the tests check what is on the wire.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from topics.identity import session_id_for
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation

SECRET = b"sim-test-secret"


@dataclass
class Run:
    """One finished run: its records, decoded, and the simulation object (truth, summary)."""

    sim: Simulation
    records: list[tuple[str, str, bytes]]

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v in self.records if t == topic]


def run(config: SimulationConfig, *, keep_truth: bool = True) -> Run:
    sim = Simulation(config, hash_secret=SECRET, keep_truth=keep_truth)
    return Run(sim=sim, records=list(sim.records()))


@pytest.fixture(scope="session")
def normal_run() -> Run:
    """Default fault rates, small world, 5-minute samples: mostly honest traffic."""
    return run(SimulationConfig(seed=11, sessions=400, stations=40, sample_interval_s=300))


@pytest.fixture(scope="session")
def faulty_run() -> Run:
    """Every kind at a high rate: each kind should appear."""
    return run(
        SimulationConfig(seed=5, sessions=900, stations=60, sample_interval_s=600, fault_scale=40.0)
    )


# --------------------------------------------------------------------------- wire reading


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class Sample:
    time: datetime
    context: str
    energy_wh: int | None = None
    power_w: float | None = None


@dataclass
class WireSession:
    station_id: str
    protocol: str
    transaction_id: str
    evse_id: int
    samples: list[Sample] = field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    meter_start: int | None = None
    meter_stop: int | None = None
    id_tag: str | None = None
    auth_status: str | None = None
    seq_nos: list[int] = field(default_factory=list)
    offline: list[bool] = field(default_factory=list)
    received: list[datetime] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return session_id_for(self.station_id, self.transaction_id)


_ENERGY = {"Wh": 1, "kWh": 1000}
_POWER = {"W": 1, "kW": 1000}


def _sample(mv: dict[str, Any], protocol: str) -> Sample:
    sample = Sample(time=ts(mv["timestamp"]), context="Sample.Periodic")
    for sv in mv["sampledValue"]:
        sample.context = sv.get("context", sample.context)
        measurand = sv.get("measurand", "Energy.Active.Import.Register")
        if protocol == "ocpp1.6":
            value, unit, scale = float(sv["value"]), sv.get("unit"), 1.0
        else:
            uom = sv.get("unitOfMeasure", {})
            value, unit = float(sv["value"]), uom.get("unit")
            scale = 10.0 ** uom.get("multiplier", 0)
        if measurand == "Energy.Active.Import.Register":
            sample.energy_wh = round(value * scale * _ENERGY[unit or "Wh"])
        elif measurand == "Power.Active.Import":
            sample.power_w = value * scale * _POWER[unit or "W"]
    return sample


def sessions_from_frames(frames: list[dict[str, Any]]) -> dict[str, WireSession]:
    """Rebuild sessions from OcppFrame envelopes (first copy of each seqNo on 2.0.1)."""
    pending: dict[tuple[str, str], dict[str, Any]] = {}
    by_tx: dict[tuple[str, str], WireSession] = {}
    seen_seq: set[tuple[str, str, int]] = set()
    for env in frames:
        sid, protocol, frame = env["station_id"], env["protocol"], env["frame"]
        if frame[0] == 2:
            _, uid, action, payload = frame
            if protocol == "ocpp1.6":
                if action == "StartTransaction":
                    pending[(sid, uid)] = payload
                elif action == "MeterValues":
                    ws = by_tx[(sid, str(payload["transactionId"]))]
                    ws.received.append(ts(env["received_at"]))
                    ws.samples.extend(_sample(mv, protocol) for mv in payload["meterValue"])
                elif action == "StopTransaction":
                    ws = by_tx[(sid, str(payload["transactionId"]))]
                    ws.received.append(ts(env["received_at"]))
                    data = payload["transactionData"]
                    ws.samples.extend(_sample(mv, protocol) for mv in data[1:])
                    ws.end, ws.meter_stop = ts(payload["timestamp"]), payload["meterStop"]
            else:
                tx = payload["transactionInfo"]["transactionId"]
                key = (sid, tx, payload["seqNo"])
                if payload["eventType"] == "Started" and (sid, tx) not in by_tx:
                    ws = WireSession(sid, protocol, tx, payload["evse"]["id"])
                    ws.id_tag = payload["idToken"]["idToken"]
                    by_tx[(sid, tx)] = ws
                    pending[(sid, uid)] = {"started": ws}
                ws = by_tx[(sid, tx)]
                ws.seq_nos.append(payload["seqNo"])
                ws.offline.append(bool(payload.get("offline", False)))
                ws.received.append(ts(env["received_at"]))
                if key in seen_seq:
                    continue
                seen_seq.add(key)
                samples = [_sample(mv, protocol) for mv in payload.get("meterValue", [])]
                ws.samples.extend(samples)
                if payload["eventType"] == "Started":
                    ws.start, ws.meter_start = ts(payload["timestamp"]), samples[0].energy_wh
                elif payload["eventType"] == "Ended":
                    ws.end, ws.meter_stop = ts(payload["timestamp"]), samples[-1].energy_wh
        elif frame[0] == 3 and (sid, frame[1]) in pending:
            call = pending.pop((sid, frame[1]))
            if "started" in call:
                call["started"].auth_status = frame[2]["idTokenInfo"]["status"]
                continue
            tx = str(frame[2]["transactionId"])
            ws = WireSession(sid, protocol, tx, call["connectorId"])
            ws.id_tag, ws.auth_status = call["idTag"], frame[2]["idTagInfo"]["status"]
            ws.received.append(ts(env["received_at"]))
            ws.start, ws.meter_start = ts(call["timestamp"]), call["meterStart"]
            ws.samples.append(Sample(ws.start, "Transaction.Begin", call["meterStart"], None))
            by_tx[(sid, tx)] = ws
    out = {}
    for ws in by_tx.values():
        ws.samples.sort(key=lambda s: s.time)
        out[ws.session_id] = ws
    return out


def labelled_sessions(labels: list[dict[str, Any]]) -> dict[str, set[str]]:
    """session id -> kinds of the labels that name it."""
    kinds: dict[str, set[str]] = defaultdict(set)
    for label in labels:
        for sid in label["session_ids"]:
            kinds[sid].add(label["kind"])
    return kinds
