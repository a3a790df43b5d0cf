"""Builders of small, valid OCPP-J frames in their CSMS envelope (tests and benchmarks).

The fleet simulator (:mod:`topics.simulation`) makes realistic traffic; these builders make
exactly the frame a test or benchmark asks for, as the encoded bytes of an
:class:`~topics.records.OcppFrame` envelope.

Examples
--------
>>> from topics.codec import decode
>>> from topics.records import OcppFrame
>>> env = decode(meter_values(station_id="CP-1", transaction_id=7, seq=3, energy_wh=1200), OcppFrame)
>>> env.frame[2], env.frame[3]["transactionId"]
('MeterValues', 7)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

__all__ = ["meter_values", "start_transaction", "start_transaction_result", "stop_transaction"]

EPOCH = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _ts(seconds: float) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _envelope(station_id: str, frame: list[object], seconds: float) -> bytes:
    return orjson.dumps(
        {
            "station_id": station_id,
            "received_at": _ts(seconds),
            "protocol": "ocpp1.6",
            "frame": frame,
        }
    )


def start_transaction(*, station_id: str, unique_id: str, id_tag: str, meter_start_wh: int = 0,
                      connector_id: int = 1, at_s: float = 0.0) -> bytes:  # fmt: skip
    """1.6 StartTransaction CALL from the station."""
    payload = {
        "connectorId": connector_id,
        "idTag": id_tag,
        "meterStart": meter_start_wh,
        "timestamp": _ts(at_s),
    }
    return _envelope(station_id, [2, unique_id, "StartTransaction", payload], at_s)


def start_transaction_result(*, station_id: str, unique_id: str, transaction_id: int,
                             status: str = "Accepted", at_s: float = 0.0) -> bytes:  # fmt: skip
    """The CSMS's CALLRESULT assigning the transaction id."""
    payload = {"transactionId": transaction_id, "idTagInfo": {"status": status}}
    return _envelope(station_id, [3, unique_id, payload], at_s)


def meter_values(*, station_id: str, transaction_id: int, seq: int, energy_wh: int,
                 power_w: float = 11000.0, connector_id: int = 1, at_s: float | None = None) -> bytes:  # fmt: skip
    """1.6 MeterValues CALL with energy register, power and three phase currents (strings)."""
    at = seq * 60.0 if at_s is None else at_s
    amps = f"{power_w / 3 / 230:.2f}"
    sampled = [
        {"value": str(energy_wh), "unit": "Wh", "context": "Sample.Periodic",
         "measurand": "Energy.Active.Import.Register"},
        {"value": f"{power_w / 1000:.3f}", "unit": "kW", "context": "Sample.Periodic",
         "measurand": "Power.Active.Import"},
        *({"value": amps, "unit": "A", "context": "Sample.Periodic", "measurand": "Current.Import",
           "phase": p} for p in ("L1", "L2", "L3")),
    ]  # fmt: skip
    payload = {
        "connectorId": connector_id,
        "transactionId": transaction_id,
        "meterValue": [{"timestamp": _ts(at), "sampledValue": sampled}],
    }
    return _envelope(station_id, [2, f"mv-{transaction_id}-{seq}", "MeterValues", payload], at)


def stop_transaction(*, station_id: str, unique_id: str, transaction_id: int, meter_stop_wh: int,
                     at_s: float = 3600.0, reason: str = "EVDisconnected") -> bytes:  # fmt: skip
    """1.6 StopTransaction CALL."""
    payload = {
        "transactionId": transaction_id,
        "meterStop": meter_stop_wh,
        "timestamp": _ts(at_s),
        "reason": reason,
    }
    return _envelope(station_id, [2, unique_id, "StopTransaction", payload], at_s)
