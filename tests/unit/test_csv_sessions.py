"""CSV session importer: shipped mappings on real, attributed samples; broken rows; CLI.

Samples live in tests/fixtures/real_sessions (see its README.md for origin and licence).
Expected values were checked by hand against the raw lines of the samples.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from topics.adapters.csv_sessions import (
    ColumnMapping,
    ImportedSession,
    RowError,
    SwapDecision,
    import_rows,
    load_shipped_mapping,
    read_rows,
    shipped_mapping_names,
)
from topics.catalog import CATALOG
from topics.codec import decode, encode
from topics.exceptions import AdapterError
from topics.identity import hash_identifier, session_id_for
from topics.records import MeterReading, SessionEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real_sessions"
SECRET = b"test-secret"

SHIPPED = [
    "boulder",
    "dundee",
    "norway_residential",
    "paris_belib",
    "perth_kinross",
    "workplace_dataverse",
]
SAMPLES = {  # sample file -> shipped mapping
    "dundee_sample.csv": "dundee",
    "dundee_ddmm_sample.csv": "dundee",
    "perth_kinross_sample.csv": "perth_kinross",
    "boulder_sample.csv": "boulder",
    "norway_residential_sample.csv": "norway_residential",
    "paris_belib_sample.csv": "paris_belib",
    "workplace_dataverse_sample.csv": "workplace_dataverse",
}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def run(
    sample: str, mapping: ColumnMapping | str | None = None, *, secret: bytes = SECRET
) -> tuple[list[ImportedSession | RowError], list[SwapDecision]]:
    if mapping is None:
        mapping = SAMPLES[sample]
    if isinstance(mapping, str):
        mapping = load_shipped_mapping(mapping)
    decisions: list[SwapDecision] = []
    with (FIXTURES / sample).open(encoding=mapping.encoding, newline="") as fh:
        results = list(
            import_rows(
                read_rows(fh, mapping),
                mapping,
                hash_secret=secret,
                on_swap_decision=decisions.append,
            )
        )
    return results, decisions


def by_line(results: list[ImportedSession | RowError]) -> dict[int, ImportedSession | RowError]:
    return {r.line_no: r for r in results}


def session(results: list[ImportedSession | RowError], line_no: int) -> ImportedSession:
    result = by_line(results)[line_no]
    assert isinstance(result, ImportedSession), result
    return result


def error(results: list[ImportedSession | RowError], line_no: int) -> RowError:
    result = by_line(results)[line_no]
    assert isinstance(result, RowError), result
    return result


def physical_rows(sample: str) -> int:
    with (FIXTURES / sample).open(encoding="utf-8-sig", newline="") as fh:
        return (
            sum(
                1
                for row in csv.reader(
                    fh, delimiter=";" if "paris" in sample or "norway" in sample else ","
                )
                if row
            )
            - 1
        )


# --------------------------------------------------------------------------- mappings


def test_shipped_mappings_are_listed_and_load() -> None:
    assert shipped_mapping_names() == SHIPPED
    for name in SHIPPED:
        mapping = load_shipped_mapping(name)
        assert mapping.source == f"csv.{name}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_mapping_header_names_dataset_origin_and_licence(name: str) -> None:
    text = (
        Path(__file__).resolve().parents[2] / "topics/adapters/mappings" / f"{name}.yaml"
    ).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    for key in ("# dataset:", "# origin:", "# licence:"):
        assert any(line.startswith(key) for line in header), (name, key)


def test_unknown_shipped_mapping_lists_the_shipped_ones() -> None:
    with pytest.raises(AdapterError, match="no shipped mapping 'oslo'; shipped: boulder, dundee"):
        load_shipped_mapping("oslo")


MINIMAL = "source: x\ncolumns: {station_id: a, start: b, energy: c}\ndate_formats: ['%Y']\n"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("- a list", "expected a YAML mapping"),
        ("source: [", "not valid YAML"),
        (MINIMAL + "energy_unit: MWh", r"Invalid enum value 'MWh' - at `\$.energy_unit`"),
        (MINIMAL + "energy_unit: Wh\ntimezone: Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
        (MINIMAL.replace("c}", "c, kwh: d}") + "energy_unit: Wh", "unknown field `kwh`"),
        (MINIMAL + "energy_unit: Wh\nswap_formats: ['%d']", "swap_formats not among date_formats"),
    ],
)
def test_invalid_mapping_is_rejected_with_the_key(yaml_text: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        ColumnMapping.from_yaml(yaml_text, origin="bad.yaml")


# --------------------------------------------------------------------------- every sample


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_row_gives_exactly_one_result_in_order(sample: str) -> None:
    results, _ = run(sample)
    assert len(results) == physical_rows(sample)
    assert [r.line_no for r in results] == sorted(r.line_no for r in results)


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_events_decode_back_into_their_records(sample: str) -> None:
    results, _ = run(sample)
    sessions = [r for r in results if isinstance(r, ImportedSession)]
    assert sessions
    for s in sessions:
        kinds = [e.kind if isinstance(e, SessionEvent) else e.context for e in s.events]
        if s.is_open:
            assert kinds == ["started", "Transaction.Begin"]
        else:
            assert kinds == ["started", "Transaction.Begin", "Transaction.End", "ended"]
        for event in s.events:
            assert decode(encode(event), type(event)) == event
            assert event.session_id == s.session_id
            assert event.source == load_shipped_mapping(SAMPLES[sample]).source
            assert event.event_time.utcoffset() == timedelta(0)
        started, begin = s.events[0], s.events[1]
        assert started.event_time == begin.event_time == s.start
        assert started.meter_start_wh == 0 and begin.energy_wh == 0
        if not s.is_open:
            end_reading, ended = s.events[2], s.events[3]
            assert end_reading.energy_wh == ended.meter_stop_wh == s.energy_wh
            assert ended.event_time == end_reading.event_time == s.end >= s.start


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_ids_are_deterministic_and_unique(sample: str) -> None:
    first, _ = run(sample)
    again, _ = run(sample)
    other_secret, _ = run(sample, secret=b"another secret")
    ids = [e.event_id for r in first if isinstance(r, ImportedSession) for e in r.events]
    assert len(ids) == len(set(ids))
    assert ids == [e.event_id for r in again if isinstance(r, ImportedSession) for e in r.events]
    # the secret only changes token hashes, never identities
    assert ids == [
        e.event_id for r in other_secret if isinstance(r, ImportedSession) for e in r.events
    ]


# --------------------------------------------------------------------------- Dundee


def test_dundee_iso_export_swaps_day_and_month() -> None:
    results, decisions = run("dundee_sample.csv")
    assert decisions == [
        SwapDecision(True, 5, 0, 34, "5 rows plausible only swapped, 0 only as written")
    ]
    # 2017-01-12 11:22 is 1 December 2017 (GMT)
    s = session(results, 12)
    assert (s.start, s.end, s.energy_wh) == (
        utc(2017, 12, 1, 11, 22),
        utc(2017, 12, 1, 11, 48),
        2700,
    )
    assert s.day_month_swapped and s.station_id == "50911"
    assert s.session_id == session_id_for("50911", "4032740")
    assert s.events[0].transaction_id == "4032740"
    assert (s.events[0].evse_id, s.events[0].connector_id) == (2, 2)
    # start 30 Nov (written correctly, day > 12), end 1 Dec (written 2017-01-12)
    s = session(results, 16)
    assert (s.start, s.end, s.energy_wh) == (
        utc(2017, 11, 30, 23, 54),
        utc(2017, 12, 1, 0, 24),
        10540,
    )
    # zero-energy session over a night
    s = session(results, 24)
    assert (s.start, s.end, s.energy_wh, s.zero_energy) == (
        utc(2017, 11, 30, 16, 26),
        utc(2017, 12, 1, 9, 46),
        0,
        True,
    )
    # a day above 12 is never swapped
    s = session(results, 18)
    assert s.start == utc(2017, 11, 30, 23, 48) and not s.day_month_swapped


def test_dundee_open_sessions_missing_station_and_bad_rows() -> None:
    results, _ = run("dundee_sample.csv")
    counts = Counter(
        "error"
        if isinstance(r, RowError)
        else "open"
        if r.is_open
        else "zero"
        if r.zero_energy
        else "closed"
        for r in results
    )
    assert counts == Counter(closed=17, open=10, zero=3, error=4)
    s = session(results, 4)
    assert s.is_open and s.start == utc(2017, 12, 1, 12, 7) and s.energy_wh is None
    for line in (2, 3):
        assert error(results, line).reason == "missing station_id (column 'CP ID' is empty)"
    e = error(results, 34)
    assert e.kind == "end_before_start"
    assert e.reason == (
        "end 1970-01-01T00:00:00+00:00 is before start 2017-10-17T17:23:00+00:00 "
        "(the end is the Unix epoch: a placeholder for a missing end)"
    )
    e = error(results, 35)
    assert (e.kind, e.reason) == ("negative_energy", "negative energy -45.58 kWh")
    assert e.raw_row["Total kWh"] == "-45.58" and e.raw_row["Charging event"] == "3815381"


def test_dundee_cost_is_information_only() -> None:
    results, _ = run("dundee_sample.csv")
    s = session(results, 27)
    assert (s.cost, s.currency, s.energy_wh) == (Decimal("3.5"), "GBP", 12873)
    assert all(not hasattr(e, "amount_minor") for e in s.events)


def test_dundee_sessions_across_the_end_of_summer_time() -> None:
    """29 Oct 2017: 01:55 BST to 01:20 GMT is a 25-minute session, not a negative one."""
    results, _ = run("dundee_sample.csv")
    s = session(results, 31)
    assert (s.start, s.end) == (utc(2017, 10, 29, 0, 55), utc(2017, 10, 29, 1, 20))
    assert [session(results, n).end - session(results, n).start for n in (31, 32, 33)] == [
        timedelta(minutes=25),
        timedelta(minutes=22),
        timedelta(minutes=22),
    ]


def test_dundee_ddmm_export_with_user_ids() -> None:
    results, decisions = run("dundee_ddmm_sample.csv")
    assert decisions[0].swap is False and "no closed session" in decisions[0].reason
    s = session(results, 2)
    assert (s.start, s.end, s.energy_wh) == (utc(2018, 9, 6, 22, 55), utc(2018, 9, 7, 6, 3), 22287)
    assert s.events[0].token_hash == hash_identifier("601838", SECRET)
    assert session(results, 4).events[0].token_hash == hash_identifier("603522H", SECRET)
    assert session(results, 22).is_open
    assert session(results, 21).zero_energy
    assert error(results, 24).kind == "negative_energy"
    assert not any(isinstance(r, ImportedSession) and r.day_month_swapped for r in results)


def test_swap_policies_never_and_always() -> None:
    never = msgspec_replace(load_shipped_mapping("dundee"), day_month_swap="never")
    results, decisions = run("dundee_sample.csv", never)
    assert decisions == []
    # as written, 30 Nov -> "2017-01-12" ends before it starts
    assert error(results, 16).kind == "end_before_start"
    always = msgspec_replace(load_shipped_mapping("dundee"), day_month_swap="always")
    detected, _ = run("dundee_sample.csv")
    assert run("dundee_sample.csv", always)[0] == detected


def test_swap_detection_without_evidence_uses_the_mapping_default() -> None:
    base = ColumnMapping.from_yaml(
        "source: csv.t\ncolumns: {station_id: CP, start: S, end: E, energy: K}\n"
        "energy_unit: kWh\ndate_formats: ['%Y-%m-%d %H:%M']\nday_month_swap: detect\n"
    )
    rows = [{"CP": "1", "S": "2018-02-03 10:00", "E": "2018-02-03 11:00", "K": "1"}]
    for default in (False, True):
        mapping = msgspec_replace(base, swap_default=default)
        decisions: list[SwapDecision] = []
        [s] = import_rows(rows, mapping, hash_secret=SECRET, on_swap_decision=decisions.append)
        assert decisions[0].swap is default and "no majority (0 to 0)" in decisions[0].reason
        assert s.start == (utc(2018, 3, 2, 10) if default else utc(2018, 2, 3, 10))


def msgspec_replace(mapping: ColumnMapping, **changes: object) -> ColumnMapping:
    import msgspec

    return msgspec.structs.replace(mapping, **changes)


# --------------------------------------------------------------------------- Perth & Kinross


def test_perth_swap_row_identity_and_placeholders() -> None:
    results, decisions = run("perth_kinross_sample.csv")
    assert decisions[0].swap and decisions[0].votes_swapped == 3
    # written 2017-11-08 19:04 -> 2017-12-08 09:32: really 11 -> 12 August (BST)
    s = session(results, 18)
    assert (s.start, s.end, s.energy_wh) == (
        utc(2017, 8, 11, 18, 4),
        utc(2017, 8, 12, 8, 32),
        22374,
    )
    # no dataset session id: a zero-kWh attempt and a real session start in the same minute
    a, b = session(results, 21), session(results, 22)
    assert a.start == b.start == utc(2017, 7, 15, 11, 33)
    assert (a.energy_wh, b.energy_wh) == (5560, 0) and a.session_id != b.session_id
    assert a.events[0].transaction_id is None
    assert session(results, 17).is_open
    assert error(results, 24).reason.startswith("end 1970-01-01T00:00:00+00:00 is before start")
    assert error(results, 25).reason == "negative energy -1394.711 kWh"


# --------------------------------------------------------------------------- Boulder


def test_boulder_plus00_timestamps_are_utc() -> None:
    results, decisions = run("boulder_sample.csv")
    assert decisions == []
    s = session(results, 2)
    assert (s.station_id, s.start, s.end, s.energy_wh) == (
        "BOULDER / BASELINE ST1",
        utc(2018, 1, 12, 15, 54),
        utc(2018, 1, 12, 17, 22),
        6706,
    )
    assert s.events[0].evse_id == 1 and s.events[0].connector_id is None
    assert session(results, 9).end - session(results, 9).start == timedelta(hours=94, minutes=12)
    assert sum(isinstance(r, ImportedSession) and r.zero_energy for r in results) == 4
    e = error(results, 25)
    assert e.kind == "end_before_start" and "Unix epoch" in e.reason


def test_boulder_identity_columns_tell_same_minute_sessions_apart() -> None:
    results, _ = run("boulder_sample.csv")
    a, b = session(results, 23), session(results, 24)
    assert (a.start, a.end, a.energy_wh) == (b.start, b.end, b.energy_wh)
    assert a.session_id != b.session_id
    plain = msgspec_replace(load_shipped_mapping("boulder"), identity_columns=())
    without, _ = run("boulder_sample.csv", plain)
    assert (
        error(without, 24).reason
        == f"duplicate of line 23: same session {session(without, 23).session_id}"
    )


# --------------------------------------------------------------------------- Norway


def test_norway_decimal_commas_local_time_and_open_sessions() -> None:
    results, _ = run("norway_residential_sample.csv")
    s = session(results, 2)
    assert (s.station_id, s.start, s.end, s.energy_wh) == (
        "AdO3",
        utc(2018, 12, 21, 9, 20),
        utc(2018, 12, 21, 9, 23),
        300,
    )
    assert s.session_id == session_id_for("AdO3", "1")
    assert s.events[0].token_hash == hash_identifier("AdO3-4", SECRET)
    # 26.10.2019 18:43 CEST -> 27.10.2019 12:08 CET
    s = session(results, 19)
    assert (s.start, s.end, s.energy_wh) == (
        utc(2019, 10, 26, 16, 43),
        utc(2019, 10, 27, 11, 8),
        6000,
    )
    for line in (21, 22):  # End_plugout "NA": still plugged in at extraction
        assert session(results, line).is_open and session(results, line).energy_wh is None
    assert not any(isinstance(r, RowError) for r in results)


def test_norway_duration_column_agrees_once_the_zone_is_applied() -> None:
    mapping = load_shipped_mapping("norway_residential")
    with (FIXTURES / "norway_residential_sample.csv").open(encoding="utf-8-sig", newline="") as fh:
        hours = {r.line_no: r.fields["Duration_hours"] for r in read_rows(fh, mapping)}
    results, _ = run("norway_residential_sample.csv")
    off = []
    for s in results:
        if isinstance(s, ImportedSession) and not s.is_open:
            published = float(hours[s.line_no].replace(",", "."))
            if abs((s.end - s.start).total_seconds() / 3600 - published) > 0.02:
                off.append(s.line_no)
    assert off == [18]  # 22.06.2019: Duration_hours is 2 h short of the timestamps, as published


# --------------------------------------------------------------------------- Paris


def test_paris_javascript_dates_wh_badges_and_duplicates() -> None:
    results, _ = run("paris_belib_sample.csv")
    s = session(results, 2)
    assert (s.station_id, s.start, s.end, s.energy_wh) == (
        "72 RUE DE ROME-1",
        utc(2017, 4, 13, 22, 49, 24),
        utc(2017, 4, 14, 4, 47, 16),
        13830,
    )
    started = s.events[0]
    assert (started.evse_id, started.connector_id) == (21, 21)
    assert started.token_hash == hash_identifier("04D1C3821D4E80", SECRET)
    assert started.token_type == "ISO14443"
    assert sum(isinstance(r, ImportedSession) and r.zero_energy for r in results) == 5
    dup = error(results, 22)
    assert (dup.kind, dup.reason) == (
        "duplicate",
        f"duplicate of line 21: same session {session(results, 21).session_id}",
    )
    assert dup.raw_row["UUID Badge"] == "hmac:" + hash_identifier("04D18FD21A4E80", SECRET)


# --------------------------------------------------------------------------- workplace


def test_workplace_years_0014_and_costs() -> None:
    results, _ = run("workplace_dataverse_sample.csv")
    s = session(results, 2)  # 0014-11-18 15:40:26 Pacific
    assert (s.start, s.end, s.energy_wh) == (
        utc(2014, 11, 18, 23, 40, 26),
        utc(2014, 11, 19, 1, 11, 4),
        7780,
    )
    assert s.session_id == session_id_for("582873", "1366563")
    assert (session(results, 4).cost, session(results, 4).currency) == (Decimal("0.58"), "USD")
    s = session(results, 21)  # 0015-06-10 16:55:42 Pacific daylight time
    assert (s.start, s.energy_wh) == (utc(2015, 6, 10, 23, 55, 42), 0)


# --------------------------------------------------------------------------- broken rows

BROKEN = {
    3: (
        "unparseable_date",
        "unparseable start '31/13/2018' (tried formats '%Y-%m-%dT%H:%M:%S', '%d/%m/%Y')",
    ),
    4: ("negative_energy", "negative energy -1.5 kWh"),
    5: (
        "end_before_start",
        "end 2018-09-06T10:00:00+00:00 is before start 2018-09-06T11:00:00+00:00",
    ),
    6: ("missing_value", "missing station_id (column 'CP ID' is empty)"),
    7: ("bad_number", "energy 'abc' (column 'Total kWh') is not a number"),
    8: ("bad_connector", "connector_id 'A' is not a non-negative integer"),
    9: ("field_count", "row has 3 fields, the header has 16"),
    10: ("field_count", "row has 17 fields, the header has 16"),
    11: ("missing_value", "start '06/09/2018' has an empty start_time"),
    12: ("duplicate", f"duplicate of line 2: same session {session_id_for('50914', '9000001')}"),
    13: ("missing_value", "closed session without energy (column 'Total kWh' is empty)"),
    14: ("unparseable_date", "unparseable end_time '25:99' (tried formats '%H:%M', '%H:%M:%S')"),
    15: ("bad_number", "cost 'free' (column 'Cost') is not a number"),
}


def test_broken_rows_become_row_errors_with_reasons() -> None:
    results, _ = run("broken_rows.csv", "dundee")
    assert [r.line_no for r in results] == [*range(2, 17), 18, 20]  # 16-17 is one record, 19 blank
    for line_no, (kind, reason) in BROKEN.items():
        e = error(results, line_no)
        assert (e.kind, e.reason) == (kind, reason), line_no
    assert session(results, 2).energy_wh == 22287
    multi_line = session(results, 16)
    assert multi_line.start == utc(2018, 9, 6, 11) and multi_line.energy_wh == 2000
    assert session(results, 18).energy_wh == 3500
    assert session(results, 20).is_open


def test_row_errors_never_carry_a_raw_user_id() -> None:
    results, _ = run("broken_rows.csv", "dundee")
    for r in results:
        if isinstance(r, RowError) and "User ID" in r.raw_row:
            assert r.raw_row["User ID"].startswith("hmac:")
            assert "601838" not in orjson.dumps(r.raw_row).decode()


def test_extra_cells_are_kept_in_the_raw_row() -> None:
    results, _ = run("broken_rows.csv", "dundee")
    assert error(results, 10).raw_row["extra_fields"] == "surplus"
    assert error(results, 10).raw_row["column_16"] == ""  # unnamed header cells get a name


def test_missing_required_column_rejects_the_file() -> None:
    mapping = load_shipped_mapping("dundee")
    with pytest.raises(
        AdapterError, match=r"required columns missing from the header: station_id='CP ID'"
    ):
        list(
            read_rows(
                io.StringIO("Charging event,Start Date,Start Time,End Date,End Time,Total kWh\n"),
                mapping,
            )
        )
    with pytest.raises(AdapterError, match="no CSV header"):
        list(read_rows(io.StringIO(""), mapping))


def test_plain_dict_rows_and_dictreader_rows() -> None:
    mapping = load_shipped_mapping("norway_residential")
    text = (FIXTURES / "norway_residential_sample.csv").read_text(encoding="utf-8-sig")
    text += "9999;AdO3;AdO3-4\r\n"  # short row: DictReader fills None
    rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=";"))
    results = list(import_rows(rows, mapping, hash_secret=SECRET))
    expected, _ = run("norway_residential_sample.csv")
    assert results[:-1] == expected
    assert (results[-1].line_no, results[-1].kind) == (23, "field_count")


TINY = ColumnMapping.from_yaml(
    "source: csv.tiny\n"
    "columns: {station_id: CP, start: D, start_time: T, end: E, end_time: ET, energy: K, cost: C}\n"
    "energy_unit: kWh\ndate_formats: ['%Y-%m-%d']\ncurrency: EUR\n"
)


@pytest.mark.parametrize(
    ("changes", "kind", "reason"),
    [
        ({"K": "1e999999999"}, "bad_number", "energy '1e999999999' (column 'K') is out of range"),
        ({"K": "NaN"}, "bad_number", "energy 'NaN' (column 'K') is not a number"),
        ({"K": "1_000"}, "bad_number", "energy '1_000' (column 'K') is not a number"),
        ({"E": "", "ET": "10:00"}, "missing_value", "end_time '10:00' but no end date"),
        ({"D": ""}, "missing_value", "start_time '08:00' but no start date"),
        ({"C": "1e-99"}, "bad_number", "cost '1e-99' (column 'C') is out of range"),
    ],
)
def test_hostile_cells(changes: dict[str, str], kind: str, reason: str) -> None:
    row = {"CP": "A", "D": "2024-03-01", "T": "08:00", "E": "2024-03-01", "ET": "09:00"}
    row |= {"K": "1.5", "C": "0.30"} | changes
    [result] = import_rows([row], TINY, hash_secret=SECRET)
    assert isinstance(result, RowError)
    assert (result.line_no, result.kind, result.reason) == (2, kind, reason)


def test_energy_rounds_half_up_and_currency_goes_with_a_cost() -> None:
    row = {"CP": "A", "D": "2024-03-01", "T": "08:00", "E": "2024-03-01", "ET": "09:00"}
    rows = [row | {"K": "6.2494995", "C": "0.30"}, row | {"K": "0.0005", "C": "", "T": "08:01"}]
    a, b = import_rows(rows, TINY, hash_secret=SECRET)
    assert (a.energy_wh, a.cost, a.currency) == (6249, Decimal("0.30"), "EUR")
    assert (b.energy_wh, b.cost, b.currency) == (1, None, None)


def test_cli_reports_a_file_in_the_wrong_encoding(cli, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.csv"
    header = (FIXTURES / "norway_residential_sample.csv").read_bytes().splitlines()[0]
    bad.write_bytes(
        header + b"\r\n1;Garage;Ren\xe9;Private;NA;21.12.2018 10:20;10;NA;NA;1;NA;Dec;Friday\r\n"
    )
    result = cli("--mapping", "norway_residential", "--out", str(tmp_path / "o.jsonl"), str(bad))
    assert result.exit_code == 1
    assert "latin1.csv: not utf-8-sig text at byte" in result.output


def test_empty_hash_secret_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="hash_secret must not be empty"):
        import_rows([], load_shipped_mapping("dundee"), hash_secret=b"")


# --------------------------------------------------------------------------- the command


@pytest.fixture
def cli():
    from streams.commands.importer import import_sessions

    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        environment = {"VOLTGUARD_HASH_SECRET": "cli-secret", "VOLTGUARD_BOOTSTRAP_SERVERS": ""}
        environment.update(env or {})
        return runner.invoke(import_sessions, list(args), env=environment, catch_exceptions=False)

    return invoke


def test_cli_writes_jsonl_errors_and_a_summary(cli, tmp_path: Path) -> None:
    out, errors = tmp_path / "events.jsonl", tmp_path / "errors.jsonl"
    result = cli(
        "--mapping",
        "dundee",
        "--out",
        str(out),
        "--errors",
        str(errors),
        str(FIXTURES / "dundee_sample.csv"),
        str(FIXTURES / "broken_rows.csv"),
    )
    assert result.exit_code == 0, result.output
    assert "cli-secret" not in result.output
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    # dundee_sample: 20 closed + 10 open sessions; broken_rows: 3 closed + 1 open
    assert Counter(line["topic"] for line in lines) == {
        "csms_session_events": 23 * 2 + 11,
        "csms_meter_readings": 23 * 2 + 11,
    }
    assert {line["topic"] for line in lines} <= set(CATALOG)
    for line in lines:
        record_type = SessionEvent if line["topic"] == "csms_session_events" else MeterReading
        record = decode(orjson.dumps(line["value"]), record_type)
        assert line["key"] == record.session_id
    rejected = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert len(rejected) == 4 + len(BROKEN)
    first = rejected[0]
    assert first["file"].endswith("dundee_sample.csv") and first["line_no"] == 2
    assert first["kind"] == "missing_value" and first["raw_row"]["Charging event"] == "4032911"
    for pattern in (
        r"rows read +51\n",
        r"sessions imported +34\n",
        r"open sessions +11\n",
        r"zero-energy sessions +3\n",
        r"rows rejected +17\n",
        r"missing_value +5  e\.g\. dundee_sample\.csv:2: missing station_id",
        r"duplicate +1  e\.g\. broken_rows\.csv:12: duplicate of line 2",
        r"day/month swap on +dundee_sample\.csv: 5 rows plausible only swapped",
        r"day/month swap off broken_rows\.csv",
    ):
        assert re.search(pattern, result.output), pattern


def test_cli_reimport_is_identical(cli, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sample = str(FIXTURES / "paris_belib_sample.csv")
    assert cli("--mapping", "paris_belib", "--out", str(a), sample).exit_code == 0
    assert cli("--mapping", "paris_belib", "--out", str(b), sample).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_cli_limit_and_mapping_file(cli, tmp_path: Path) -> None:
    mapping_file = tmp_path / "mine.yaml"
    mapping_file.write_text(
        (Path(__file__).resolve().parents[2] / "topics/adapters/mappings/boulder.yaml").read_text()
    )
    out = tmp_path / "events.jsonl"
    result = cli(
        "--mapping",
        str(mapping_file),
        "--out",
        str(out),
        "--limit",
        "5",
        str(FIXTURES / "boulder_sample.csv"),
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"rows read +5\n", result.output)
    assert len(out.read_bytes().splitlines()) == 5 * 4


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--mapping", "dundee"], {}, "give --out FILE.jsonl or --bootstrap-servers"),
        (
            ["--mapping", "dundee", "--out", "x.jsonl", "--bootstrap-servers", "k:9092"],
            {},
            "not both",
        ),
        (["--mapping", "nowhere", "--out", "x.jsonl"], {}, "no shipped mapping 'nowhere'"),
        (
            ["--mapping", "dundee", "--out", "x.jsonl"],
            {"VOLTGUARD_HASH_SECRET": ""},
            "--hash-secret",
        ),
    ],
)
def test_cli_usage_errors(
    cli, tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = cli(*args, str(FIXTURES / "dundee_sample.csv"), env=env)
    assert result.exit_code == 2
    assert message in result.output


def test_cli_out_wins_over_a_bootstrap_address_from_the_environment(cli, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    result = cli(
        "--mapping",
        "workplace_dataverse",
        "--out",
        str(out),
        str(FIXTURES / "workplace_dataverse_sample.csv"),
        env={"VOLTGUARD_BOOTSTRAP_SERVERS": "k:9092"},
    )
    assert result.exit_code == 0 and out.stat().st_size > 0


def test_cli_rejects_a_file_without_the_required_columns(cli, tmp_path: Path) -> None:
    result = cli(
        "--mapping",
        "norway_residential",
        "--out",
        str(tmp_path / "o.jsonl"),
        str(FIXTURES / "boulder_sample.csv"),
    )
    assert result.exit_code == 1
    assert "boulder_sample.csv" in result.output and "required columns missing" in result.output


def test_cli_produces_to_the_csms_topics(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a broker: a stand-in Producer records what the command sends and how."""
    import confluent_kafka

    sent: list[tuple[str, bytes, bytes]] = []
    configs: list[dict[str, object]] = []

    class FakeProducer:
        def __init__(self, config: dict[str, object]) -> None:
            configs.append(config)

        def produce(self, topic: str, value: bytes, key: bytes, on_delivery=None) -> None:
            sent.append((topic, key, value))

        def poll(self, timeout: float) -> int:
            return 0

        def flush(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    result = cli(
        "--mapping",
        "norway_residential",
        "--bootstrap-servers",
        "k:9092",
        str(FIXTURES / "norway_residential_sample.csv"),
    )
    assert result.exit_code == 0, result.output
    assert configs[0]["bootstrap.servers"] == "k:9092"
    assert (configs[0]["compression.type"], configs[0]["linger.ms"]) == ("lz4", 5)
    topics = Counter(topic for topic, _, _ in sent)
    assert topics == {
        CATALOG["csms_session_events"].name: 19 * 2 + 2,
        CATALOG["csms_meter_readings"].name: 19 * 2 + 2,
    }
    for topic, key, value in sent:
        record_type = SessionEvent if topic == CATALOG["csms_session_events"].name else MeterReading
        assert decode(value, record_type).session_id.encode() == key
