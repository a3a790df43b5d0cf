"""CSV session exports (one row per charging session) to canonical events.

Operators and public open-data portals publish charging sessions as CSV files: one row per
session with a station, a start, usually an end and the energy delivered. This module maps
such rows onto the canonical records, driven by a small declarative :class:`ColumnMapping`
(shipped ones live in ``topics/adapters/mappings/*.yaml``). It is a pure core: it reads
text it is given, never a clock, the environment or the network.

Each row gives one :data:`ImportResult`: either an :class:`ImportedSession` carrying its
events, or a :class:`RowError` naming the line, the reason and the raw row. No row is ever
skipped silently (blank lines are not rows). A closed session gives four events:

1. ``SessionEvent(kind="started")`` at the start, ``meter_start_wh=0``;
2. ``MeterReading(context="Transaction.Begin")`` at the start, ``energy_wh=0``;
3. ``MeterReading(context="Transaction.End")`` at the end, ``energy_wh`` = energy delivered;
4. ``SessionEvent(kind="ended")`` at the end, ``meter_stop_wh`` = energy delivered.

The register is 0-based because exports give the energy of the session, not the meter
register. An open session (no end) gives only the first two, and its energy, when an
export has one, is not used. Costs and currencies are kept on :class:`ImportedSession` as
information only: no payment is invented from them.

Identity and idempotency
------------------------
``session_id`` is :func:`~topics.identity.session_id_for` of the station and the dataset's
session id (then also the ``transaction_id``), or, when the dataset has none, of a stable
hash of what the session is: station, EVSE, connector, start, end, energy and any
``identity_columns`` of the mapping. Event ids are :func:`~topics.identity.stable_id` of
the source, the session id and the event, so importing a file twice gives the same ids.
Two rows of one file with the same identity are the same session: the second is a
``duplicate`` :class:`RowError`. Without a dataset id, a session exported once open and
later closed gets a new id (its end and energy are part of what it is).

Timestamps
----------
Date formats are tried in order (:func:`datetime.strptime`, C locale). A separate time
column, when mapped, supplies the time of day. Timestamps without an offset are local
time in the mapping's ``timezone``; an ambiguous local time (the repeated hour when DST
ends) is read as its first occurrence unless that puts the end before the start, and a
local time in the DST gap is read with the offset before the gap. ``century`` adds a
century to years below 100 (``"0014-11-18"`` is 2014). ``timestamp_substitutions``
rewrite values before parsing (e.g. ``"+00"`` to ``"+00:00"``, or dropping a trailing
``" (CEST)"``).

The day/month swap
------------------
Some exports (Dundee, Perth & Kinross) were produced by reading ``dd/mm/yyyy`` dates as
``mm/dd/yyyy`` wherever that is possible and writing them as ISO: 1 December 2017 appears
as ``2017-01-12``, while 13 December appears correctly as ``2017-12-13``. So in such a
file every date whose day-of-month as written is 12 or less has day and month swapped,
and no other date does. ``day_month_swap`` in the mapping is the policy:

``never``
    Dates are read as written.
``always``
    Every date read with one of ``swap_formats`` whose written day is <= 12 is swapped.
``detect``
    Decided per file (per :func:`import_rows` call) from its first ``swap_detect_rows``
    rows. Most sessions start and end on the same day and say nothing, but a session that
    crosses midnight or a month does: a row votes for the reading under which its
    duration is plausible (0 to ``max_session_h`` hours) when the other reading makes it
    negative or implausible. The majority wins; no votes at all means ``swap_default``.
    On the real Dundee files the vote is 1,060 to 0 (and the swapped reading also puts
    every date inside the file's period), so the rule is not a guess.

Examples
--------
>>> mapping = ColumnMapping.from_yaml('''
... source: csv.example
... columns: {station_id: CP, start: Start, end: End, energy: kWh, user_id: Card}
... energy_unit: kWh
... date_formats: ["%Y-%m-%d %H:%M"]
... timezone: Europe/London
... ''')
>>> rows = [
...     {"CP": "50914", "Start": "2018-06-06 23:55", "End": "2018-06-07 01:03",
...      "kWh": "22.287", "Card": "601838"},
...     {"CP": "50914", "Start": "2018-06-07 08:00", "End": "", "kWh": "", "Card": ""},
...     {"CP": "50914", "Start": "2018-06-07 09:00", "End": "2018-06-07 08:00",
...      "kWh": "1", "Card": ""},
... ]
>>> closed, still_open, bad = import_rows(rows, mapping, hash_secret=b"k")
>>> [e.kind if isinstance(e, SessionEvent) else e.context for e in closed.events]
['started', 'Transaction.Begin', 'Transaction.End', 'ended']
>>> closed.energy_wh, closed.start.isoformat(), closed.end.isoformat()
(22287, '2018-06-06T22:55:00+00:00', '2018-06-07T00:03:00+00:00')
>>> still_open.is_open, len(still_open.events)
(True, 2)
>>> bad.line_no, bad.kind, bad.reason
(4, 'end_before_start', 'end 2018-06-07T07:00:00+00:00 is before start 2018-06-07T08:00:00+00:00')
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from itertools import chain, islice
from typing import Annotated, Literal, NamedTuple, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml
from msgspec import Meta

from topics.exceptions import AdapterError
from topics.identity import hash_identifier, session_id_for, stable_id
from topics.records import MeterReading, SessionEvent

__all__ = [
    "ColumnMapping",
    "Columns",
    "ImportResult",
    "ImportedSession",
    "RawRow",
    "RowError",
    "SwapDecision",
    "import_rows",
    "load_shipped_mapping",
    "read_rows",
    "shipped_mapping_names",
]

logger = logging.getLogger(__name__)

_MAPPINGS_PACKAGE = "topics.adapters.mappings"
_UTC = UTC
_EPOCH_YEAR = 1970
_MAX_WH = 10**12
_MAX_EXPONENT = 15
"""Numbers beyond 1e15 (or below 1e-15) are rejected before any arithmetic."""
_CACHE_SIZE = 4096
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

ColumnName = Annotated[str, Meta(min_length=1)]


# --------------------------------------------------------------------------- the mapping


class Columns(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which CSV column holds what (header names, compared after stripping spaces).

    ``station_id``, ``start`` and ``energy`` are required, and so are ``session_id``,
    ``start_time``, ``end`` and ``end_time`` when mapped: a file whose header lacks one is
    rejected whole. The others (``connector_id``, ``evse_id``, ``user_id``, ``cost``,
    ``currency``) may be missing from a file, as when only some exports of a dataset have
    a user id column.

    Examples
    --------
    >>> Columns(station_id="CP ID", start="Start Date", energy="Total kWh").end is None
    True
    """

    station_id: ColumnName
    start: ColumnName
    energy: ColumnName
    session_id: ColumnName | None = None
    connector_id: ColumnName | None = None
    evse_id: ColumnName | None = None
    start_time: ColumnName | None = None
    end: ColumnName | None = None
    end_time: ColumnName | None = None
    user_id: ColumnName | None = None
    cost: ColumnName | None = None
    currency: ColumnName | None = None


