"""Canonical event records: the data contracts of DESIGN.md "Contracts".

Every record carries ``schema_version``, ``event_id`` (unique, for idempotency), ``event_time``
(timezone-aware, when it happened) and ``source``. Records are immutable ``msgspec.Struct``
classes: decoding validates types and constraints in compiled code (about 1 microsecond per
record, where ``faust.Record`` validation costs tens), and a failure names the JSON path of
the field and the problem (see :func:`topics.codec.decode`).

Money is integer minor units plus an ISO 4217 currency; rates are :class:`decimal.Decimal`
(encoded as strings); energy is integer watt-hours. Identifiers of people (idTag, card
fingerprint) only ever appear as keyed hashes (``*_hash`` fields).

Examples
--------
>>> from datetime import datetime, timezone
>>> r = MeterReading(event_id="e1", event_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
...                  source="ocpp1.6", session_id="s1", station_id="CP1", evse_id=1,
...                  connector_id=1, energy_wh=1200)
>>> r.energy_wh, r.schema_version
(1200, 1)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "AlertLabel",
    "BillLine",
    "ClockTick",
    "Connector",
    "DeadLetter",
    "Event",
    "FraudAlert",
    "MeterReading",
    "ModelUpdate",
    "OcppFrame",
    "PaymentEvent",
    "PriceComponent",
    "ReconciliationResult",
    "SessionBill",
    "SessionEvent",
    "SessionFeatures",
    "Station",
    "Tariff",
    "TariffElement",
    "TariffRestrictions",
]

UtcDatetime = Annotated[datetime, Meta(tz=True, description="timezone-aware timestamp")]
Id = Annotated[str, Meta(min_length=1, max_length=256)]
Hash = Annotated[str, Meta(pattern="^[0-9a-f]{16,128}$", description="keyed hash, hex")]
Currency = Annotated[str, Meta(pattern="^[A-Z]{3}$", description="ISO 4217 code")]
MinorUnits = Annotated[int, Meta(ge=-(10**12), le=10**12)]
NonNegInt = Annotated[int, Meta(ge=0)]
Wh = Annotated[int, Meta(ge=-(10**12), le=10**12, description="watt-hours")]
Pct = Annotated[float, Meta(ge=0, le=100)]
Lat = Annotated[float, Meta(ge=-90, le=90)]
Lon = Annotated[float, Meta(ge=-180, le=180)]


class Event(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=False):
    """Fields every record carries."""

    schema_version: Annotated[int, Meta(ge=1)] = 1
    event_id: Id
    event_time: UtcDatetime
    source: Id


# --------------------------------------------------------------------------- raw input


class OcppFrame(msgspec.Struct, kw_only=True, frozen=True):
    """What a CSMS forwards for every OCPP-J message it sends or receives.

    ``frame`` is the OCPP-J array exactly as on the wire: ``[2, uniqueId, action, payload]``
    (CALL), ``[3, uniqueId, payload]`` (CALLRESULT) or ``[4, uniqueId, code, text, details]``
    (CALLERROR). Calls and results of both directions are forwarded, so the adapter can pair
    a 1.6 StartTransaction with the transactionId the CSMS assigned in its answer.
    """

    station_id: Id
    received_at: UtcDatetime
    protocol: Literal["ocpp1.6", "ocpp2.0.1"]
    frame: list[object]
    schema_version: Annotated[int, Meta(ge=1)] = 1


# --------------------------------------------------------------------------- canonical input

MeterContext = Literal[
    "Interruption.Begin",
    "Interruption.End",
    "Sample.Clock",
    "Sample.Periodic",
    "Transaction.Begin",
    "Transaction.End",
    "Trigger",
    "Other",
]


class MeterReading(Event, kw_only=True, frozen=True):
    """One timestamped meter sample of a session (all measurands of that timestamp).

    ``energy_wh`` is the active import register (cumulative), not an interval; ``power_w`` and
    ``current_a`` are totals over phases; ``voltage_v`` is the mean phase voltage.
    """

    session_id: Id
    station_id: Id
    evse_id: NonNegInt
    connector_id: NonNegInt | None = None
    transaction_id: str | None = None
    energy_wh: Wh | None = None
    power_w: float | None = None
    current_a: float | None = None
    voltage_v: float | None = None
    soc_pct: Pct | None = None
    context: MeterContext = "Sample.Periodic"
    seq_no: NonNegInt | None = None
    signed_data: str | None = None


SessionKind = Literal["started", "updated", "ended"]
AuthStatus = Literal["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx", "Unknown", "NoCredit", "NotAllowedTypeEVSE", "NotAtThisLocation", "NotAtThisTime"]  # fmt: skip


class SessionEvent(Event, kw_only=True, frozen=True):
    """A session's lifecycle: started, updated (e.g. authorised, offline flag) and ended."""

    session_id: Id
    station_id: Id
    evse_id: NonNegInt
    connector_id: NonNegInt | None = None
    transaction_id: str | None = None
    kind: SessionKind
    token_hash: Hash | None = None
    token_type: str | None = None
    auth_status: AuthStatus | None = None
    meter_start_wh: Wh | None = None
    meter_stop_wh: Wh | None = None
    stop_reason: str | None = None
    trigger_reason: str | None = None
    seq_no: NonNegInt | None = None
    offline: bool = False
    tariff_id: str | None = None


