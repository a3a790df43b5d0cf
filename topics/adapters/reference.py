"""Reference data files (stations, tariffs) to validated :class:`Station`/:class:`Tariff` records.

Pure apart from reading the file it is given: no Kafka, no clock (the caller passes ``now``).
Three formats:

* **JSON**: a list of records, an object holding such a list (under ``stations``/``tariffs``,
  ``data`` or ``records``), or a single record.
* **JSONL**: one record per line; also the simulator's envelope lines
  ``{"topic": "stations", "key": ..., "value": {...}}`` (``voltguard simulate --out DIR``
  writes ``stations.jsonl`` and ``tariffs.jsonl`` like that).
* **CSV**: stations one row per connector (rows with the same ``station_id`` form one
  station), tariffs one row per price component (rows with the same ``tariff_id`` form one
  tariff, rows with the same ``element`` index one element); see :data:`STATION_COLUMNS` and
  :data:`TARIFF_COLUMNS`.

Missing ``event_id``, ``event_time`` and ``source`` get deterministic defaults: the event id is
:func:`~topics.identity.stable_id` of the kind, the id and the record's content (so the same
content gives the same id whatever the file format), the event time is ``now`` and the source
is ``"voltguard-load"``. Every record is validated by :func:`topics.codec.decode`, so a reason
names the field; a tariff must also rate a 10-minute idle session
(:func:`billing.rating.rate_session`). A bad row or line is rejected with its location and
reason; it does not stop the rest of the file. When an id appears twice, the last one wins
and a warning says so.

Examples
--------
>>> import tempfile
>>> from datetime import UTC, datetime
>>> from pathlib import Path
>>> text = '[{"tariff_id": "T1", "currency": "EUR", '
>>> text += '"elements": [{"price_components": [{"type": "ENERGY", "price": "0.39"}]}]}]'
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = Path(tmp) / "tariffs.json"
...     _ = path.write_text(text)
...     load = read_tariffs(path, now=datetime(2024, 5, 1, tzinfo=UTC))
>>> [t.tariff_id for t in load.records], load.rejected, load.records[0].source
(['T1'], [], 'voltguard-load')
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from billing.exceptions import BillingError
from billing.rating import ChargingPeriod, rate_session
from topics.catalog import CATALOG
from topics.codec import decode
from topics.exceptions import AdapterError, RecordDecodeError
from topics.identity import stable_id
from topics.records import Station, Tariff

__all__ = [
    "DEFAULT_SOURCE",
    "FORMATS",
    "STATION_COLUMNS",
    "TARIFF_COLUMNS",
    "ReferenceLoad",
    "ReferenceRecord",
    "detect_format",
    "merge_loads",
    "read_reference_file",
    "read_stations",
    "read_tariffs",
]

ReferenceRecord: TypeAlias = Station | Tariff
Kind = Literal["stations", "tariffs"]
Format = Literal["auto", "json", "jsonl", "csv"]

FORMATS: tuple[str, ...] = ("auto", "json", "jsonl", "csv")
"""Values of the ``fmt`` argument; ``auto`` picks one from the file suffix."""

DEFAULT_SOURCE = "voltguard-load"
"""``source`` of records whose file does not give one."""

_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

STATION_COLUMNS: dict[str, tuple[str, ...]] = {
    "required": (
        "station_id",
        "lat",
        "lon",
        "tariff_id",
        "evse_id",
        "connector_id",
        "standard",
        "power_type",
        "max_power_w",
    ),
    "optional": ("name", "operator_id", "timezone", "group", "event_id", "event_time", "source"),
}
"""Columns of a stations CSV (one row per connector)."""

TARIFF_COLUMNS: dict[str, tuple[str, ...]] = {
    "required": ("tariff_id", "currency", "type", "price"),
    "optional": (
        "element",
        "vat",
        "step_size",
        "timezone",
        "min_price_minor",
        "max_price_minor",
        "start_time",
        "end_time",
        "start_date",
        "end_date",
        "day_of_week",
        "min_kwh",
        "max_kwh",
        "min_current",
        "max_current",
        "min_power",
        "max_power",
        "min_duration",
        "max_duration",
        "reservation",
        "event_id",
        "event_time",
        "source",
    ),
}
"""Columns of a tariffs CSV (one row per price component; ``element`` defaults to 0)."""

_EVENT_COLUMNS = ("event_id", "event_time", "source")
_STATION_FIELDS = ("name", "operator_id", "lat", "lon", "timezone", "group", "tariff_id")
_TARIFF_FIELDS = ("currency", "timezone", "min_price_minor", "max_price_minor")
_RESTRICTION_FIELDS = (
    "start_time",
    "end_time",
    "start_date",
    "end_date",
    "day_of_week",
    "min_kwh",
    "max_kwh",
    "min_current",
    "max_current",
    "min_power",
    "max_power",
    "min_duration",
    "max_duration",
    "reservation",
)
_INT_COLUMNS = frozenset(
    {
        "element",
        "evse_id",
        "connector_id",
        "max_power_w",
        "step_size",
        "min_price_minor",
        "max_price_minor",
        "min_duration",
        "max_duration",
        "schema_version",
    }
)
_FLOAT_COLUMNS = frozenset({"lat", "lon"})

_json_decoder = msgspec.json.Decoder(float_hook=Decimal)
"""Parses JSON keeping every fractional number exact (prices must not go through float)."""
_json_encoder = msgspec.json.Encoder(decimal_format="number")
"""Writes the parsed values back as JSON with numbers as numbers, for :func:`decode`."""
_content_encoder = msgspec.json.Encoder(decimal_format="string", order="sorted")


class _Rejected(Exception):
    """One record cannot be loaded; ``location`` says where it came from."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(reason)
        self.location = location
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Spec:
    """What differs between stations and tariffs."""

    kind: Kind
    record_type: type[Station] | type[Tariff]
    id_field: str
    id_prefix: str

    def topics(self) -> tuple[str, str]:
        return self.kind, CATALOG[self.kind].name