_REQUIRED_WHEN_MAPPED = (
    "station_id",
    "start",
    "energy",
    "session_id",
    "start_time",
    "end",
    "end_time",
)


class ColumnMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to read one dataset's CSV export (loaded from a small YAML file).

    Parameters
    ----------
    source
        The constant ``source`` of every record (e.g. ``"csv.dundee"``).
    columns
        Column names, see :class:`Columns`.
    energy_unit
        ``"Wh"`` or ``"kWh"``; energy becomes integer Wh, rounded half up.
    date_formats
        ``strptime`` formats of the start and end columns, tried in order.
    time_formats
        Formats of ``start_time``/``end_time`` columns, tried in order.
    timezone
        IANA zone of timestamps without an offset.
    delimiter, quotechar, encoding
        CSV dialect and text encoding (``utf-8-sig`` drops a byte-order mark).
    decimal_separator, thousands_separator
        Number syntax of the energy and cost columns (``"0,3"`` with ``","``).
    null_values
        Cell values that mean "no value" (after stripping spaces), e.g. ``["", "NA"]``.
    timestamp_substitutions
        ``[regex, replacement]`` pairs applied in order to start/end values before parsing.
    century
        Added to years below 100 (``2000`` reads ``"0014"`` as 2014); ``None`` leaves them.
    day_month_swap, swap_formats, swap_default, swap_detect_rows, max_session_h
        The day/month swap policy (see the module docstring), the formats it applies to
        (default: all ``date_formats``), the ``detect`` decision when a file gives no
        evidence, how many rows ``detect`` examines, and the longest plausible session.
    identity_columns
        Extra columns that distinguish sessions when the dataset has no session id (e.g. a
        duration with seconds where timestamps have minutes).
    currency
        ISO 4217 currency of the cost column when no currency column is mapped.
    token_type
        ``token_type`` of the hashed user id (e.g. ``"ISO14443"`` for RFID card UIDs).
    default_evse_id
        ``evse_id`` when neither an EVSE nor a connector number is known.

    Examples
    --------
    >>> m = ColumnMapping.from_yaml('''
    ... source: csv.x
    ... columns: {station_id: CP, start: Start, energy: Wh}
    ... energy_unit: Wh
    ... date_formats: ["%Y-%m-%d %H:%M"]
    ... ''')
    >>> m.timezone, m.day_month_swap
    ('UTC', 'never')
    >>> ColumnMapping.from_yaml("source: csv.x")
    Traceback (most recent call last):
    ...
    topics.exceptions.AdapterError: mapping <string>: Object missing required field `columns`
    """

    source: Annotated[str, Meta(min_length=1, max_length=256)]
    columns: Columns
    energy_unit: Literal["Wh", "kWh"]
    date_formats: Annotated[tuple[str, ...], Meta(min_length=1)]
    time_formats: tuple[str, ...] = ("%H:%M:%S", "%H:%M")
    timezone: str = "UTC"
    delimiter: Annotated[str, Meta(min_length=1, max_length=1)] = ","
    quotechar: Annotated[str, Meta(min_length=1, max_length=1)] = '"'
    encoding: str = "utf-8"
    decimal_separator: Literal[".", ","] = "."
    thousands_separator: Literal[",", ".", " ", "'"] | None = None
    null_values: tuple[str, ...] = ("",)
    timestamp_substitutions: tuple[tuple[str, str], ...] = ()
    century: Annotated[int, Meta(ge=100, le=9900, multiple_of=100)] | None = None
    day_month_swap: Literal["never", "always", "detect"] = "never"
    swap_formats: tuple[str, ...] | None = None
    swap_default: bool = False
    swap_detect_rows: Annotated[int, Meta(ge=1)] = 5000
    max_session_h: Annotated[float, Meta(gt=0)] = 14 * 24
    identity_columns: tuple[str, ...] = ()
    currency: Annotated[str, Meta(pattern="^[A-Z]{3}$")] | None = None
    token_type: str | None = None
    default_evse_id: Annotated[int, Meta(ge=0)] = 1

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}") from exc
        for pattern, _ in self.timestamp_substitutions:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad timestamp_substitutions regex {pattern!r}: {exc}") from exc
        unknown = set(self.swap_formats or ()) - set(self.date_formats)
        if unknown:
            raise ValueError(f"swap_formats not among date_formats: {sorted(unknown)}")
        if self.thousands_separator == self.decimal_separator:
            raise ValueError("thousands_separator equals decimal_separator")

    @classmethod
    def from_yaml(cls, text: str, *, origin: str = "<string>") -> ColumnMapping:
        """Parse and validate a mapping from YAML text.

        Parameters
        ----------
        text
            The YAML document (comments allowed).
        origin
            Where it came from, for error messages (a file name or shipped name).

        Raises
        ------
        AdapterError
            Not YAML, not a mapping, an unknown or missing key, or an invalid value; the
            message names ``origin`` and the offending key.
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AdapterError(f"mapping {origin}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise AdapterError(f"mapping {origin}: expected a YAML mapping at the top level")
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise AdapterError(f"mapping {origin}: {exc}") from exc


def shipped_mapping_names() -> list[str]:
    """Names of the mappings shipped in ``topics/adapters/mappings`` (file stems), sorted.

    Examples
    --------
    >>> "dundee" in shipped_mapping_names()
    True
    """
    root = resources.files(_MAPPINGS_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_shipped_mapping(name: str) -> ColumnMapping:
    """Load a shipped mapping by name (``"dundee"``, ``"norway_residential"``, ...).

    Raises
    ------
    AdapterError
        No shipped mapping has that name (the message lists those that exist), or it is
        invalid.

    Examples
    --------
    >>> load_shipped_mapping("dundee").source
    'csv.dundee'
    """
    names = shipped_mapping_names()
    if name not in names:
        raise AdapterError(f"no shipped mapping {name!r}; shipped: {', '.join(names)}")
    text = resources.files(_MAPPINGS_PACKAGE).joinpath(f"{name}.yaml").read_text("utf-8")
    return ColumnMapping.from_yaml(text, origin=name)


# --------------------------------------------------------------------------- results


class RawRow(NamedTuple):
    """One CSV record: the line it starts on (header = line 1), its cells by column name,
    and a structural problem found while reading it (then it becomes a :class:`RowError`).
    """

    line_no: int
    fields: dict[str, str]
    problem: str | None = None


class RowError(msgspec.Struct, frozen=True):
    """A row that could not be imported, with why.

    ``kind`` groups reasons for counting (``unparseable_date``, ``negative_energy``,
    ``end_before_start``, ``missing_value``, ``missing_column``, ``bad_number``,
    ``bad_connector``, ``field_count``, ``duplicate``, ...); ``reason`` says exactly what
    is wrong, with the value. In ``raw_row`` the user id, if any, is replaced by its keyed
    hash (no raw token leaves ingest, not even in an error file).

    Examples
    --------
    >>> RowError(7, "negative energy -45.58 kWh", {"Total kWh": "-45.58"}, "negative_energy").kind
    'negative_energy'
    """

    line_no: int
    reason: str
    raw_row: dict[str, str]
    kind: str = "invalid"


class ImportedSession(msgspec.Struct, frozen=True, kw_only=True):
    """The canonical events of one imported row, plus what an import report needs.

    ``energy_wh`` is None for an open session. ``day_month_swapped`` is True when the swap
    changed this row's start or end. ``cost`` and ``currency`` are information only.

    Examples
    --------
    >>> s = ImportedSession(line_no=2, session_id="s-1", station_id="CP1", events=(),
    ...     start=datetime(2024, 1, 1, tzinfo=UTC), end=None, energy_wh=None)
    >>> s.is_open, s.zero_energy
    (True, False)
    """

    line_no: int
    session_id: str
    station_id: str
    events: tuple[SessionEvent | MeterReading, ...]
    start: datetime
    end: datetime | None
    energy_wh: int | None
    day_month_swapped: bool = False
    cost: Decimal | None = None
    currency: str | None = None

    @property
    def is_open(self) -> bool:
        """True when the export has no end for this session."""
        return self.end is None

    @property
    def zero_energy(self) -> bool:
        """True for a closed session that delivered 0 Wh."""
        return self.energy_wh == 0


ImportResult: TypeAlias = ImportedSession | RowError
"""What :func:`import_rows` yields for each row."""


class SwapDecision(NamedTuple):
    """The day/month swap decided for one file, with the evidence behind it.

    ``votes_swapped`` rows are plausible only when swapped, ``votes_as_written`` only as
    written; ``rows_examined`` rows were looked at; ``reason`` says how it was decided.

    Examples
    --------
    >>> SwapDecision(True, 292, 0, 5000, "292 rows plausible only swapped, 0 only as written").swap
    True
    """

    swap: bool
    votes_swapped: int
    votes_as_written: int
    rows_examined: int
    reason: str


# --------------------------------------------------------------------------- reading CSV


def read_rows(lines: Iterable[str], mapping: ColumnMapping) -> Iterator[RawRow]:
    """Read CSV text into numbered rows, header first.

    Parameters
    ----------
    lines
        The file's text (open it with ``mapping.encoding`` and ``newline=""``).
    mapping
        Gives the delimiter and quote character, and the columns the header must have.

    Yields
    ------
    RawRow
        One per record, numbered by the physical line it starts on (the header is line
        1; quoted fields may span lines). Blank lines are not records. Header names are
        stripped of spaces and of a byte-order mark; an empty header name becomes
        ``column_<n>`` (1-based) and a repeated one ``<name> (<n>)``. A record with more
        or fewer cells than the header, or one the CSV parser rejects, has ``problem`` set.

    Raises
    ------
    AdapterError
        The header lacks a required column (see :class:`Columns`), or there is no header.

    Examples
    --------
    >>> m = ColumnMapping.from_yaml('''
    ... source: csv.x
    ... delimiter: ";"
    ... columns: {station_id: CP, start: Start, energy: Wh}
    ... energy_unit: Wh
    ... date_formats: ["%Y-%m-%d"]
    ... ''')
    >>> rows = list(read_rows(["CP;Start;Wh\\n", "A;2024-01-01;5\\n", "\\n", "B;x\\n"], m))
    >>> rows[0]
    RawRow(line_no=2, fields={'CP': 'A', 'Start': '2024-01-01', 'Wh': '5'}, problem=None)
    >>> rows[1].line_no, rows[1].problem
    (4, 'row has 2 fields, the header has 3')
    """
    reader = csv.reader(lines, delimiter=mapping.delimiter, quotechar=mapping.quotechar)
    header: list[str] | None = None
    previous_end = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line_no, previous_end = previous_end + 1, reader.line_num
            if header is None:
                raise AdapterError(f"CSV header on line {line_no} unreadable: {exc}") from exc
            yield RawRow(line_no, {}, f"CSV syntax error: {exc}")
            continue
        line_no, previous_end = previous_end + 1, reader.line_num
        if not cells:
            continue
        if header is None:
            header = _header_names(cells)
            _check_header(header, mapping)
            continue
        fields = dict(zip(header, cells, strict=False))
        problem = None
        if len(cells) != len(header):
            problem = f"row has {len(cells)} fields, the header has {len(header)}"
            if len(cells) > len(header):
                fields["extra_fields"] = mapping.delimiter.join(cells[len(header) :])
        yield RawRow(line_no, fields, problem)
    if header is None:
        raise AdapterError("no CSV header (the input is empty)")


def _header_names(cells: list[str]) -> list[str]:
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, cell in enumerate(cells, start=1):
        name = cell.lstrip("\ufeff").strip() or f"column_{i}"
        if name in seen:
            seen[name] += 1
            name = f"{name} ({seen[name]})"
        else:
            seen[name] = 1
        names.append(name)
    return names


def _check_header(header: list[str], mapping: ColumnMapping) -> None:
    present = set(header)
    missing = [
        f"{key}={name!r}"
        for key in _REQUIRED_WHEN_MAPPED
        if (name := getattr(mapping.columns, key)) is not None and name not in present
    ]
    if missing:
        raise AdapterError(
            f"mapping {mapping.source}: required columns missing from the header: "
            f"{', '.join(missing)} (header: {', '.join(header)})"
        )
    absent = [
        name
        for key in ("connector_id", "evse_id", "user_id", "cost", "currency")
        if (name := getattr(mapping.columns, key)) is not None and name not in present
    ]
    if absent:
        logger.info("optional columns not in this file, left empty: %s", ", ".join(absent))


# --------------------------------------------------------------------------- importing


def import_rows(
    rows: Iterable[RawRow | Mapping[str, str | None]],
    mapping: ColumnMapping,
    *,
    hash_secret: bytes,
    on_swap_decision: Callable[[SwapDecision], None] | None = None,
) -> Iterator[ImportResult]:
    """Map the rows of one CSV file to canonical events, one result per row.

    Parameters
    ----------
    rows
        The file's rows, from :func:`read_rows`, or plain dicts (numbered from line 2,
        as below a header; a ``csv.DictReader`` row with cells missing or extra is a
        ``field_count`` error). One call is one file: the day/month swap is detected and
        duplicates are found per call.
    mapping
        How to read the columns.
    hash_secret
        Key of the HMAC that hashes user ids (:func:`~topics.identity.hash_identifier`).
    on_swap_decision
        Called once with the :class:`SwapDecision` when ``day_month_swap`` is ``detect``.

    Returns
    -------
    Iterator[ImportResult]
        An :class:`ImportedSession` or a :class:`RowError` per row, in input order. With
        ``detect`` the first ``swap_detect_rows`` rows are read ahead before the first
        result.

    Raises
    ------
    ValueError
        ``hash_secret`` is empty (raised at once, not on the first row).

    Examples
    --------
    >>> m = ColumnMapping.from_yaml('''
    ... source: csv.x
    ... columns: {station_id: CP, start: Start, end: End, energy: Wh}
    ... energy_unit: Wh
    ... date_formats: ["%Y-%m-%d %H:%M"]
    ... day_month_swap: detect
    ... ''')
    >>> rows = [{"CP": "A", "Start": "2017-11-30 23:00", "End": "2017-01-12 01:00", "Wh": "9"}]
    >>> decisions = []
    >>> [s] = import_rows(rows, m, hash_secret=b"k", on_swap_decision=decisions.append)
    >>> s.end.isoformat(), s.day_month_swapped, decisions[0].swap
    ('2017-12-01T01:00:00+00:00', True, True)
    >>> [e.event_id for e in s.events] == [
    ...     e.event_id for e in next(import_rows(rows, m, hash_secret=b"other")).events]
    True
    """
    if not hash_secret:
        raise ValueError("hash_secret must not be empty")
    parser = _RowParser(mapping, hash_secret)
    return _import(_numbered(rows), parser, on_swap_decision)


def _numbered(rows: Iterable[RawRow | Mapping[str, str | None]]) -> Iterator[RawRow]:
    for index, row in enumerate(rows):
        if isinstance(row, RawRow):
            yield row
            continue
        line_no = index + 2
        fields = {str(k): v for k, v in row.items() if k is not None and v is not None}
        problem = None
        if None in row:
            problem = "row has more fields than the header"
            fields["extra_fields"] = str(row[None])  # type: ignore[index]
        elif any(v is None for v in row.values()):
            problem = "row has fewer fields than the header"
        yield RawRow(line_no, fields, problem)


def _import(
    rows: Iterator[RawRow],
    parser: _RowParser,
    on_swap_decision: Callable[[SwapDecision], None] | None,
) -> Iterator[ImportResult]:
    mapping = parser.mapping
    swap = mapping.day_month_swap == "always"
    if mapping.day_month_swap == "detect":
        head = list(islice(rows, mapping.swap_detect_rows))
        decision = parser.detect_swap(head)
        logger.info(
            "%s: day/month swap %s (%s)",
            mapping.source,
            "on" if decision.swap else "off",
            decision.reason,
        )
        if on_swap_decision is not None:
            on_swap_decision(decision)
        swap = decision.swap
        rows = chain(head, rows)
    seen: dict[str, int] = {}
    for raw in rows:
        if raw.problem is not None:
            yield RowError(raw.line_no, raw.problem, parser.masked(raw.fields), "field_count")
            continue
        try:
            session = parser.parse(raw, swap=swap)
        except _Reject as rej:
            yield RowError(raw.line_no, rej.reason, parser.masked(raw.fields), rej.kind)
            continue
        first = seen.setdefault(session.session_id, raw.line_no)
        if first != raw.line_no:
            reason = f"duplicate of line {first}: same session {session.session_id}"
            yield RowError(raw.line_no, reason, parser.masked(raw.fields), "duplicate")
            continue
        yield session


class _Reject(Exception):
    """A row cannot be imported: ``kind`` groups it, ``reason`` explains it."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class _Stamp(NamedTuple):
    """A timestamp as read, before the swap and the zone are applied."""

    value: datetime
    swappable: bool


class _RowParser:
    """The per-call state of an import: compiled mapping, zone and secret."""

    def __init__(self, mapping: ColumnMapping, hash_secret: bytes) -> None:
        self.mapping = mapping
        self.columns = mapping.columns
        self.zone = ZoneInfo(mapping.timezone)
        self.secret = hash_secret
        self.nulls = frozenset(mapping.null_values)
        self.subs = [(re.compile(p), r) for p, r in mapping.timestamp_substitutions]
        self.swap_formats = frozenset(mapping.swap_formats or mapping.date_formats)
        self.wh_per_unit = Decimal(1000) if mapping.energy_unit == "kWh" else Decimal(1)
        self.max_session = timedelta(hours=mapping.max_session_h)
        self.date_cache: dict[str, tuple[datetime, bool]] = {}
        self.time_cache: dict[str, time] = {}

    # ---- cells

    def value(self, row: Mapping[str, str], key: str) -> str | None:
        """The stripped cell of a mapped column, None if unmapped, absent or a null value."""
        name = getattr(self.columns, key)
        if name is None:
            return None
        cell = row.get(name)
        if cell is None:
            if key in _REQUIRED_WHEN_MAPPED:
                raise _Reject("missing_column", f"missing required column {name!r} ({key})")
            return None
        cell = cell.strip()
        return None if cell in self.nulls else cell

    def required(self, row: Mapping[str, str], key: str) -> str:
        cell = self.value(row, key)
        if cell is None:
            name = getattr(self.columns, key)
            raise _Reject("missing_value", f"missing {key} (column {name!r} is empty)")
        return cell

    def number(self, text: str, key: str) -> Decimal:
        """A decimal number in the mapping's syntax."""
        plain = text
        if self.mapping.thousands_separator:
            plain = plain.replace(self.mapping.thousands_separator, "")
        if self.mapping.decimal_separator == ",":
            plain = plain.replace(",", ".")
        column = getattr(self.columns, key)
        if not _NUMBER.fullmatch(plain):
            raise _Reject("bad_number", f"{key} {text!r} (column {column!r}) is not a number")
        number = Decimal(plain)
        if number and abs(number.adjusted()) > _MAX_EXPONENT:
            raise _Reject("bad_number", f"{key} {text!r} (column {column!r}) is out of range")
        return number

    def small_int(self, row: Mapping[str, str], key: str) -> int | None:
        text = self.value(row, key)
        if text is None:
            return None
        if not text.isdigit() or len(text) > 9:
            raise _Reject("bad_connector", f"{key} {text!r} is not a non-negative integer")
        return int(text)

    def masked(self, fields: Mapping[str, str]) -> dict[str, str]:
        """The raw row with the user id replaced by its keyed hash."""
        out = dict(fields)
        name = self.columns.user_id
        if name is not None and out.get(name, "").strip() not in self.nulls:
            out[name] = "hmac:" + hash_identifier(out[name].strip(), self.secret)
        return out

    # ---- timestamps

    def stamp(self, row: Mapping[str, str], key: str, time_key: str) -> _Stamp | None:
        """Read a start or end (date column plus optional time column), None if empty."""
        text = self.value(row, key)
        time_text = self.value(row, time_key)
        if text is None:
            if time_text is not None:
                raise _Reject("missing_value", f"{time_key} {time_text!r} but no {key} date")
            return None
        parsed, swappable = self.date(text, key)
        if getattr(self.columns, time_key) is not None:
            if time_text is None:
                raise _Reject("missing_value", f"{key} {text!r} has an empty {time_key}")
            parsed = datetime.combine(parsed.date(), self.clock(time_text, time_key), parsed.tzinfo)
        return _Stamp(parsed, swappable)

    def date(self, text: str, key: str) -> tuple[datetime, bool]:
        """Parse a date or timestamp cell: the value (century applied) and its swappability.

        Exports with a separate time column repeat each date hundreds of times, and
        ``strptime`` costs ~10 us, so results are cached (bounded).
        """
        hit = self.date_cache.get(text)
        if hit is not None:
            return hit
        cleaned = text
        for pattern, replacement in self.subs:
            cleaned = pattern.sub(replacement, cleaned)
        for fmt in self.mapping.date_formats:
            try:
                parsed = datetime.strptime(cleaned, fmt)
            except ValueError:
                continue
            break
        else:
            tried = ", ".join(repr(f) for f in self.mapping.date_formats)
            raise _Reject("unparseable_date", f"unparseable {key} {text!r} (tried formats {tried})")
        century = self.mapping.century
        if century is not None and parsed.year < 100:
            parsed = _replace_date(parsed, parsed.year + century, parsed.month, parsed.day)
        result = (parsed, fmt in self.swap_formats)
        if len(self.date_cache) >= _CACHE_SIZE:
            self.date_cache.clear()
        self.date_cache[text] = result
        return result

    def clock(self, text: str, key: str) -> time:
        """Parse a time-of-day cell (cached like :meth:`date`)."""
        hit = self.time_cache.get(text)
        if hit is not None:
            return hit
        for fmt in self.mapping.time_formats:
            try:
                value = datetime.strptime(text, fmt).time()
            except ValueError:
                continue
            if len(self.time_cache) >= _CACHE_SIZE:
                self.time_cache.clear()
            self.time_cache[text] = value
            return value
        tried = ", ".join(repr(f) for f in self.mapping.time_formats)
        raise _Reject("unparseable_date", f"unparseable {key} {text!r} (tried formats {tried})")

    def utc(self, value: datetime, *, fold: int = 0) -> datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.zone, fold=fold)
        return value.astimezone(_UTC)

    # ---- the day/month swap

    def detect_swap(self, head: list[RawRow]) -> SwapDecision:
        """Vote on the swap with the rows whose duration differs between the readings."""
        swapped = as_written = swappable = 0
        for raw in head:
            if raw.problem is not None:
                continue
            try:
                start = self.stamp(raw.fields, "start", "start_time")
                end = self.stamp(raw.fields, "end", "end_time")
            except _Reject:
                continue
            if start is None or end is None or not (start.swappable or end.swappable):
                continue
            swappable += 1
            plain = end.value - start.value
            swap = _maybe_swap(end)[0] - _maybe_swap(start)[0]
            if plain == swap:
                continue
            plain_ok = timedelta(0) <= plain <= self.max_session
            swap_ok = timedelta(0) <= swap <= self.max_session
            if swap_ok and not plain_ok:
                swapped += 1
            elif plain_ok and not swap_ok:
                as_written += 1
        examined = len(head)
        if not swappable:
            reason = "no closed session in the first rows uses a swap format"
            return SwapDecision(False, 0, 0, examined, reason)
        if swapped == as_written:
            reason = f"no majority ({swapped} to {as_written}): the mapping's swap_default"
            return SwapDecision(self.mapping.swap_default, swapped, as_written, examined, reason)
        reason = f"{swapped} rows plausible only swapped, {as_written} only as written"
        return SwapDecision(swapped > as_written, swapped, as_written, examined, reason)

    # ---- one row

    def parse(self, raw: RawRow, *, swap: bool) -> ImportedSession:
        row = raw.fields
        m = self.mapping
        station_id = self.required(row, "station_id")
        if len(station_id) > 256:
            raise _Reject(
                "bad_value", f"station_id longer than 256 characters: {station_id[:40]!r}…"
            )
        start_stamp = self.stamp(row, "start", "start_time")
        if start_stamp is None:
            raise _Reject(
                "missing_value", f"missing start (column {self.columns.start!r} is empty)"
            )
        end_stamp = self.stamp(row, "end", "end_time")
        start_local, swapped = start_stamp.value, False
        end_local = end_stamp.value if end_stamp is not None else None
        if swap:
            start_local, swapped = _maybe_swap(start_stamp)
            if end_stamp is not None:
                end_local, end_swapped = _maybe_swap(end_stamp)
                swapped = swapped or end_swapped
        start = self.utc(start_local)
        end = None
        if end_local is not None:
            end = self.utc(end_local)
            if end < start and end_local.tzinfo is None:
                end = max(end, self.utc(end_local, fold=1))  # DST ended during the session
            if end < start:
                reason = f"end {end.isoformat()} is before start {start.isoformat()}"
                if end_local.year == _EPOCH_YEAR:
                    reason += " (the end is the Unix epoch: a placeholder for a missing end)"
                raise _Reject("end_before_start", reason)

        energy_text = self.value(row, "energy")
        energy_wh = None
        if end is not None:
            if energy_text is None:
                raise _Reject(
                    "missing_value",
                    f"closed session without energy (column {self.columns.energy!r} is empty)",
                )
            energy_wh = self.energy_wh(energy_text)

        connector_id = self.small_int(row, "connector_id")
        evse_id = self.small_int(row, "evse_id")
        if evse_id is None:
            evse_id = connector_id if connector_id is not None else m.default_evse_id

        user = self.value(row, "user_id")
        token_hash = hash_identifier(user, self.secret) if user is not None else None
        token_type = m.token_type if token_hash is not None else None
        cost_text = self.value(row, "cost")
        cost = self.number(cost_text, "cost") if cost_text is not None else None
        currency = (self.value(row, "currency") or m.currency) if cost is not None else None

        dataset_id = self.value(row, "session_id")
        if self.columns.session_id is not None:
            if dataset_id is None:
                raise _Reject(
                    "missing_value",
                    f"missing session_id (column {self.columns.session_id!r} is empty)",
                )
            if len(dataset_id) > 200:
                raise _Reject(
                    "bad_value", f"session_id longer than 200 characters: {dataset_id[:40]!r}…"
                )
            session_id = session_id_for(station_id, dataset_id)
        else:
            extra = tuple(row.get(c, "").strip() for c in m.identity_columns)
            content = stable_id(
                "csv-row",
                evse_id,
                connector_id,
                start.isoformat(),
                end.isoformat() if end else "",
                "" if energy_wh is None else energy_wh,
                *extra,
            )
            session_id = session_id_for(station_id, f"row-{content}")

        events = self.events(
            session_id=session_id,
            station_id=station_id,
            evse_id=evse_id,
            connector_id=connector_id,
            transaction_id=dataset_id,
            token_hash=token_hash,
            token_type=token_type,
            start=start,
            end=end,
            energy_wh=energy_wh,
        )
        return ImportedSession(
            line_no=raw.line_no,
            session_id=session_id,
            station_id=station_id,
            events=events,
            start=start,
            end=end,
            energy_wh=energy_wh,
            day_month_swapped=swapped,
            cost=cost,
            currency=currency,
        )

    def energy_wh(self, text: str) -> int:
        amount = self.number(text, "energy")
        if amount < 0:
            raise _Reject("negative_energy", f"negative energy {text} {self.mapping.energy_unit}")
        wh = int((amount * self.wh_per_unit).to_integral_value(rounding=ROUND_HALF_UP))
        if wh > _MAX_WH:
            raise _Reject("bad_number", f"energy {text} {self.mapping.energy_unit} out of range")
        return wh

    def events(
        self,
        *,
        session_id: str,
        station_id: str,
        evse_id: int,
        connector_id: int | None,
        transaction_id: str | None,
        token_hash: str | None,
        token_type: str | None,
        start: datetime,
        end: datetime | None,
        energy_wh: int | None,
    ) -> tuple[SessionEvent | MeterReading, ...]:
        source = self.mapping.source
        where = {
            "source": source,
            "session_id": session_id,
            "station_id": station_id,
            "evse_id": evse_id,
            "connector_id": connector_id,
            "transaction_id": transaction_id,
        }
        token = {"token_hash": token_hash, "token_type": token_type}
        started = SessionEvent(
            event_id=stable_id(source, session_id, "session", "started"),
            event_time=start,
            kind="started",
            meter_start_wh=0,
            **where,
            **token,
        )
        begin = MeterReading(
            event_id=stable_id(source, session_id, "meter", "Transaction.Begin"),
            event_time=start,
            energy_wh=0,
            context="Transaction.Begin",
            **where,
        )
        if end is None:
            return (started, begin)
        finish = MeterReading(
            event_id=stable_id(source, session_id, "meter", "Transaction.End"),
            event_time=end,
            energy_wh=energy_wh,
            context="Transaction.End",
            **where,
        )
        ended = SessionEvent(
            event_id=stable_id(source, session_id, "session", "ended"),
            event_time=end,
            kind="ended",
            meter_start_wh=0,
            meter_stop_wh=energy_wh,
            **where,
            **token,
        )
        return (started, begin, finish, ended)


def _maybe_swap(stamp: _Stamp) -> tuple[datetime, bool]:
    """Swap day and month of a swappable timestamp whose written day is 12 or less."""
    value = stamp.value
    if not stamp.swappable or value.day > 12 or value.day == value.month:
        return value, False
    return _replace_date(value, value.year, value.day, value.month), True


def _replace_date(value: datetime, year: int, month: int, day: int) -> datetime:
    try:
        return value.replace(year=year, month=month, day=day)
    except ValueError as exc:
        raise _Reject("unparseable_date", f"invalid date {date.isoformat(value)}: {exc}") from exc