PaymentKind = Literal[
    "authorized",
    "auth_adjusted",
    "captured",
    "refunded",
    "voided",
    "chargeback_opened",
    "chargeback_closed",
    "failed",
]


class PaymentEvent(Event, kw_only=True, frozen=True):
    """Money moving (or failing to): one PSP notification mapped onto the canonical kinds.

    ``session_id`` may be missing: such a payment is an orphan candidate until a session with
    the station and transaction it names appears.
    """

    payment_id: Id
    session_id: Id | None = None
    station_id: str | None = None
    transaction_id: str | None = None
    psp: Id
    psp_reference: Id
    kind: PaymentKind
    amount_minor: Annotated[int, Meta(ge=0, le=10**12)]
    currency: Currency
    method: Literal["card", "wallet", "prepaid", "roaming"]
    card_fingerprint_hash: Hash | None = None
    terminal_id: str | None = None


# --------------------------------------------------------------------------- reference data


class Connector(msgspec.Struct, kw_only=True, frozen=True):
    """One connector of an EVSE, with the power it can deliver."""

    evse_id: NonNegInt
    connector_id: NonNegInt
    standard: str
    power_type: Literal["AC_1_PHASE", "AC_3_PHASE", "DC"]
    max_power_w: Annotated[int, Meta(gt=0, le=1_000_000)]


class Station(Event, kw_only=True, frozen=True):
    """A charging station (compacted reference topic, keyed by ``station_id``)."""

    station_id: Id
    name: str = ""
    operator_id: str = ""
    lat: Lat
    lon: Lon
    timezone: str = "UTC"
    group: str = "default"
    tariff_id: Id
    connectors: Annotated[list[Connector], Meta(min_length=1)]