_SPECS: dict[str, _Spec] = {
    "stations": _Spec("stations", Station, "station_id", "station"),
    "tariffs": _Spec("tariffs", Tariff, "tariff_id", "tariff"),
}


@dataclass
class ReferenceLoad:
    """What one or more reference files yielded.

    Attributes
    ----------
    kind
        ``"stations"`` or ``"tariffs"``.
    records
        Valid records, one per id (the last occurrence), in order of first appearance.
    rejected
        ``(location, reason)`` per record that could not be loaded; a location is
        ``file.csv:12`` (line), ``file.json[3]`` (list index) or the file name alone.
    warnings
        Things that did not stop a record: duplicate ids, ignored columns.
    locations
        Where each loaded record came from, by id.
    """

    kind: Kind
    records: list[ReferenceRecord] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    locations: dict[str, str] = field(default_factory=dict)

    def ids(self) -> list[str]:
        """The ids of :attr:`records`, in order."""
        id_field = _SPECS[self.kind].id_field
        return [getattr(r, id_field) for r in self.records]

    def add(self, record: ReferenceRecord, location: str) -> None:
        """Add a valid record; a second record with the same id replaces the first (warned)."""
        id_field = _SPECS[self.kind].id_field
        record_id: str = getattr(record, id_field)
        previous = self.locations.get(record_id)
        if previous is None:
            self.records.append(record)
        else:
            self.warnings.append(
                f"{location}: duplicate {id_field} {record_id!r} (also at {previous}); "
                "the last one is kept"
            )
            index = next(i for i, r in enumerate(self.records) if getattr(r, id_field) == record_id)
            self.records[index] = record
        self.locations[record_id] = location


def merge_loads(loads: Iterable[ReferenceLoad]) -> ReferenceLoad:
    """Combine the loads of several files of one kind; across files, too, the last id wins.

    Examples
    --------
    >>> a, b = ReferenceLoad("tariffs"), ReferenceLoad("tariffs", rejected=[("b.csv:2", "bad")])
    >>> merged = merge_loads([a, b])
    >>> merged.kind, merged.rejected
    ('tariffs', [('b.csv:2', 'bad')])
    """
    loads = list(loads)
    if not loads:
        raise ValueError("merge_loads needs at least one load")
    kinds = {load.kind for load in loads}
    if len(kinds) != 1:
        raise ValueError(f"cannot merge loads of different kinds: {sorted(kinds)}")
    merged = ReferenceLoad(loads[0].kind)
    id_field = _SPECS[merged.kind].id_field
    for load in loads:
        merged.warnings.extend(load.warnings)
        merged.rejected.extend(load.rejected)
        for record in load.records:
            merged.add(record, load.locations.get(getattr(record, id_field), "?"))
    return merged


