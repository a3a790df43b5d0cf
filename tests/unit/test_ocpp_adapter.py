"""OCPP 1.6 / 2.0.1 frames -> canonical records, including real (and malformed) captures."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from topics.adapters.ocpp import OcppAdapter, parse_frame
from topics.codec import encode
from topics.exceptions import AdapterError, UnsupportedFrame
from topics.identity import hash_identifier, session_id_for
from topics.records import MeterReading, OcppFrame, SessionEvent

CAPTURES = Path(__file__).parents[1] / "fixtures" / "ocpp_captures"
SECRET = b"test-secret"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def captured_frames(name: str) -> list[str]:
    """Every line of a capture file that is an OCPP-J frame, as captured."""
    text = (CAPTURES / "gnezdilov_v16" / name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip().startswith("[")]


def envelope(frame: list[object], protocol: str = "ocpp1.6", station: str = "CP-1") -> OcppFrame:
    return OcppFrame(station_id=station, received_at=T0, protocol=protocol, frame=frame)  # type: ignore[arg-type]


@pytest.fixture
def adapter() -> OcppAdapter:
    return OcppAdapter(hash_secret=SECRET)


# --------------------------------------------------------------------------- real captures


def test_captured_start_transaction_pairs_call_and_result(adapter: OcppAdapter) -> None:
    call, result = (orjson.loads(f) for f in captured_frames("StartTransaction.txt"))
    first = adapter.adapt(envelope(call), pending={})
    assert first.records == []
    assert first.pending_put is not None and first.pending_put[0] == "CP-1|15455"
    second = adapter.adapt(envelope(result), pending=dict([first.pending_put]))
    assert second.pending_delete == "CP-1|15455"
    [(topic, key, event)] = second.records
    assert topic == "session_events"
    assert isinstance(event, SessionEvent)
    assert key == event.session_id == session_id_for("CP-1", 214988465)
    assert event.kind == "started"
    assert event.transaction_id == "214988465"
    assert event.auth_status == "Accepted"
    assert event.meter_start_wh == 0
    assert event.event_time == datetime(2022, 11, 21, 14, 55, 45, 341000, tzinfo=UTC)
    # The captured idTag has a leading space; it is trimmed, then hashed. Never raw.
    assert event.token_hash == hash_identifier("idTag_Charger", SECRET)
    assert b"idTag_Charger" not in encode(event)


def test_captured_meter_values_without_action_is_rejected(adapter: OcppAdapter) -> None:
    [call, _result] = (orjson.loads(f) for f in captured_frames("MeterValues.txt"))
    with pytest.raises(AdapterError, match=r"CALL must be \[2, uniqueId, action, payload\]: got 3"):
        adapter.adapt(envelope(call), pending={})


@pytest.mark.parametrize("name", ["BootNotification.txt", "Reset.txt"])
def test_captured_padded_unique_id_is_rejected(adapter: OcppAdapter, name: str) -> None:
    frames = [orjson.loads(f) for f in captured_frames(name)]
    padded = [f for f in frames if f[1] != f[1].strip()]
    assert padded, "the capture has a padded uniqueId"
    with pytest.raises(AdapterError, match="leading or trailing whitespace"):
        adapter.adapt(envelope(padded[0]), pending={})


@pytest.mark.parametrize(
    "name",
    [
        "Authorize.txt",
        "BootNotification.txt",
        "CancelReservation.txt",
        "ChangeAvailability.txt",
        "Heartbeat.txt",
        "RemoteStartTransaction.txt",
        "RemoteStopTransaction.txt",
        "ReserveNow.txt",
        "StatusNotification.txt",
    ],
)
def test_captured_frames_voltguard_does_not_use_are_ignored(
    adapter: OcppAdapter, name: str
) -> None:
    for text in captured_frames(name):
        frame = orjson.loads(text)
        if frame[1] != frame[1].strip():
            continue  # covered by the padded-id test
        with pytest.raises(UnsupportedFrame):
            adapter.adapt(envelope(frame), pending={})


def test_unlock_capture_with_two_answers_on_one_line_is_not_json() -> None:
    [_call, line] = captured_frames("UnlockConnector.txt")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line)


def test_status_key_with_trailing_space_fails_the_response_schema(adapter: OcppAdapter) -> None:
    # Authorize.txt's answer carries {"status ": " Accepted"}; on a tracked call (a
    # StartTransaction) the same defect must fail the official response schema.
    [_call, authorize_result] = (orjson.loads(f) for f in captured_frames("Authorize.txt"))
    call, _ = (orjson.loads(f) for f in captured_frames("StartTransaction.txt"))
    put = adapter.adapt(envelope(call), pending={}).pending_put
    assert put is not None
    bad = [3, "15455", {"idTagInfo": authorize_result[2]["idTagInfo"], "transactionId": 7}]
    with pytest.raises(AdapterError, match="StartTransactionResponse: schema"):
        adapter.adapt(envelope(bad), pending=dict([put]))


def test_three_phase_meter_values_from_a_real_log(adapter: OcppAdapter) -> None:
    text = (CAPTURES / "ocpp_node_log_MeterValues.txt").read_text()
    payload = orjson.loads(text[text.index("{") :])
    out = adapter.adapt(envelope([2, "m1", "MeterValues", payload]), pending={})
    [(topic, key, reading)] = out.records
    assert topic == "meter_readings" and isinstance(reading, MeterReading)
    assert key == session_id_for("CP-1", 12)
    assert reading.energy_wh == 12
    assert reading.power_w == 0.0  # "0.00" kW
    assert reading.voltage_v == pytest.approx(225.10)  # L2-N and L3-N report 0 V: not live
    assert reading.current_a == 0.0
    assert reading.context == "Sample.Periodic"


# --------------------------------------------------------------------------- 1.6 mapping


def mv16(*sampled: dict[str, str], tx: int = 5) -> list[object]:
    return [
        2,
        "u1",
        "MeterValues",
        {
            "connectorId": 2,
            "transactionId": tx,
            "meterValue": [{"timestamp": "2024-03-01T12:00:00Z", "sampledValue": list(sampled)}],
        },
    ]


def test_units_and_phases_are_normalised(adapter: OcppAdapter) -> None:
    frame = mv16(
        {"value": "12.345", "unit": "kWh", "measurand": "Energy.Active.Import.Register"},
        {"value": "7.2", "unit": "kW", "measurand": "Power.Active.Import"},
        {"value": "16.1", "unit": "A", "measurand": "Current.Import", "phase": "L1"},
        {"value": "15.9", "unit": "A", "measurand": "Current.Import", "phase": "L2"},
        {"value": "230", "unit": "V", "measurand": "Voltage", "phase": "L1-N"},
        {"value": "234", "unit": "V", "measurand": "Voltage", "phase": "L2-N"},
        {"value": "81", "unit": "Percent", "measurand": "SoC"},
    )
    [(_, _, r)] = adapter.adapt(envelope(frame), pending={}).records
    assert (r.energy_wh, r.power_w, r.current_a, r.voltage_v, r.soc_pct) == (
        12345,
        7200.0,
        16.1,
        232.0,
        81.0,
    )
    assert (r.evse_id, r.connector_id, r.transaction_id) == (2, 2, "5")


def test_default_measurand_is_the_energy_register_in_wh(adapter: OcppAdapter) -> None:
    [(_, _, r)] = adapter.adapt(envelope(mv16({"value": "1500"})), pending={}).records
    assert r.energy_wh == 1500


def test_per_phase_energy_registers_are_summed(adapter: OcppAdapter) -> None:
    frame = mv16(
        *(
            {"value": v, "measurand": "Energy.Active.Import.Register", "phase": p}
            for v, p in (("100", "L1"), ("200", "L2"), ("300", "L3"))
        )
    )
    [(_, _, r)] = adapter.adapt(envelope(frame), pending={}).records
    assert r.energy_wh == 600


def test_signed_data_is_kept(adapter: OcppAdapter) -> None:
    frame = mv16(
        {"value": "1000"},
        {
            "value": "OCMF|{...}|{...}",
            "format": "SignedData",
            "measurand": "Energy.Active.Import.Register",
        },
    )
    [(_, _, r)] = adapter.adapt(envelope(frame), pending={}).records
    assert r.energy_wh == 1000 and r.signed_data == "OCMF|{...}|{...}"


def test_non_numeric_value_names_the_field(adapter: OcppAdapter) -> None:
    frame = mv16({"value": "1000"}, {"value": "abc", "measurand": "Power.Active.Import"})
    with pytest.raises(AdapterError, match=r"meterValue\[0\]\.sampledValue\[1\]\.value: 'abc'"):
        adapter.adapt(envelope(frame), pending={})


def test_energy_in_a_power_unit_is_rejected(adapter: OcppAdapter) -> None:
    with pytest.raises(AdapterError, match="not an energy unit"):
        adapter.adapt(envelope(mv16({"value": "1", "unit": "kW"})), pending={})


def test_schema_violation_names_the_rule(adapter: OcppAdapter) -> None:
    frame = mv16({"value": "1", "unit": "MWh"})
    with pytest.raises(AdapterError, match=r"MeterValues: schema: .*must be one of"):
        adapter.adapt(envelope(frame), pending={})


def test_meter_values_outside_a_transaction_are_ignored(adapter: OcppAdapter) -> None:
    with pytest.raises(UnsupportedFrame, match="outside a transaction"):
        adapter.adapt(envelope(mv16({"value": "1"}, tx=0)), pending={})


def test_stop_transaction_with_transaction_data(adapter: OcppAdapter) -> None:
    frame = [
        2,
        "s9",
        "StopTransaction",
        {
            "idTag": "ABC123",
            "meterStop": 25000,
            "timestamp": "2024-03-01T13:00:00Z",
            "transactionId": 77,
            "reason": "EVDisconnected",
            "transactionData": [
                {
                    "timestamp": "2024-03-01T13:00:00Z",
                    "sampledValue": [
                        {"value": "25.0", "unit": "kWh", "context": "Transaction.End"}
                    ],
                }
            ],
        },
    ]
    out = adapter.adapt(envelope(frame), pending={})
    kinds = [(t, type(r).__name__) for t, _, r in out.records]
    assert kinds == [("meter_readings", "MeterReading"), ("session_events", "SessionEvent")]
    reading, ended = out.records[0][2], out.records[1][2]
    assert reading.energy_wh == 25000 and reading.context == "Transaction.End"
    assert isinstance(ended, SessionEvent)
    assert (ended.kind, ended.meter_stop_wh, ended.stop_reason, ended.offline) == (
        "ended",
        25000,
        "EVDisconnected",
        False,
    )
    assert ended.session_id == session_id_for("CP-1", 77)


def test_stop_after_offline_start_has_its_own_session(adapter: OcppAdapter) -> None:
    frame = [
        2,
        "s10",
        "StopTransaction",
        {"meterStop": 900, "timestamp": "2024-03-01T13:00:00Z", "transactionId": -1},
    ]
    [(_, key, ended)] = adapter.adapt(envelope(frame), pending={}).records
    assert ended.offline is True and ended.transaction_id == "-1"
    assert key == session_id_for("CP-1", "-1:s10")


def test_csms_error_answer_drops_the_pending_start(adapter: OcppAdapter) -> None:
    call = [2, "a", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2024-03-01T12:00:00Z"}]  # fmt: skip
    put = adapter.adapt(envelope(call), pending={}).pending_put
    assert put is not None
    out = adapter.adapt(envelope([4, "a", "InternalError", "db down", {}]), pending=dict([put]))
    assert out.records == [] and out.pending_delete == "CP-1|a"


def test_result_of_an_untracked_call_is_ignored(adapter: OcppAdapter) -> None:
    with pytest.raises(UnsupportedFrame):
        adapter.adapt(envelope([3, "zz", {}]), pending={})


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ([], "empty array"),
        ([7, "x", {}], "message type must be 2, 3 or 4"),
        ([2, 15, "Heartbeat", {}], "uniqueId must be a string"),
        ([2, "x" * 37, "Heartbeat", {}], "uniqueId must be a string of 1 to 36"),
        ([2, "x", "Heartbeat", []], "CALL payload must be an object"),
        ([2, "x", "NoSuchAction", {}], "unknown ocpp1.6 action 'NoSuchAction'"),
        ([3, "x", "nope"], "CALLRESULT payload must be an object"),
    ],
)
def test_malformed_frames(adapter: OcppAdapter, frame: list[object], message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        adapter.adapt(envelope(frame), pending={})


def test_parse_frame_callerror() -> None:
    assert parse_frame([4, "x", "NotImplemented", "no", {}]) == (
        4,
        "x",
        None,
        {"code": "NotImplemented", "description": "no", "details": {}},
    )


# --------------------------------------------------------------------------- 2.0.1


def tx_event(event_type: str, seq: int, **extra: object) -> list[object]:
    payload: dict[str, object] = {
        "eventType": event_type,
        "timestamp": f"2024-03-01T12:0{seq}:00Z",
        "triggerReason": "Authorized" if event_type == "Started" else "MeterValuePeriodic",
        "seqNo": seq,
        "transactionInfo": {"transactionId": "tx-abc"},
        **extra,
    }
    return [2, f"m{seq}", "TransactionEvent", payload]


def energy_kwh(value: float, context: str, ts: str = "2024-03-01T12:00:00Z") -> dict[str, object]:
    return {
        "timestamp": ts,
        "sampledValue": [
            {"value": value, "context": context, "unitOfMeasure": {"unit": "kWh", "multiplier": 0}},
            {
                "value": 11,
                "measurand": "Power.Active.Import",
                "unitOfMeasure": {"unit": "W", "multiplier": 3},
            },
        ],
    }


def test_transaction_event_lifecycle(adapter: OcppAdapter) -> None:
    started = adapter.adapt(
        envelope(
            tx_event(
                "Started",
                0,
                idToken={"idToken": "EMAID-DE-123", "type": "eMAID"},
                evse={"id": 2, "connectorId": 1},
                meterValue=[energy_kwh(10.5, "Transaction.Begin")],
            ),
            protocol="ocpp2.0.1",
        ),
        pending={},
    )
    (t1, _, begin), (t2, key, event) = started.records
    assert (t1, t2) == ("meter_readings", "session_events")
    assert key == session_id_for("CP-1", "tx-abc")
    assert begin.energy_wh == 10500 and begin.power_w == 11000.0 and begin.seq_no == 0
    assert (event.kind, event.evse_id, event.connector_id, event.meter_start_wh) == (
        "started",
        2,
        1,
        10500,
    )
    assert event.token_type == "eMAID" and event.token_hash == hash_identifier(
        "EMAID-DE-123", SECRET
    )
    assert event.trigger_reason == "Authorized"

    ended = adapter.adapt(
        envelope(
            tx_event(
                "Ended",
                3,
                offline=True,
                meterValue=[energy_kwh(32.25, "Transaction.End", "2024-03-01T12:03:00Z")],
                transactionInfo={"transactionId": "tx-abc", "stoppedReason": "EVDisconnected"},
            ),
            protocol="ocpp2.0.1",
        ),
        pending={},
    )
    end = ended.records[-1][2]
    assert (end.kind, end.meter_stop_wh, end.stop_reason, end.seq_no, end.offline) == (
        "ended",
        32250,
        "EVDisconnected",
        3,
        True,
    )


def test_transaction_event_schema_violation(adapter: OcppAdapter) -> None:
    bad = tx_event("Started", 0)
    del bad[3]["seqNo"]  # type: ignore[attr-defined]
    with pytest.raises(AdapterError, match=r"TransactionEventRequest: schema: .*seqNo"):
        adapter.adapt(envelope(bad, protocol="ocpp2.0.1"), pending={})


def test_adapter_is_deterministic(adapter: OcppAdapter) -> None:
    frame = mv16({"value": "1"}, {"value": "2", "measurand": "Power.Active.Import"})
    a = [encode(r) for _, _, r in adapter.adapt(envelope(frame), pending={}).records]
    b = [
        encode(r)
        for _, _, r in OcppAdapter(hash_secret=SECRET).adapt(envelope(frame), pending={}).records
    ]
    assert a == b
