"""The operator API's view, pure: records -> view rows, request parsing, pages, summaries.

The API process (:mod:`streams.api`) follows the output topics and keeps a materialised view
(:mod:`streams.api_store`, SQLite). Everything that decides *what* the view holds and *what*
a request means lives here, without Kafka, HTTP or SQL:

* :func:`project` turns one consumed message into one view row (or None for what the view
  skips: clock ticks, tombstones), raising :class:`~topics.exceptions.RecordDecodeError` on
  a record that breaks its contract;
* :func:`parse_alert_query`, :func:`parse_summary_query` and :func:`parse_label_request`
  turn query strings and bodies into typed requests, raising :class:`BadRequest` with the
  parameter's name and the problem;
* :func:`encode_cursor` / :func:`decode_cursor` are the keyset cursor of the alert list;
* :func:`summarise` folds the latest verdict of each reconciliation case into per-day and
  per-currency totals;
* the response shapes are msgspec Structs, so the OpenAPI document
  (:mod:`streams.api_openapi`) is generated from the very types the handlers encode.

Money stays integer minor units plus currency everywhere; no float is ever computed here.

Examples
--------
>>> from datetime import UTC, datetime
>>> encode_cursor(1714989600000, 42)
'1714989600000.42'
>>> decode_cursor('1714989600000.42')
(1714989600000, 42)
>>> q = parse_alert_query({"severity": "critical", "limit": "2", "labelled": "false"})
>>> (q.severity, q.limit, q.labelled)
('critical', 2, False)
>>> parse_alert_query({"limit": "0"})
Traceback (most recent call last):
...
topics.operator_view.BadRequest: limit: must be an integer from 1 to 500, got '0'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from topics.catalog import CLOCK_KEY
from topics.codec import decode
from topics.exceptions import RecordDecodeError
from topics.records import (
    AlertLabel,
    FraudAlert,
    PaymentEvent,
    ReconciliationOutcome,
    ReconciliationResult,
    SessionBill,
    SessionEvent,
)
from topics.times import to_ms

__all__ = [
    "FOLLOWED",
    "LEAKAGE_OUTCOMES",
    "MAX_LIMIT",
    "AlertPage",
    "AlertQuery",
    "AlertRow",
    "AlertView",
    "BadRequest",
    "BillRow",
    "CaseRow",
    "DayTotals",
    "Delivery",
    "DeliveryRow",
    "ErrorBody",
    "EventRow",
    "Health",
    "LabelRequest",
    "LabelRow",
    "PaymentRow",
    "ReconciliationView",
    "ResultRow",
    "SessionPicture",
    "Summary",
    "SummaryQuery",
    "decode_cursor",
    "encode_cursor",
    "parse_alert_query",
    "parse_label_request",
    "parse_summary_query",
    "project",
    "summarise",
]

FOLLOWED = (
    "session_events",
    "payment_events",
    "session_bills",
    "reconciliation",
    "fraud_alerts",
    "alert_labels",
    "alert_deliveries",
)
"""Catalog short names of the topics the view follows. ``reconciliation_mismatches`` is not
among them: it repeats a subset of ``reconciliation``."""

MAX_LIMIT = 500
"""Largest page of the alert list."""
DEFAULT_LIMIT = 50

LEAKAGE_OUTCOMES = frozenset({"undercharged", "missing_payment"})
"""Outcomes whose negative delta is revenue the CPO did not collect (as in ``voltguard
replay``'s summary): leakage is the sum of ``-delta_minor`` over them."""

Severity = Literal["info", "warning", "error", "critical"]
Label = Literal["fraud", "legitimate", "unsure"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
LABELS: tuple[str, ...] = get_args(Label)
OUTCOMES: tuple[str, ...] = get_args(ReconciliationOutcome)

CURSOR_PATTERN = r"^[0-9]{1,15}\.[0-9]{1,15}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# the documented patterns, matched whole (``$`` alone would accept a trailing newline)
_CURSOR = re.compile(CURSOR_PATTERN[1:-1])
_CURRENCY = re.compile(CURRENCY_PATTERN[1:-1])
_DATE = re.compile(DATE_PATTERN[1:-1])
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


class BadRequest(ValueError):
    """A request parameter or body is invalid; the message starts with its name."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter
        self.problem = problem


# --------------------------------------------------------------------------- view rows


@dataclass(frozen=True, slots=True)
class EventRow:
    """A session event of the session picture."""

    record: SessionEvent


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """A payment event; ``session_id`` None when the payment names no session."""

    record: PaymentEvent


@dataclass(frozen=True, slots=True)
class BillRow:
    """One publication of a session's bill; ``position`` orders the publications."""

    record: SessionBill
    position: tuple[int, int]


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One publication (revision) of a reconciliation case's verdict.

    The results of one case (one ``result_id``) share the session key and so a partition:
    ``position`` (partition, offset) orders them, and the latest is the case's verdict.
    """

    record: ReconciliationResult
    position: tuple[int, int]


@dataclass(frozen=True, slots=True)
class AlertRow:
    """A fraud alert (a republished alert id replaces the earlier record)."""

    record: FraudAlert


@dataclass(frozen=True, slots=True)
class LabelRow:
    """An analyst's label on an alert; the alert's label is its latest by event time."""

    record: AlertLabel


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A row of the alert router's delivery record (``notice|destination|action``)."""

    notice_key: str
    destination: str
    action: str
    status: str
    attempts: int
    at: str | None


ViewRow = EventRow | PaymentRow | BillRow | ResultRow | AlertRow | LabelRow | DeliveryRow


class _DeliveryValue(msgspec.Struct, frozen=True):
    status: Annotated[str, Meta(min_length=1)]
    attempts: Annotated[int, Meta(ge=0)] = 0
    at: str | None = None


def project(
    short: str, key: bytes | None, value: bytes | None, partition: int, offset: int
) -> ViewRow | None:
    """The view row of one message of a followed topic (``short`` is its catalog name).

    None for what the view skips: the ingest's clock ticks and tombstones (a compacted topic's
    deletions; the view keeps what it saw). Raises RecordDecodeError for a broken record.

    >>> project("session_events", b"\\x00clock", b"{}", 0, 0) is None
    True
    >>> project("alert_deliveries", b"a1|pager|trigger", b'{"status":"delivered","attempts":1}',
    ...         0, 7)
    DeliveryRow(notice_key='a1', destination='pager', action='trigger', status='delivered', attempts=1, at=None)
    """
    if key == CLOCK_KEY or value is None:
        return None
    if short == "session_events":
        return EventRow(decode(value, SessionEvent))
    if short == "payment_events":
        return PaymentRow(decode(value, PaymentEvent))
    if short == "session_bills":
        return BillRow(decode(value, SessionBill), (partition, offset))
    if short == "reconciliation":
        return ResultRow(decode(value, ReconciliationResult), (partition, offset))
    if short == "fraud_alerts":
        return AlertRow(decode(value, FraudAlert))
    if short == "alert_labels":
        return LabelRow(decode(value, AlertLabel))
    if short == "alert_deliveries":
        text = (key or b"").decode("utf-8", "replace")
        parts = text.rsplit("|", 2)
        if len(parts) != 3 or not all(parts):
            raise RecordDecodeError(
                f"delivery record: key {text!r} is not notice|destination|action",
                record="delivery",
            )
        row = decode(value, _DeliveryValue)
        return DeliveryRow(parts[0], parts[1], parts[2], row.status, row.attempts, row.at)
    raise ValueError(f"the operator view does not follow {short!r}")


def case_day(result: ReconciliationResult) -> str:
    """The UTC day a case counts on: that of its first verdict's event time (its latest
    evidence then), kept when later revisions correct it.

    >>> from datetime import UTC, datetime
    >>> r = ReconciliationResult(event_id="e", event_time=datetime(2024, 5, 6, 23, 59,
    ...     tzinfo=UTC), source="b", result_id="r", session_id="s", outcome="matched")
    >>> case_day(r)
    '2024-05-06'
    """
    return result.event_time.astimezone(UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class CaseRow:
    """The latest verdict of one reconciliation case, with the day it counts on."""

    day: str
    currency: str | None
    outcome: str
    expected_minor: int
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    delta_minor: int

    @classmethod
    def of(cls, result: ReconciliationResult, day: str) -> CaseRow:
        return cls(
            day=day,
            currency=result.currency,
            outcome=result.outcome,
            expected_minor=result.expected_minor,
            authorized_minor=result.authorized_minor,
            captured_minor=result.captured_minor,
            refunded_minor=result.refunded_minor,
            delta_minor=result.delta_minor,
        )


# --------------------------------------------------------------------------- responses


class ErrorBody(msgspec.Struct, frozen=True):
    """An error: a short code and a sentence for a person."""

    error: str
    detail: str = ""


class Delivery(msgspec.Struct, frozen=True):
    """What the alert router did with a notice for one destination and action."""

    destination: str
    action: str
    status: str
    attempts: int
    at: str | None = None


class AlertView(msgspec.Struct, frozen=True):
    """An alert with its current label, every label given, and its deliveries."""

    alert: FraudAlert
    label: AlertLabel | None
    labels: list[AlertLabel]
    deliveries: list[Delivery]


class ReconciliationView(msgspec.Struct, frozen=True):
    """A reconciliation case: its latest verdict, every revision (oldest first) and what the
    alert router delivered about it (mismatches are paged, a return to matched resolves)."""

    result: ReconciliationResult
    revisions: list[ReconciliationResult]
    deliveries: list[Delivery]


class SessionPicture(msgspec.Struct, frozen=True):
    """Everything the view knows about one session."""

    session_id: str
    events: list[SessionEvent]
    payments: list[PaymentEvent]
    bill: SessionBill | None
    bill_revisions: list[SessionBill]
    reconciliation: list[ReconciliationView]
    alerts: list[AlertView]


class AlertPage(msgspec.Struct, frozen=True):
    """One page of alerts, newest first; pass ``next_cursor`` back for the next page."""

    items: list[AlertView]
    next_cursor: str | None


class DayTotals(msgspec.Struct, frozen=True):
    """Reconciled cases of one UTC day and one currency (null: no currency known, e.g. an
    unrated session without payments), by their latest verdict. Amounts are minor units."""

    day: str
    currency: str | None
    cases: int
    outcomes: dict[str, int]
    billed_minor: int
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    leakage_minor: int
    """Sum of ``-delta_minor`` over undercharged and missing_payment cases."""
    unreconciled_minor: int
    """Sum of ``|delta_minor|`` over every case whose verdict is not matched."""


class Summary(msgspec.Struct, frozen=True, rename={"from_": "from"}):
    """The reconciliation summary of ``from``..``to`` (UTC days, inclusive)."""

    from_: str
    to: str
    currency: str | None
    days: list[DayTotals]


class Health(msgspec.Struct, frozen=True):
    """The process: is the follower running, has the view caught up with start-up, sizes."""

    status: Literal["ok", "starting", "failed"]
    caught_up: bool
    lag: dict[str, int]
    counts: dict[str, int]
    detail: str = ""


class LabelRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/alerts/{alert_id}/labels``."""

    label: Label
    comment: Annotated[str, Meta(max_length=2000)] = ""
    analyst: Annotated[str, Meta(min_length=1, max_length=256)] = "operator-api"
    """Who labels; the API token is shared, so this is the caller's word, not a login."""


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Filters and page of ``GET /v1/alerts`` (``since`` inclusive, ``until`` exclusive, on
    the alert's event time, milliseconds)."""

    kind: str | None = None
    severity: str | None = None
    station: str | None = None
    session: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    labelled: bool | None = None
    label: str | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class SummaryQuery:
    """``from``..``to`` (inclusive ISO dates) and an optional currency."""

    first: date
    last: date
    currency: str | None = None


ALERT_PARAMETERS = (
    "kind",
    "severity",
    "station",
    "session",
    "since",
    "until",
    "labelled",
    "label",
    "limit",
    "cursor",
)
SUMMARY_PARAMETERS = ("from", "to", "currency")


def _only(params: Mapping[str, str], allowed: Iterable[str]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequest(unknown[0], f"unknown parameter (known: {', '.join(allowed)})")


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not 1 <= len(value) <= 256:
        raise BadRequest(name, "must be 1 to 256 characters")
    return value


def parse_datetime(name: str, raw: str) -> int:
    """Milliseconds of an RFC 3339 date-time with an offset (a leap second counts as :59).

    >>> parse_datetime("since", "2024-05-06T10:00:00Z")
    1714989600000
    >>> parse_datetime("since", "2024-05-06")
    Traceback (most recent call last):
    ...
    topics.operator_view.BadRequest: since: must be an RFC 3339 date-time with an offset, e.g. 2024-05-06T10:00:00Z
    """
    m = _DATETIME.fullmatch(raw)
    problem = "must be an RFC 3339 date-time with an offset, e.g. 2024-05-06T10:00:00Z"
    if m is None:
        raise BadRequest(name, problem)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, offset = m.group(7) or "", m.group(8)
    try:
        tz = UTC
        if offset not in ("Z", "z"):
            sign = 1 if offset[0] == "+" else -1
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError("offset")
            tz = timezone(timedelta(minutes=sign * (hours * 60 + minutes)))
        micros = int((fraction[1:] + "000000")[:6]) if fraction else 0
        moment = datetime(year, month, day, hour, minute, min(second, 59), micros, tzinfo=tz)
        if second > 60:
            raise ValueError("second")
        return to_ms(moment)
    except (ValueError, OverflowError):
        raise BadRequest(name, problem) from None


def _date(name: str, raw: str | None) -> date | None:
    if raw is None:
        return None
    if _DATE.fullmatch(raw) is None:
        raise BadRequest(name, "must be a date, YYYY-MM-DD")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadRequest(name, "must be a date, YYYY-MM-DD") from None


def parse_alert_query(params: Mapping[str, str]) -> AlertQuery:
    """The :class:`AlertQuery` of ``GET /v1/alerts``'s query string."""
    _only(params, ALERT_PARAMETERS)
    severity = params.get("severity")
    if severity is not None and severity not in SEVERITIES:
        raise BadRequest("severity", f"must be one of {', '.join(SEVERITIES)}")
    label = params.get("label")
    if label is not None and label not in LABELS:
        raise BadRequest("label", f"must be one of {', '.join(LABELS)}")
    labelled_raw = params.get("labelled")
    if labelled_raw not in (None, "true", "false"):
        raise BadRequest("labelled", "must be true or false")
    limit = DEFAULT_LIMIT
    if "limit" in params:
        raw = params["limit"]
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
            raise BadRequest("limit", f"must be an integer from 1 to {MAX_LIMIT}, got {raw!r}")
        limit = int(raw)
    since = parse_datetime("since", params["since"]) if "since" in params else None
    until = parse_datetime("until", params["until"]) if "until" in params else None
    after = decode_cursor(params["cursor"]) if "cursor" in params else None
    return AlertQuery(
        kind=_text(params, "kind"),
        severity=severity,
        station=_text(params, "station"),
        session=_text(params, "session"),
        since_ms=since,
        until_ms=until,
        labelled=None if labelled_raw is None else labelled_raw == "true",
        label=label,
        limit=limit,
        after=after,
    )


def parse_summary_query(params: Mapping[str, str], *, today: date) -> SummaryQuery:
    """The :class:`SummaryQuery` of ``GET /v1/reconciliation/summary``: ``to`` defaults to
    ``today`` (UTC), ``from`` to 29 days before ``to`` (30 days). ``from`` after ``to`` is an
    empty range, not an error; the range is not capped (the query reads the cases of those
    days only, through an index)."""
    _only(params, SUMMARY_PARAMETERS)
    last = _date("to", params.get("to")) or today
    first = _date("from", params.get("from"))
    if first is None:
        first = last - timedelta(days=29) if last > date.min + timedelta(days=29) else date.min
    currency = params.get("currency")
    if currency is not None and _CURRENCY.fullmatch(currency) is None:
        raise BadRequest("currency", "must be an ISO 4217 code, e.g. EUR")
    return SummaryQuery(first, last, currency)


def parse_label_request(body: bytes) -> LabelRequest:
    """The :class:`LabelRequest` of a label body (JSON object)."""
    try:
        return msgspec.json.decode(body, type=LabelRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest("body", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest("body", f"not valid JSON: {exc}") from None


def encode_cursor(event_time_ms: int, seq: int) -> str:
    """The cursor after the alert at (event time, arrival number)."""
    return f"{event_time_ms}.{seq}"


def decode_cursor(raw: str) -> tuple[int, int]:
    """(event time ms, arrival number) of a cursor; any string of that shape is a position."""
    if _CURSOR.fullmatch(raw) is None:
        raise BadRequest("cursor", "not a cursor of this API (pass next_cursor back as is)")
    ms, seq = raw.split(".")
    return int(ms), int(seq)


# --------------------------------------------------------------------------- summary


def summarise(cases: Iterable[CaseRow]) -> list[DayTotals]:
    """Per (day, currency) totals of the cases' latest verdicts, in day then currency order
    (null currency last).

    >>> rows = [CaseRow("2024-05-06", "EUR", "matched", 500, 500, 500, 0, 0),
    ...         CaseRow("2024-05-06", "EUR", "undercharged", 900, 900, 600, 0, -300),
    ...         CaseRow("2024-05-06", "EUR", "overcharged", 100, 200, 200, 0, 100)]
    >>> t, = summarise(rows)
    >>> (t.cases, t.billed_minor, t.captured_minor, t.leakage_minor, t.unreconciled_minor)
    (3, 1500, 1300, 300, 400)
    """
    groups: dict[tuple[str, str | None], list[CaseRow]] = {}
    for c in cases:
        groups.setdefault((c.day, c.currency), []).append(c)
    out = []
    for day, currency in sorted(groups, key=lambda k: (k[0], k[1] is None, k[1] or "")):
        rows = groups[(day, currency)]
        outcomes: dict[str, int] = {}
        for r in rows:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        out.append(
            DayTotals(
                day=day,
                currency=currency,
                cases=len(rows),
                outcomes=dict(sorted(outcomes.items())),
                billed_minor=sum(r.expected_minor for r in rows),
                authorized_minor=sum(r.authorized_minor for r in rows),
                captured_minor=sum(r.captured_minor for r in rows),
                refunded_minor=sum(r.refunded_minor for r in rows),
                leakage_minor=sum(-r.delta_minor for r in rows if r.outcome in LEAKAGE_OUTCOMES),
                unreconciled_minor=sum(abs(r.delta_minor) for r in rows if r.outcome != "matched"),
            )
        )
    return out


def current_label(labels: Iterable[AlertLabel]) -> AlertLabel | None:
    """The label that counts: the latest by event time (then event id, for a tie)."""
    return max(labels, key=lambda a: (a.event_time, a.event_id), default=None)


def alert_sort_key(alert: FraudAlert, seq: int) -> tuple[int, int]:
    """Position of an alert in the list (newest first: the list sorts this descending)."""
    return to_ms(alert.event_time), seq
