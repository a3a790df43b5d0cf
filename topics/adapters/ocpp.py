"""Adapter from OCPP-J frames (1.6 and 2.0.1), as a CSMS forwards them, to canonical records.

A CSMS forwards every frame it exchanges with a station, in both directions, wrapped in an
:class:`~topics.records.OcppFrame` envelope (station id, receive time, protocol). This module
turns the frames voltguard uses into :class:`~topics.records.SessionEvent` and
:class:`~topics.records.MeterReading` records:

* OCPP 1.6 ``StartTransaction``: the transactionId is assigned by the CSMS in its answer
  ``[3, uniqueId, {transactionId, idTagInfo}]``, so the call is kept as *pending* (keyed by
  station and uniqueId) and the ``started`` event is emitted when the result arrives; the
  idTagInfo status is the authorisation outcome.
* OCPP 1.6 ``StopTransaction`` (with ``transactionData``) and ``MeterValues`` (string values,
  Wh/kWh/W/kW units, measurands, phases, contexts, SignedData).
* OCPP 2.0.1 ``TransactionEvent`` (Started/Updated/Ended, seqNo, offline, idToken, evse,
  meterValue with ``unitOfMeasure`` multiplier).

Payloads are checked against the official JSON schemas shipped in the ``ocpp`` package,
compiled once with ``fastjsonschema``. Tokens are replaced by a keyed hash here, at ingest.
Frames of actions voltguard does not use (Heartbeat, BootNotification, ...) raise
:class:`~topics.exceptions.UnsupportedFrame`; anything malformed raises
:class:`~topics.exceptions.AdapterError` whose message names the field and the problem.

The adapter is pure: the pending-call state is passed in and the changes to it are returned
(:class:`Adapted`), so the shell can keep it in a changelog topic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Final

import fastjsonschema
import orjson

from topics.exceptions import AdapterError, UnsupportedFrame
from topics.identity import hash_identifier, session_id_for, stable_id
from topics.records import MeterReading, OcppFrame, SessionEvent

__all__ = ["Adapted", "OcppAdapter", "parse_frame", "validate_payload"]

CALL: Final = 2
CALLRESULT: Final = 3
CALLERROR: Final = 4

_SCHEMA_PACKAGES: Final = {"ocpp1.6": "ocpp.v16.schemas", "ocpp2.0.1": "ocpp.v201.schemas"}
_USED_ACTIONS: Final = {
    "ocpp1.6": {"StartTransaction", "StopTransaction", "MeterValues"},
    "ocpp2.0.1": {"TransactionEvent"},
}
_ENERGY_UNITS: Final = {"Wh": 1.0, "kWh": 1000.0}
_POWER_UNITS: Final = {"W": 1.0, "kW": 1000.0}
_LINE_PHASES: Final = frozenset({"L1", "L2", "L3", "L1-N", "L2-N", "L3-N"})


# --------------------------------------------------------------------------- schemas


@cache
def _schema_names(protocol: str) -> frozenset[str]:
    root = resources.files(_SCHEMA_PACKAGES[protocol])
    return frozenset(
        p.name.removesuffix(".json") for p in root.iterdir() if p.name.endswith(".json")
    )


@cache
def _validator(protocol: str, name: str) -> Any:
    text = resources.files(_SCHEMA_PACKAGES[protocol]).joinpath(f"{name}.json").read_text()
    return fastjsonschema.compile(json.loads(text), use_default=False)


def _schema_name(protocol: str, action: str, *, response: bool) -> str:
    if protocol == "ocpp1.6":
        return f"{action}Response" if response else action
    return f"{action}Response" if response else f"{action}Request"


def validate_payload(
    protocol: str, action: str, payload: object, *, response: bool = False
) -> None:
    """Check an OCPP payload against the official JSON schema of its action.

    Raises
    ------
    AdapterError
        The payload breaks the schema; the message names the field and the rule.

    Examples
    --------
    >>> validate_payload("ocpp1.6", "StartTransaction",
    ...     {"connectorId": 1, "idTag": "X", "meterStart": 0, "timestamp": "2024-01-01T00:00:00Z"})
    >>> validate_payload("ocpp1.6", "StartTransaction", {"connectorId": 1})
    Traceback (most recent call last):
    ...
    topics.exceptions.AdapterError: StartTransaction: schema: data must contain ['idTag', 'meterStart', 'timestamp'] properties
    """
    name = _schema_name(protocol, action, response=response)
    try:
        _validator(protocol, name)(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise AdapterError(f"{name}: schema: {exc.message}", record=name, path=exc.name) from exc


# --------------------------------------------------------------------------- frames


def parse_frame(frame: list[object]) -> tuple[int, str, str | None, object]:
    """Check the OCPP-J array shape; return (message type, uniqueId, action, payload).

    ``action`` is None for CALLRESULT and CALLERROR; for CALLERROR the payload is
    ``{"code": ..., "description": ..., "details": ...}``.

    >>> parse_frame([2, "19", "Heartbeat", {}])
    (2, '19', 'Heartbeat', {})
    >>> parse_frame([2, "19", {"connectorId": 1}])
    Traceback (most recent call last):
    ...
    topics.exceptions.AdapterError: OCPP-J CALL must be [2, uniqueId, action, payload]: got 3 elements
    """
    if not frame:
        raise AdapterError("OCPP-J frame is an empty array", path="$.frame")
    kind = frame[0]
    if kind not in (CALL, CALLRESULT, CALLERROR) or isinstance(kind, bool):
        raise AdapterError(
            f"OCPP-J message type must be 2, 3 or 4: got {kind!r}", path="$.frame[0]"
        )
    expected = {CALL: 4, CALLRESULT: 3, CALLERROR: 5}[kind]
    if len(frame) != expected:
        shape = {
            CALL: "[2, uniqueId, action, payload]",
            CALLRESULT: "[3, uniqueId, payload]",
            CALLERROR: "[4, uniqueId, errorCode, errorDescription, errorDetails]",
        }[kind]
        name = {CALL: "CALL", CALLRESULT: "CALLRESULT", CALLERROR: "CALLERROR"}[kind]
        raise AdapterError(
            f"OCPP-J {name} must be {shape}: got {len(frame)} elements", path="$.frame"
        )
    unique_id = frame[1]
    if not isinstance(unique_id, str) or not unique_id or len(unique_id) > 36:
        raise AdapterError(
            f"OCPP-J uniqueId must be a string of 1 to 36 characters: got {unique_id!r}",
            path="$.frame[1]",
        )
    if unique_id != unique_id.strip():
        raise AdapterError(
            f"OCPP-J uniqueId {unique_id!r} has leading or trailing whitespace", path="$.frame[1]"
        )
    if kind == CALL:
        action, payload = frame[2], frame[3]
        if not isinstance(action, str) or not action:
            raise AdapterError(
                f"OCPP-J action must be a non-empty string: got {action!r}", path="$.frame[2]"
            )
        if not isinstance(payload, dict):
            raise AdapterError("OCPP-J CALL payload must be an object", path="$.frame[3]")
        return kind, unique_id, action, payload
    if kind == CALLRESULT:
        if not isinstance(frame[2], dict):
            raise AdapterError("OCPP-J CALLRESULT payload must be an object", path="$.frame[2]")
        return kind, unique_id, None, frame[2]
    return kind, unique_id, None, {"code": frame[2], "description": frame[3], "details": frame[4]}


# --------------------------------------------------------------------------- values


def _number(value: object, path: str) -> float:
    if isinstance(value, bool):
        raise AdapterError(f"{path}: expected a number, got a boolean", path=path)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise AdapterError(f"{path}: {value!r} is not a number", path=path) from None
    else:
        raise AdapterError(f"{path}: expected a number, got {type(value).__name__}", path=path)
    if not math.isfinite(number):
        raise AdapterError(f"{path}: {value!r} is not a finite number", path=path)
    return number


def _timestamp(value: str, path: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise AdapterError(f"{path}: {value!r} is not an RFC 3339 timestamp", path=path) from None
    if ts.tzinfo is None:
        raise AdapterError(f"{path}: {value!r} has no time zone offset", path=path)
    return ts


class _Sample:
    """Accumulates the sampled values of one meterValue element."""

    __slots__ = ("context", "current", "energy", "power", "signed", "soc", "voltage")

    def __init__(self) -> None:
        self.energy: dict[str | None, float] = {}
        self.power: dict[str | None, float] = {}
        self.current: dict[str | None, float] = {}
        self.voltage: dict[str | None, float] = {}
        self.soc: float | None = None
        self.context: str | None = None
        self.signed: str | None = None

    @staticmethod
    def _total(values: dict[str | None, float]) -> float | None:
        if not values:
            return None
        if None in values:
            return values[None]
        outer = [v for k, v in values.items() if k in _LINE_PHASES]
        return sum(outer) if outer else None

    @staticmethod
    def _mean_voltage(values: dict[str | None, float]) -> float | None:
        """Phase-less value, else the mean of live phase-to-neutral voltages.

        A single-phase charger often reports 0 V on the phases it does not use; those are
        left out of the mean (all zero gives 0).
        """
        if not values:
            return None
        if None in values:
            return values[None]
        phases = [v for k, v in values.items() if k and k.endswith("-N")] or list(values.values())
        live = [v for v in phases if v > 0]
        return sum(live) / len(live) if live else 0.0

    def energy_wh(self) -> int | None:
        total = self._total(self.energy)
        return None if total is None else round(total)

    def power_w(self) -> float | None:
        return self._total(self.power)

    def current_a(self) -> float | None:
        """Highest phase current (or the phase-less value): what a connector limit applies to."""
        if not self.current:
            return None
        if None in self.current:
            return self.current[None]
        return max(self.current.values())

    def voltage_v(self) -> float | None:
        return self._mean_voltage(self.voltage)

    def useful(self) -> bool:
        return (
            bool(self.energy or self.power or self.current or self.voltage) or self.soc is not None
        )


def _sampled_value(sample: _Sample, sv: Mapping[str, Any], path: str, *, protocol: str) -> None:
    measurand = sv.get("measurand", "Energy.Active.Import.Register")
    phase = sv.get("phase")
    context = sv.get("context")
    if context and sample.context is None:
        sample.context = context
    if protocol == "ocpp1.6":
        if sv.get("format") == "SignedData":
            sample.signed = sv.get("value")
            return
        unit = sv.get("unit")
        scale = 1.0
    else:
        signed = sv.get("signedMeterValue")
        if signed:
            sample.signed = signed.get("signedMeterData")
        uom = sv.get("unitOfMeasure") or {}
        unit = uom.get("unit")
        scale = 10.0 ** uom.get("multiplier", 0)
    value = _number(sv["value"], f"{path}.value") * scale
    if measurand == "Energy.Active.Import.Register":
        factor = _ENERGY_UNITS.get(unit or "Wh")
        if factor is None:
            raise AdapterError(
                f"{path}.unit: {unit!r} is not an energy unit (Wh or kWh)", path=path
            )
        sample.energy[phase] = value * factor
    elif measurand == "Power.Active.Import":
        factor = _POWER_UNITS.get(unit or "W")
        if factor is None:
            raise AdapterError(f"{path}.unit: {unit!r} is not a power unit (W or kW)", path=path)
        sample.power[phase] = value * factor
    elif measurand == "Current.Import":
        sample.current[phase] = value
    elif measurand == "Voltage":
        sample.voltage[phase] = value
    elif measurand == "SoC":
        if not 0 <= value <= 100:
            raise AdapterError(f"{path}.value: SoC {value} outside 0-100 %", path=path)
        sample.soc = value


class Adapted:
    """What one frame produced: records to publish and changes to the pending-call state.

    ``records`` holds ``(catalog short name, key, record)`` triples.
    """

    __slots__ = ("pending_delete", "pending_put", "records")

    def __init__(self) -> None:
        self.records: list[tuple[str, str, MeterReading | SessionEvent]] = []
        self.pending_put: tuple[str, bytes] | None = None
        self.pending_delete: str | None = None

    def __repr__(self) -> str:
        return f"Adapted(records={len(self.records)}, put={self.pending_put is not None}, delete={self.pending_delete})"


def pending_key(station_id: str, unique_id: str) -> str:
    """Key of a call awaiting its result: station and uniqueId (uniqueIds are per connection)."""
    return f"{station_id}|{unique_id}"


class OcppAdapter:
    """Turns :class:`OcppFrame` envelopes into canonical records.

    Parameters
    ----------
    hash_secret
        Key of the HMAC applied to idTags and idTokens; no raw token leaves the adapter.
    source_prefix
        Prefix of the ``source`` field of produced records (``ocpp1.6`` / ``ocpp2.0.1`` follow).

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> adapter = OcppAdapter(hash_secret=b"k")
    >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> call = OcppFrame(station_id="CP1", received_at=t, protocol="ocpp1.6", frame=[2, "7",
    ...     "StartTransaction", {"connectorId": 1, "idTag": "AB12", "meterStart": 100,
    ...     "timestamp": "2024-01-01T00:00:00Z"}])
    >>> out = adapter.adapt(call, pending={})
    >>> out.records, out.pending_put[0]
    ([], 'CP1|7')
    >>> result = OcppFrame(station_id="CP1", received_at=t, protocol="ocpp1.6",
    ...     frame=[3, "7", {"transactionId": 42, "idTagInfo": {"status": "Accepted"}}])
    >>> out = adapter.adapt(result, pending={"CP1|7": out.pending_put[1]})
    >>> [(topic, r.kind, r.transaction_id, r.meter_start_wh) for topic, _, r in out.records]
    [('session_events', 'started', '42', 100)]
    """

    def __init__(self, *, hash_secret: bytes, source_prefix: str = "csms") -> None:
        if not hash_secret:
            raise ValueError("hash_secret must not be empty")
        self._secret = hash_secret
        self._prefix = source_prefix

    # ---------------------------------------------------------------- entry point

    def adapt(self, envelope: OcppFrame, *, pending: Mapping[str, bytes]) -> Adapted:
        """Adapt one envelope.

        Raises
        ------
        AdapterError
            Malformed frame or payload (to the dead-letter topic).
        UnsupportedFrame
            Well-formed, but nothing voltguard uses (counted as ignored).
        """
        protocol = envelope.protocol
        kind, unique_id, action, payload = parse_frame(envelope.frame)
        out = Adapted()
        if kind == CALL:
            assert action is not None
            if action not in _USED_ACTIONS[protocol]:
                if action not in _schema_names(protocol):
                    raise AdapterError(f"unknown {protocol} action {action!r}", path="$.frame[2]")
                raise UnsupportedFrame(f"{protocol} {action} is not used by voltguard")
            validate_payload(protocol, action, payload)
            assert isinstance(payload, dict)
            if protocol == "ocpp1.6":
                if action == "StartTransaction":
                    key = pending_key(envelope.station_id, unique_id)
                    out.pending_put = (key, orjson.dumps({"action": action, "payload": payload}))
                elif action == "StopTransaction":
                    self._stop_transaction(envelope, unique_id, payload, out)
                else:
                    self._meter_values_16(envelope, unique_id, payload, out)
            else:
                self._transaction_event(envelope, unique_id, payload, out)
            return out
        key = pending_key(envelope.station_id, unique_id)
        stored = pending.get(key)
        if stored is None:
            raise UnsupportedFrame("result of a call voltguard does not track")
        out.pending_delete = key
        call = orjson.loads(stored)
        if kind == CALLERROR:
            # The CSMS refused the start: no transaction exists. Nothing to publish.
            return out
        validate_payload(protocol, call["action"], payload, response=True)
        assert isinstance(payload, dict)
        self._start_transaction(envelope, unique_id, call["payload"], payload, out)
        return out

    # ---------------------------------------------------------------- 1.6

    def _token(self, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return hash_identifier(value.strip(), self._secret)

    def _start_transaction(
        self,
        env: OcppFrame,
        unique_id: str,
        call: Mapping[str, Any],
        result: Mapping[str, Any],
        out: Adapted,
    ) -> None:
        transaction_id = str(result["transactionId"])
        session_id = session_id_for(env.station_id, transaction_id)
        connector = call["connectorId"]
        out.records.append(
            (
                "session_events",
                session_id,
                SessionEvent(
                    event_id=stable_id(env.station_id, unique_id, "StartTransaction"),
                    event_time=_timestamp(call["timestamp"], "$.frame[3].timestamp"),
                    source=f"{self._prefix}:ocpp1.6",
                    session_id=session_id,
                    station_id=env.station_id,
                    evse_id=connector,
                    connector_id=connector,
                    transaction_id=transaction_id,
                    kind="started",
                    token_hash=self._token(call["idTag"]),
                    token_type="ISO14443",
                    auth_status=result["idTagInfo"]["status"],
                    meter_start_wh=call["meterStart"],
                ),
            )
        )

    def _stop_transaction(
        self, env: OcppFrame, unique_id: str, payload: Mapping[str, Any], out: Adapted
    ) -> None:
        transaction_id = payload["transactionId"]
        offline = transaction_id == -1
        # After an offline start the CSMS never assigned an id: the stop names -1. The session
        # cannot be joined to a start, so it gets an id of its own and is flagged offline.
        session_key = f"-1:{unique_id}" if offline else str(transaction_id)
        session_id = session_id_for(env.station_id, session_key)
        self._meter_values(
            env, unique_id, payload.get("transactionData") or [], session_id,
            str(transaction_id), 0, None, None, "$.frame[3].transactionData", "ocpp1.6", out,
        )  # fmt: skip
        out.records.append(
            (
                "session_events",
                session_id,
                SessionEvent(
                    event_id=stable_id(env.station_id, unique_id, "StopTransaction"),
                    event_time=_timestamp(payload["timestamp"], "$.frame[3].timestamp"),
                    source=f"{self._prefix}:ocpp1.6",
                    session_id=session_id,
                    station_id=env.station_id,
                    evse_id=0,
                    transaction_id=str(transaction_id),
                    kind="ended",
                    token_hash=self._token(payload.get("idTag")),
                    token_type="ISO14443" if payload.get("idTag") else None,
                    meter_stop_wh=payload["meterStop"],
                    stop_reason=payload.get("reason", "Local"),
                    offline=offline,
                ),
            )
        )

    def _meter_values_16(
        self, env: OcppFrame, unique_id: str, payload: Mapping[str, Any], out: Adapted
    ) -> None:
        transaction_id = payload.get("transactionId")
        if transaction_id is None or transaction_id <= 0:
            raise UnsupportedFrame("MeterValues outside a transaction")
        session_id = session_id_for(env.station_id, str(transaction_id))
        connector = payload["connectorId"]
        self._meter_values(
            env, unique_id, payload["meterValue"], session_id, str(transaction_id),
            connector, connector, None, "$.frame[3].meterValue", "ocpp1.6", out,
        )  # fmt: skip

    # ---------------------------------------------------------------- shared

    def _meter_values(
        self,
        env: OcppFrame,
        unique_id: str,
        meter_values: list[Mapping[str, Any]],
        session_id: str,
        transaction_id: str,
        evse_id: int,
        connector_id: int | None,
        seq_no: int | None,
        path: str,
        protocol: str,
        out: Adapted,
    ) -> dict[str, int]:
        """Append one reading per meterValue element; return begin/end registers seen."""
        registers: dict[str, int] = {}
        source = f"{self._prefix}:{protocol}"
        for i, mv in enumerate(meter_values):
            sample = _Sample()
            mv_path = f"{path}[{i}]"
            for j, sv in enumerate(mv["sampledValue"]):
                _sampled_value(sample, sv, f"{mv_path}.sampledValue[{j}]", protocol=protocol)
            if not sample.useful() and sample.signed is None:
                continue
            context = sample.context or "Sample.Periodic"
            energy = sample.energy_wh()
            if energy is not None and context in ("Transaction.Begin", "Transaction.End"):
                registers[context] = energy
            out.records.append(
                (
                    "meter_readings",
                    session_id,
                    MeterReading(
                        event_id=stable_id(env.station_id, unique_id, "meterValue", i),
                        event_time=_timestamp(mv["timestamp"], f"{mv_path}.timestamp"),
                        source=source,
                        session_id=session_id,
                        station_id=env.station_id,
                        evse_id=evse_id,
                        connector_id=connector_id,
                        transaction_id=transaction_id,
                        energy_wh=energy,
                        power_w=sample.power_w(),
                        current_a=sample.current_a(),
                        voltage_v=sample.voltage_v(),
                        soc_pct=sample.soc,
                        context=context,  # type: ignore[arg-type]
                        seq_no=seq_no,
                        signed_data=sample.signed,
                    ),
                )
            )
        return registers

    # ---------------------------------------------------------------- 2.0.1

    def _transaction_event(
        self, env: OcppFrame, unique_id: str, payload: Mapping[str, Any], out: Adapted
    ) -> None:
        info = payload["transactionInfo"]
        transaction_id = info["transactionId"]
        session_id = session_id_for(env.station_id, transaction_id)
        evse = payload.get("evse") or {}
        evse_id = evse.get("id", 0)
        connector_id = evse.get("connectorId")
        seq_no = payload["seqNo"]
        registers = self._meter_values(
            env, unique_id, payload.get("meterValue") or [], session_id, transaction_id,
            evse_id, connector_id, seq_no, "$.frame[3].meterValue", "ocpp2.0.1", out,
        )  # fmt: skip
        token = payload.get("idToken") or {}
        kind = payload["eventType"].lower()
        out.records.append(
            (
                "session_events",
                session_id,
                SessionEvent(
                    event_id=stable_id(env.station_id, unique_id, "TransactionEvent"),
                    event_time=_timestamp(payload["timestamp"], "$.frame[3].timestamp"),
                    source=f"{self._prefix}:ocpp2.0.1",
                    session_id=session_id,
                    station_id=env.station_id,
                    evse_id=evse_id,
                    connector_id=connector_id,
                    transaction_id=transaction_id,
                    kind=kind,
                    token_hash=self._token(token.get("idToken")),
                    token_type=token.get("type"),
                    meter_start_wh=registers.get("Transaction.Begin"),
                    meter_stop_wh=registers.get("Transaction.End") if kind == "ended" else None,
                    stop_reason=info.get("stoppedReason") if kind == "ended" else None,
                    trigger_reason=payload["triggerReason"],
                    seq_no=seq_no,
                    offline=bool(payload.get("offline", False)),
                ),
            )
        )