# --------------------------------------------------------------------------- entry points


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The format of ``path``: ``fmt`` itself unless it is ``auto``, else from the suffix.

    Raises
    ------
    AdapterError
        ``auto`` and a suffix other than ``.json``, ``.jsonl``, ``.ndjson`` or ``.csv``, or an
        unknown ``fmt``.

    Examples
    --------
    >>> detect_format(Path("stations.JSONL")), detect_format(Path("x.txt"), "csv")
    ('jsonl', 'csv')
    """
    if fmt != "auto":
        if fmt not in FORMATS:
            raise AdapterError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise AdapterError(
            f"{path.name}: cannot tell the format from the suffix {path.suffix!r}; "
            "give --format json, jsonl or csv"
        )
    return found


def read_stations(path: Path | str, *, fmt: str = "auto", now: datetime) -> ReferenceLoad:
    """Read and validate a stations file (JSON, JSONL or CSV).

    Parameters
    ----------
    path
        The file.
    fmt
        ``auto`` (from the suffix), ``json``, ``jsonl`` or ``csv``.
    now
        Timezone-aware ``event_time`` of records that do not carry one.

    Returns
    -------
    ReferenceLoad
        Valid stations, rejected records with reasons, warnings.

    Raises
    ------
    AdapterError
        The format cannot be told from the suffix.
    OSError
        The file cannot be read.
    """
    return read_reference_file("stations", path, fmt=fmt, now=now)


def read_tariffs(path: Path | str, *, fmt: str = "auto", now: datetime) -> ReferenceLoad:
    """Read and validate a tariffs file (JSON, JSONL or CSV); unratable tariffs are rejected.

    Parameters
    ----------
    path
        The file.
    fmt
        ``auto`` (from the suffix), ``json``, ``jsonl`` or ``csv``.
    now
        Timezone-aware ``event_time`` of records that do not carry one; also the start of the
        10-minute idle session every tariff must be able to rate.

    Returns
    -------
    ReferenceLoad
        Valid tariffs, rejected records with reasons, warnings.

    Raises
    ------
    AdapterError
        The format cannot be told from the suffix.
    OSError
        The file cannot be read.
    """
    return read_reference_file("tariffs", path, fmt=fmt, now=now)


def read_reference_file(
    kind: str, path: Path | str, *, fmt: str = "auto", now: datetime
) -> ReferenceLoad:
    """Read a stations or tariffs file; see :func:`read_stations` and :func:`read_tariffs`."""
    if kind not in _SPECS:
        raise ValueError(f"unknown reference kind {kind!r}; use stations or tariffs")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    spec = _SPECS[kind]
    path = Path(path)
    fmt = detect_format(path, fmt)
    load = ReferenceLoad(spec.kind)
    data = path.read_bytes()
    if fmt == "csv":
        items = _csv_items(spec, path.name, data, load)
    elif fmt == "jsonl":
        items = _jsonl_items(spec, path.name, data)
    else:
        items = _json_items(spec, path.name, data)
    for item in items:
        try:
            if isinstance(item, _Rejected):
                raise item
            location, obj, rows = item
            record = _validate(spec, obj, location, rows, now)
        except _Rejected as exc:
            load.rejected.append((exc.location, exc.reason))
        else:
            load.add(record, location)
    return load


# --------------------------------------------------------------------------- JSON and JSONL

_Item = tuple[str, dict[str, Any], list[tuple[int, dict[str, Any]]] | None]
"""(location, record as a JSON object, CSV rows behind it: (line, row) or None)."""
_Items = Iterator[_Item | _Rejected]
"""What the readers yield: a record to validate, or a rejection found while reading."""


def _unwrap(spec: _Spec, value: Any, location: str) -> dict[str, Any]:
    """The record object of a JSON value, unwrapping a ``{"topic", "key", "value"}`` envelope."""
    if not isinstance(value, dict):
        raise _Rejected(location, f"expected a JSON object, got {type(value).__name__}")
    if "topic" in value and "value" in value and spec.id_field not in value:
        topic = value["topic"]
        if topic not in spec.topics():
            raise _Rejected(location, f"envelope for topic {topic!r}, expected {spec.kind!r}")
        record = value["value"]
        if record is None:
            raise _Rejected(location, "tombstone (null value): deleting is not a load")
        if not isinstance(record, dict):
            raise _Rejected(location, f"envelope value is {type(record).__name__}, not an object")
        key = value.get("key")
        if key is not None and key != record.get(spec.id_field):
            raise _Rejected(
                location,
                f"envelope key {key!r} differs from {spec.id_field} {record.get(spec.id_field)!r}",
            )
        return record
    return value


def _json_items(spec: _Spec, name: str, data: bytes) -> _Items:
    try:
        doc = _json_decoder.decode(data)
    except msgspec.DecodeError as exc:
        yield _Rejected(name, f"not valid JSON: {exc}")
        return
    if isinstance(doc, dict):
        for container in (spec.kind, "data", "records"):
            if isinstance(doc.get(container), list):
                doc = doc[container]
                break
        else:
            yield name, _unwrap(spec, doc, name), None
            return
    if not isinstance(doc, list):
        yield _Rejected(name, f"expected a list of records or an object, got {type(doc).__name__}")
        return
    for index, value in enumerate(doc):
        location = f"{name}[{index}]"
        try:
            yield location, _unwrap(spec, value, location), None
        except _Rejected as exc:
            yield exc


def _jsonl_items(spec: _Spec, name: str, data: bytes) -> _Items:
    for line_no, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        location = f"{name}:{line_no}"
        try:
            value = _json_decoder.decode(line)
        except msgspec.DecodeError as exc:
            yield _Rejected(location, f"not valid JSON: {exc}")
            continue
        try:
            yield location, _unwrap(spec, value, location), None
        except _Rejected as exc:
            yield exc


# --------------------------------------------------------------------------- CSV


def _csv_items(spec: _Spec, name: str, data: bytes, load: ReferenceLoad) -> _Items:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield _Rejected(name, f"not UTF-8 text at byte {exc.start}")
        return
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if header is None:
        yield _Rejected(name, "empty file: no header row")
        return
    columns = [c.strip().lower() for c in header]
    known = STATION_COLUMNS if spec.kind == "stations" else TARIFF_COLUMNS
    missing = [c for c in known["required"] if c not in columns]
    if missing:
        yield _Rejected(name, f"missing columns: {', '.join(missing)}")
        return
    unknown = [c for c in columns if c and c not in known["required"] + known["optional"]]
    if unknown:
        load.warnings.append(f"{name}: ignored columns: {', '.join(unknown)}")
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for row in reader:
        line_no = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        location = f"{name}:{line_no}"
        if len(row) != len(columns):
            yield _Rejected(location, f"{len(row)} cells, the header has {len(columns)}")
            continue
        values = {c: _cell(c, v) for c, v in zip(columns, row, strict=True) if c}
        record_id = values.get(spec.id_field)
        if not isinstance(record_id, str) or not record_id:
            yield _Rejected(location, f"{spec.id_field} is empty")
            continue
        groups.setdefault(record_id, []).append((line_no, values))
    build: Callable[[str, list[tuple[int, dict[str, Any]]]], dict[str, Any]]
    build = _station_object if spec.kind == "stations" else _tariff_object
    for rows in groups.values():
        location = f"{name}:{rows[0][0]}"
        try:
            yield location, build(name, rows), rows
        except _Rejected as exc:
            yield exc


def _cell(column: str, raw: str) -> Any:
    """A CSV cell as a JSON value: empty is missing (None), numbers where the record wants them.

    A cell that is not a number where one is wanted stays a string, so that validation
    reports it with the field's path.
    """
    value = raw.strip()
    if not value:
        return None
    try:
        if column in _INT_COLUMNS:
            return int(value)
        if column in _FLOAT_COLUMNS:
            return float(value)
    except ValueError:
        return value
    if column == "day_of_week":
        return [d.strip().upper() for d in re.split(r"[;,\s]+", value) if d.strip()]
    return value


def _shared(
    name: str, rows: list[tuple[int, dict[str, Any]]], fields: Iterable[str], what: str
) -> dict[str, Any]:
    """The columns that must agree across ``rows`` (first row's value; a conflict rejects)."""
    first_line, first = rows[0]
    out = {}
    for f in fields:
        value = first.get(f)
        for line_no, row in rows[1:]:
            if row.get(f) != value:
                raise _Rejected(
                    f"{name}:{line_no}",
                    f"{what}: column {f} is {row.get(f)!r} here but {value!r} on line {first_line}",
                )
        if value is not None:
            out[f] = value
    return out


def _station_object(name: str, rows: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    station_id = rows[0][1]["station_id"]
    obj = {"station_id": station_id}
    obj.update(_shared(name, rows, _STATION_FIELDS + _EVENT_COLUMNS, f"station {station_id!r}"))
    obj["connectors"] = [
        {
            k: row.get(k)
            for k in ("evse_id", "connector_id", "standard", "power_type", "max_power_w")
            if row.get(k) is not None
        }
        for _, row in rows
    ]
    return obj


def _tariff_object(name: str, rows: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    tariff_id = rows[0][1]["tariff_id"]
    obj = {"tariff_id": tariff_id}
    obj.update(_shared(name, rows, _TARIFF_FIELDS + _EVENT_COLUMNS, f"tariff {tariff_id!r}"))
    elements: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for line_no, row in rows:
        index = row.get("element")
        if index is None:
            index = 0
        if not isinstance(index, int) or index < 0:
            raise _Rejected(
                f"{name}:{line_no}", f"column element must be an integer >= 0, got {index!r}"
            )
        elements.setdefault(index, []).append((line_no, row))
    obj["elements"] = []
    for index in sorted(elements):
        element_rows = elements[index]
        restrictions = _shared(
            name, element_rows, _RESTRICTION_FIELDS, f"tariff {tariff_id!r} element {index}"
        )
        element: dict[str, Any] = {
            "price_components": [
                {
                    k: row.get(k)
                    for k in ("type", "price", "vat", "step_size")
                    if row.get(k) is not None
                }
                for _, row in element_rows
            ]
        }
        if restrictions:
            element["restrictions"] = restrictions
        obj["elements"].append(element)
    return obj


def _csv_row_of(
    spec: _Spec, obj: dict[str, Any], rows: list[tuple[int, dict[str, Any]]], path: str | None
) -> int:
    """The CSV line behind the JSON ``path`` of a validation error (the group's first line)."""
    if path:
        if spec.kind == "stations":
            m = re.match(r"\$\.connectors\[(\d+)\]", path)
            if m and int(m.group(1)) < len(rows):
                return rows[int(m.group(1))][0]
        else:
            m = re.match(r"\$\.elements\[(\d+)\](?:\.price_components\[(\d+)\])?", path)
            if m:
                element = int(m.group(1))
                indices = sorted({(r.get("element") or 0) for _, r in rows})
                if element < len(indices):
                    element_rows = [
                        (n, r) for n, r in rows if (r.get("element") or 0) == indices[element]
                    ]
                    component = int(m.group(2)) if m.group(2) is not None else 0
                    if component < len(element_rows):
                        return element_rows[component][0]
    return rows[0][0]


# --------------------------------------------------------------------------- validation


def _validate(
    spec: _Spec,
    obj: dict[str, Any],
    location: str,
    rows: list[tuple[int, dict[str, Any]]] | None,
    now: datetime,
) -> ReferenceRecord:
    """Fill the defaults, decode with :func:`topics.codec.decode`, check what msgspec cannot."""
    filled = dict(obj)
    derive_id = filled.get("event_id") is None
    if derive_id:
        filled["event_id"] = "pending"
    if filled.get("event_time") is None:
        filled["event_time"] = now.isoformat()
    if filled.get("source") is None:
        filled["source"] = DEFAULT_SOURCE
    try:
        record = decode(_json_encoder.encode(filled), spec.record_type)
    except RecordDecodeError as exc:
        if rows is not None:
            name = location.rsplit(":", 1)[0]
            location = f"{name}:{_csv_row_of(spec, obj, rows, exc.path)}"
        raise _Rejected(location, str(exc)) from None
    if derive_id:
        record = msgspec.structs.replace(record, event_id=_content_id(spec, record))
    if isinstance(record, Station):
        _check_station(record, location)
    else:
        _check_tariff(record, location, now)
    return record


def _content_id(spec: _Spec, record: ReferenceRecord) -> str:
    """A deterministic event id: the kind, the id and the content (without event fields)."""
    content = msgspec.to_builtins(record)
    for key in _EVENT_COLUMNS:
        content.pop(key, None)
    return stable_id(
        spec.id_prefix, getattr(record, spec.id_field), _content_encoder.encode(content)
    )


def _check_station(station: Station, location: str) -> None:
    try:
        ZoneInfo(station.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Rejected(
            location, f"Station: unknown timezone {station.timezone!r} - at `$.timezone`"
        ) from None
    seen: set[tuple[int, int]] = set()
    for c in station.connectors:
        if (c.evse_id, c.connector_id) in seen:
            raise _Rejected(
                location,
                f"Station: connector evse_id={c.evse_id} connector_id={c.connector_id} "
                "appears twice - at `$.connectors`",
            )
        seen.add((c.evse_id, c.connector_id))


def _check_tariff(tariff: Tariff, location: str, now: datetime) -> None:
    """Reject a tariff that cannot rate a 10-minute session without energy."""
    end = now + timedelta(minutes=10)
    try:
        rate_session(tariff, start=now, end=end, periods=[ChargingPeriod(now, end, 0, 0.0)])
    except BillingError as exc:
        raise _Rejected(location, f"Tariff cannot be rated: {exc}") from None
    except (ArithmeticError, ValueError) as exc:  # defensive: rating must never crash a load
        raise _Rejected(location, f"Tariff cannot be rated: {type(exc).__name__}: {exc}") from None