class TariffRestrictions(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """OCPI 2.2.1 TariffRestrictions; times are local "HH:MM", days are OCPI day names."""

    start_time: Annotated[str, Meta(pattern="^([01][0-9]|2[0-3]):[0-5][0-9]$")] | None = None
    end_time: Annotated[str, Meta(pattern="^([01][0-9]|2[0-3]):[0-5][0-9]$")] | None = None
    start_date: str | None = None
    end_date: str | None = None
    min_kwh: Decimal | None = None
    max_kwh: Decimal | None = None
    min_current: Decimal | None = None
    max_current: Decimal | None = None
    min_power: Decimal | None = None
    max_power: Decimal | None = None
    min_duration: NonNegInt | None = None
    max_duration: NonNegInt | None = None
    day_of_week: list[Literal["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]] | None = None  # fmt: skip
    reservation: Literal["RESERVATION", "RESERVATION_EXPIRES"] | None = None


class PriceComponent(msgspec.Struct, kw_only=True, frozen=True):
    """OCPI 2.2.1 PriceComponent: price excl. VAT per unit, VAT percent, step size."""

    type: Literal["ENERGY", "FLAT", "PARKING_TIME", "TIME"]
    price: Decimal
    vat: Decimal | None = None
    step_size: Annotated[int, Meta(ge=1)] = 1


class TariffElement(msgspec.Struct, kw_only=True, frozen=True):
    price_components: Annotated[list[PriceComponent], Meta(min_length=1)]
    restrictions: TariffRestrictions | None = None


class Tariff(Event, kw_only=True, frozen=True):
    """An OCPI 2.2.1 tariff (compacted reference topic, keyed by ``tariff_id``).

    ``min_price_minor``/``max_price_minor`` are amounts incl. VAT in minor units.
    """

    tariff_id: Id
    currency: Currency
    elements: Annotated[list[TariffElement], Meta(min_length=1)]
    min_price_minor: NonNegInt | None = None
    max_price_minor: NonNegInt | None = None
    timezone: str = "UTC"


# --------------------------------------------------------------------------- outputs


class BillLine(msgspec.Struct, kw_only=True, frozen=True):
    """One line of a rated bill: what was billed, how much of it, at what price."""

    component: Literal["ENERGY", "FLAT", "PARKING_TIME", "TIME", "MIN_PRICE", "MAX_PRICE"]
    volume: Decimal
    unit: Literal["kWh", "h", "session", "adjustment"]
    unit_price: Decimal
    vat_pct: Decimal
    amount_excl_vat_minor: MinorUnits
    vat_minor: MinorUnits


class SessionBill(Event, kw_only=True, frozen=True):
    """A session rated against its tariff."""

    session_id: Id
    station_id: Id
    tariff_id: Id
    currency: Currency
    energy_wh: Wh
    charging_s: NonNegInt
    idle_s: NonNegInt
    lines: list[BillLine]
    total_excl_vat_minor: MinorUnits
    total_vat_minor: MinorUnits
    total_minor: MinorUnits
    input_event_ids: list[str] = []


ReconciliationOutcome = Literal[
    "matched",
    "undercharged",
    "overcharged",
    "missing_payment",
    "orphan_payment",
    "duplicate_capture",
    "refund_exceeds_capture",
    "currency_mismatch",
    "capture_exceeds_authorization",
    "authorization_expired",
    "chargeback",
    "unrated",
]


class ReconciliationResult(Event, kw_only=True, frozen=True):
    """The outcome of matching a session's bill with the money that moved."""

    result_id: Id
    session_id: str | None
    payment_ids: list[str] = []
    outcome: ReconciliationOutcome
    """The most serious finding; every finding is in ``outcomes``."""
    outcomes: list[ReconciliationOutcome] = []
    currency: Currency | None = None
    expected_minor: MinorUnits = 0
    authorized_minor: MinorUnits = 0
    captured_minor: MinorUnits = 0
    refunded_minor: MinorUnits = 0
    delta_minor: MinorUnits = 0
    revision: NonNegInt = 0
    evidence_event_ids: list[str] = []
    detail: str = ""
    decided_at: UtcDatetime | None = None
    """The event-time watermark when this version was published (``event_time`` is the
    latest evidence): how long the verdict waited. Not part of the content hash."""


class FraudAlert(Event, kw_only=True, frozen=True):
    """An explained fraud alert; ``alert_id`` is a hash of what it is about (deterministic)."""

    alert_id: Id
    kind: Id
    severity: Literal["info", "warning", "error", "critical"]
    score: float
    subject_type: Literal["session", "token", "card", "station", "terminal", "payment"]
    subject_id: Id
    session_id: str | None = None
    station_id: str | None = None
    evidence: dict[str, object] = {}
    evidence_event_ids: list[str] = []
    explanation: str
    detector: Id
    model_version: str | None = None


class SessionFeatures(Event, kw_only=True, frozen=True):
    """The feature vector of one ended session, for scoring and retraining.

    Besides the numbers it carries what detection repartitions by (token, cards, station)
    and what explanations quote (register anomalies, missing seqNos, evidence ids).
    """

    session_id: Id
    station_id: Id
    features: dict[str, float]
    model_input_version: NonNegInt = 1
    token_hash: Hash | None = None
    token_type: str | None = None
    auth_status: AuthStatus | None = None
    card_fingerprint_hashes: list[str] = []
    started_at: UtcDatetime | None = None
    lat: Lat | None = None
    lon: Lon | None = None
    evidence_event_ids: list[str] = []
    anomalies: list[dict[str, object]] = []
    seq_gaps: list[int] = []


class AlertLabel(Event, kw_only=True, frozen=True):
    """An analyst's verdict on an alert."""

    alert_id: Id
    label: Literal["fraud", "legitimate", "unsure"]
    analyst: Id
    comment: str = ""


class ModelUpdate(Event, kw_only=True, frozen=True):
    """A model registry announcement: ``version`` of ``model_name`` is now in service.

    ``artifact`` is the file of that version, relative to the registry's root, and ``sha256``
    its digest (a worker refuses a file that does not match). ``metrics`` are the held-out
    figures that made it better than ``replaces`` (the version it took over from).
    """

    model_name: Id
    version: Id
    artifact: str
    sha256: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    feature_names: list[str]
    model_input_version: NonNegInt
    metrics: dict[str, float] = {}
    replaces: str | None = None


class ClockTick(Event, kw_only=True, frozen=True):
    """Input seen by ingest has reached ``event_time`` (a whole minute): the watermark.

    Ingest sends one to every partition of the clock topic when the minute advances, so a
    partition with no traffic of its own still sees event time pass. With several ingest
    workers each vouches only for the input partitions it reads (:mod:`topics.clock`).
    """

    covers: list[str] | None = None
    """Input partitions (``short_topic/partition``) whose input up to ``event_time`` was
    written before this tick; None: the sender's whole input (one writer)."""
    idle: list[str] = []
    """Input partitions read to their end (a subset of ``covers``, or alone when the sender
    has read nothing): they do not hold the clock back."""
    inputs: int | None = None
    """How many input partitions there are in all (None: one writer vouches for all)."""
    sent_ms: int | None = None
    """The sender's wall clock (Unix ms) when it sent the tick: its ``idle`` claims are
    leases renewed by each tick (:data:`topics.clock.IDLE_LEASE_MS`); None: they hold until
    retracted."""


class DeadLetter(Event, kw_only=True, frozen=True):
    """Input that could not be accepted, kept whole with where it came from and why."""

    original_topic: str
    original_partition: int
    original_offset: int
    original_key: bytes | None = None
    original_value: bytes | None = None
    stage: Id
    error_type: Id
    reason: str
