"""Every frame is valid OCPP (the official JSON schemas of the ``ocpp`` package), and every
record decodes as its contract type."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import orjson
import pytest

from tests.unit.simulation.conftest import Run
from topics.codec import decode
from topics.records import OcppFrame, PaymentEvent, Station, Tariff
from topics.simulation.faults import SimLabel

_PACKAGES = {"ocpp1.6": "ocpp.v16.schemas", "ocpp2.0.1": "ocpp.v201.schemas"}


@cache
def validator(protocol: str, action: str, response: bool) -> Any:
    if protocol == "ocpp1.6":
        name = f"{action}Response.json" if response else f"{action}.json"
    else:
        name = f"{action}{'Response' if response else 'Request'}.json"
    text = resources.files(_PACKAGES[protocol]).joinpath(name).read_text()
    return fastjsonschema.compile(json.loads(text))


def _validate_frames(run: Run) -> dict[tuple[str, str, bool], int]:
    calls: dict[tuple[str, str], str] = {}
    seen: dict[tuple[str, str, bool], int] = {}
    for value in run.values("ocpp_frames"):
        protocol, frame, station = value["protocol"], value["frame"], value["station_id"]
        if frame[0] == 2:
            _, uid, action, payload = frame
            assert (station, uid) not in calls, f"uniqueId {uid} reused at {station}"
            calls[(station, uid)] = action
            response = False
        else:
            assert frame[0] == 3 and len(frame) == 3, frame
            _, uid, payload = frame
            action = calls.pop((station, uid))
            response = True
        try:
            validator(protocol, action, response)(payload)
        except fastjsonschema.JsonSchemaException as exc:  # pragma: no cover - message
            pytest.fail(f"{protocol} {action} response={response}: {exc.message}: {payload}")
        key = (protocol, action, response)
        seen[key] = seen.get(key, 0) + 1
    assert not calls, f"calls without a result: {list(calls)[:5]}"
    return seen


def test_frames_are_valid_against_the_ocpp_schemas(faulty_run: Run) -> None:
    seen = _validate_frames(faulty_run)
    expected = {
        ("ocpp1.6", "StartTransaction", False),
        ("ocpp1.6", "StartTransaction", True),
        ("ocpp1.6", "MeterValues", False),
        ("ocpp1.6", "MeterValues", True),
        ("ocpp1.6", "StopTransaction", False),
        ("ocpp1.6", "StopTransaction", True),
        ("ocpp2.0.1", "TransactionEvent", False),
        ("ocpp2.0.1", "TransactionEvent", True),
    }
    assert set(seen) == expected


def test_records_decode_as_their_contract_types(faulty_run: Run) -> None:
    types = {
        "ocpp_frames": OcppFrame,
        "psp_payment_events": PaymentEvent,
        "stations": Station,
        "tariffs": Tariff,
        "sim_labels": SimLabel,
    }
    for topic, key, value in faulty_run.records:
        record = decode(value, types[topic])
        if topic == "ocpp_frames":
            assert key == record.station_id
        elif topic == "psp_payment_events":
            assert key == (record.session_id or record.payment_id)
        elif topic == "stations":
            assert key == record.station_id
        elif topic == "tariffs":
            assert key == record.tariff_id
        else:
            assert key == record.subject_id


def test_meter_values_mix_units_phases_and_contexts(faulty_run: Run) -> None:
    units: set[object] = set()
    phases: set[str] = set()
    contexts: set[str] = set()
    measurands: set[str] = set()
    for value in faulty_run.values("ocpp_frames"):
        frame = value["frame"]
        if frame[0] != 2:
            continue
        payload = frame[3]
        meter_values = payload.get("meterValue") or payload.get("transactionData") or []
        for mv in meter_values:
            for sv in mv["sampledValue"]:
                if sv.get("measurand", "Energy.Active.Import.Register").startswith("Energy"):
                    uom = sv.get("unitOfMeasure")
                    units.add(sv.get("unit") or (uom["unit"], uom["multiplier"]))
                phases.add(sv.get("phase", "-"))
                contexts.add(sv.get("context", "-"))
                measurands.add(sv.get("measurand", "-"))
                if value["protocol"] == "ocpp1.6":
                    assert isinstance(sv["value"], str)
                else:
                    assert isinstance(sv["value"], int | float)
    assert {"Wh", "kWh", ("Wh", 0), ("Wh", 3), ("kWh", 0)} <= units
    assert {"L1", "L2", "L3", "L1-N", "L2-N", "L3-N"} <= phases
    assert {"Sample.Periodic", "Sample.Clock", "Transaction.Begin", "Transaction.End"} <= contexts
    assert {"Power.Active.Import", "Current.Import", "Voltage", "SoC"} <= measurands


def test_start_transaction_result_assigns_the_transaction_id(normal_run: Run) -> None:
    calls = {}
    for value in normal_run.values("ocpp_frames"):
        frame = value["frame"]
        if frame[0] == 2 and frame[2] == "StartTransaction":
            calls[(value["station_id"], frame[1])] = frame
        elif frame[0] == 3 and (value["station_id"], frame[1]) in calls:
            result = frame[2]
            assert isinstance(result["transactionId"], int)
            assert result["idTagInfo"] == {"status": "Accepted"}
    assert calls


def test_payment_events_name_station_transaction_and_session(normal_run: Run) -> None:
    from topics.identity import session_id_for

    n = 0
    for p in normal_run.values("psp_payment_events"):
        if p["station_id"] and p["transaction_id"]:
            assert p["session_id"] == session_id_for(p["station_id"], p["transaction_id"])
            n += 1
        if p["method"] in ("card", "wallet"):
            assert p["card_fingerprint_hash"] and len(p["card_fingerprint_hash"]) == 32
    assert n > 0
    raw = b"".join(v for _, _, v in normal_run.records)
    assert b"fp_" not in raw  # raw card fingerprints never leave the simulator


def test_labels_never_carry_raw_tokens(faulty_run: Run) -> None:
    tags = {d.id_tag for d in faulty_run.sim.world.drivers}
    for label in faulty_run.values("sim_labels"):
        text = orjson.dumps(label).decode()
        assert not any(tag in text for tag in tags), label["kind"]
