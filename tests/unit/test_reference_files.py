"""Reference files (stations, tariffs) in JSON, JSONL and CSV: validation, rejects, duplicates."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from streams.cli import main
from topics.adapters.reference import (
    DEFAULT_SOURCE,
    ReferenceLoad,
    detect_format,
    merge_loads,
    read_stations,
    read_tariffs,
)
from topics.exceptions import AdapterError
from topics.identity import stable_id
from topics.records import Station, Tariff

DATA = Path(__file__).resolve().parents[1] / "data"
NOW = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)


def station(station_id: str = "CP-1", **over: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "station_id": station_id,
        "name": "Test",
        "lat": 52.5,
        "lon": 13.4,
        "timezone": "Europe/Berlin",
        "tariff_id": "T-1",
        "connectors": [
            {
                "evse_id": 1,
                "connector_id": 1,
                "standard": "IEC_62196_T2",
                "power_type": "AC_3_PHASE",
                "max_power_w": 22000,
            }
        ],
    }
    value.update(over)
    return value


def tariff(tariff_id: str = "T-1", **over: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "tariff_id": tariff_id,
        "currency": "EUR",
        "timezone": "Europe/Berlin",
        "elements": [{"price_components": [{"type": "ENERGY", "price": 0.39, "vat": 19}]}],
    }
    value.update(over)
    return value


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- JSON


def test_json_list_gets_deterministic_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "stations.json", json.dumps([station("CP-1"), station("CP-2")]))
    load = read_stations(path, now=NOW)
    assert load.ids() == ["CP-1", "CP-2"]
    assert load.rejected == [] and load.warnings == []
    first = load.records[0]
    assert isinstance(first, Station)
    assert first.event_time == NOW and first.source == DEFAULT_SOURCE
    assert first.connectors[0].max_power_w == 22000
    assert len(first.event_id) == 32 and first.event_id != load.records[1].event_id
    again = read_stations(path, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert again.records[0].event_id == first.event_id  # content, not time, makes the id
    assert first.event_id != stable_id("station", "CP-1")


def test_json_object_with_a_list_and_given_event_fields_are_kept(tmp_path: Path) -> None:
    given = tariff(event_id="ev-1", event_time="2024-01-01T00:00:00Z", source="erp")
    path = write(tmp_path, "t.json", json.dumps({"tariffs": [given, tariff("T-2")]}))
    load = read_tariffs(path, now=NOW)
    assert load.ids() == ["T-1", "T-2"]
    first = load.records[0]
    assert isinstance(first, Tariff)
    assert (first.event_id, first.source) == ("ev-1", "erp")
    assert first.event_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert first.elements[0].price_components[0].price == Decimal("0.39")


def test_json_single_object_is_one_record(tmp_path: Path) -> None:
    load = read_tariffs(write(tmp_path, "one.json", json.dumps(tariff("T-9"))), now=NOW)
    assert load.ids() == ["T-9"]


def test_json_rejects_name_the_index_and_the_field(tmp_path: Path) -> None:
    bad_lat = station("CP-2", lat=95.0)
    no_connectors = station("CP-3", connectors=[])
    path = write(tmp_path, "s.json", json.dumps([station("CP-1"), bad_lat, no_connectors, 7]))
    load = read_stations(path, now=NOW)
    assert load.ids() == ["CP-1"]
    assert load.rejected == [
        ("s.json[1]", "Station: Expected `float` <= 90.0 - at `$.lat`"),
        ("s.json[2]", "Station: Expected `array` of length >= 1 - at `$.connectors`"),
        ("s.json[3]", "expected a JSON object, got int"),
    ]


def test_not_json_at_all_is_one_reject(tmp_path: Path) -> None:
    load = read_stations(write(tmp_path, "s.json", "[{"), now=NOW)
    assert load.records == []
    [(location, reason)] = load.rejected
    assert location == "s.json" and reason.startswith("not valid JSON")


def test_station_with_unknown_timezone_or_duplicate_connector_is_rejected(tmp_path: Path) -> None:
    connector = station()["connectors"][0]
    path = write(
        tmp_path,
        "s.json",
        json.dumps(
            [station("CP-1", timezone="Mars/Olympus"), station("CP-2", connectors=[connector] * 2)]
        ),
    )
    load = read_stations(path, now=NOW)
    assert load.records == []
    assert load.rejected[0] == (
        "s.json[0]",
        "Station: unknown timezone 'Mars/Olympus' - at `$.timezone`",
    )
    assert load.rejected[1][0] == "s.json[1]"
    assert "evse_id=1 connector_id=1 appears twice" in load.rejected[1][1]


# --------------------------------------------------------------------------- JSONL


def test_jsonl_plain_lines_and_bad_lines(tmp_path: Path) -> None:
    lines = [json.dumps(tariff("T-1")), "", "{not json", json.dumps(tariff("T-2", currency="eur"))]
    load = read_tariffs(write(tmp_path, "t.jsonl", "\n".join(lines) + "\n"), now=NOW)
    assert load.ids() == ["T-1"]
    assert load.rejected[0][0] == "t.jsonl:3" and "not valid JSON" in load.rejected[0][1]
    assert load.rejected[1] == (
        "t.jsonl:4",
        "Tariff: Expected `str` matching regex '^[A-Z]{3}$' - at `$.currency`",
    )


def test_jsonl_simulator_envelopes(tmp_path: Path) -> None:
    from topics.simulation.config import SimulationConfig
    from topics.simulation.engine import Simulation

    sim = Simulation(SimulationConfig(seed=5, sessions=2, stations=3), hash_secret=b"k")
    expected: dict[str, dict[str, Any]] = {"stations": {}, "tariffs": {}}
    out: dict[str, list[str]] = {"stations": [], "tariffs": []}
    for topic, key, value in sim.records():
        if topic in out:
            out[topic].append(json.dumps({"topic": topic, "key": key, "value": json.loads(value)}))
            expected[topic][key] = json.loads(value)
    stations = read_stations(write(tmp_path, "stations.jsonl", "\n".join(out["stations"])), now=NOW)
    tariffs = read_tariffs(write(tmp_path, "tariffs.jsonl", "\n".join(out["tariffs"])), now=NOW)
    assert stations.rejected == [] and tariffs.rejected == []
    assert sorted(stations.ids()) == sorted(expected["stations"]) and len(stations.ids()) == 3
    assert sorted(tariffs.ids()) == sorted(expected["tariffs"])
    first = stations.records[0]
    assert first.event_id == expected["stations"][first.station_id]["event_id"]
    assert first.source == "voltguard-simulator"


def test_jsonl_envelope_of_another_topic_mismatched_key_or_tombstone_is_rejected(
    tmp_path: Path,
) -> None:
    lines = [
        {"topic": "tariffs", "key": "T-1", "value": tariff("T-1")},
        {"topic": "stations", "key": "CP-9", "value": station("CP-1")},
        {"topic": "stations", "key": "CP-2", "value": None},
        {"topic": "voltguard.reference.stations.v1", "key": "CP-3", "value": station("CP-3")},
    ]
    path = write(tmp_path, "s.jsonl", "\n".join(json.dumps(line) for line in lines))
    load = read_stations(path, now=NOW)
    assert load.ids() == ["CP-3"]
    assert load.rejected == [
        ("s.jsonl:1", "envelope for topic 'tariffs', expected 'stations'"),
        ("s.jsonl:2", "envelope key 'CP-9' differs from station_id 'CP-1'"),
        ("s.jsonl:3", "tombstone (null value): deleting is not a load"),
    ]


# --------------------------------------------------------------------------- CSV


def test_stations_csv_groups_connectors_and_rejects_bad_rows(tmp_path: Path) -> None:
    path = Path(shutil.copy(DATA / "stations.csv", tmp_path / "stations.csv"))
    load = read_stations(path, now=NOW)
    assert load.ids() == ["BER-001", "BER-002"]
    ber1 = load.records[0]
    assert isinstance(ber1, Station)
    assert [(c.evse_id, c.connector_id, c.max_power_w) for c in ber1.connectors] == [
        (1, 1, 150000),
        (2, 1, 150000),
    ]
    assert (ber1.lat, ber1.lon, ber1.timezone, ber1.group, ber1.tariff_id) == (
        52.5219,
        13.4132,
        "Europe/Berlin",
        "DC",
        "T-DC",
    )
    assert load.rejected == [
        ("stations.csv:5", "Station: Expected `int`, got `str` - at `$.connectors[0].max_power_w`"),
        ("stations.csv:6", "Station: Expected `float` <= 90.0 - at `$.lat`"),
    ]


def test_stations_csv_error_points_at_the_connector_row(tmp_path: Path) -> None:
    text = (
        "station_id,lat,lon,tariff_id,evse_id,connector_id,standard,power_type,max_power_w\n"
        "CP-1,52.5,13.4,T-1,1,1,T2,AC_3_PHASE,22000\n"
        "CP-1,52.5,13.4,T-1,2,1,T2,AC_4_PHASE,22000\n"
        "CP-2,52.5,13.4,T-1,1,1,T2,AC_3_PHASE,22000\n"
        "CP-3,52.5,13.4,T-1,1,1,T2,AC_3_PHASE,22000\n"
        "CP-3,52.6,13.4,T-1,2,1,T2,AC_3_PHASE,22000\n"
    )
    load = read_stations(write(tmp_path, "s.csv", text), now=NOW)
    assert load.ids() == ["CP-2"]
    assert load.records[0].timezone == "UTC" and load.records[0].name == ""
    assert load.rejected[0][0] == "s.csv:3"
    assert "`$.connectors[1].power_type`" in load.rejected[0][1]
    assert load.rejected[1] == (
        "s.csv:6",
        "station 'CP-3': column lat is 52.6 here but 52.5 on line 5",
    )


def test_csv_missing_columns_reject_the_file_and_unknown_columns_warn(tmp_path: Path) -> None:
    missing = read_stations(write(tmp_path, "a.csv", "station_id,lat\nCP-1,52\n"), now=NOW)
    assert missing.records == []
    assert missing.rejected == [
        (
            "a.csv",
            "missing columns: lon, tariff_id, evse_id, connector_id, standard, power_type, "
            "max_power_w",
        )
    ]
    text = "tariff_id,currency,type,price,colour\nT-1,EUR,ENERGY,0.30,blue\n,EUR,ENERGY,0.3,red\n"
    extra = read_tariffs(write(tmp_path, "b.csv", text), now=NOW)
    assert extra.ids() == ["T-1"]
    assert extra.warnings == ["b.csv: ignored columns: colour"]
    assert extra.rejected == [("b.csv:3", "tariff_id is empty")]


def test_tariffs_csv_elements_restrictions_and_unratable(tmp_path: Path) -> None:
    path = Path(shutil.copy(DATA / "tariffs.csv", tmp_path / "tariffs.csv"))
    load = read_tariffs(path, now=NOW)
    assert load.ids() == ["T-AC", "T-DC"]
    by_id = {t.tariff_id: t for t in load.records if isinstance(t, Tariff)}
    ac = by_id["T-AC"]
    assert [(pc.type, pc.price, pc.step_size) for pc in ac.elements[0].price_components] == [
        ("ENERGY", Decimal("0.39"), 1),
        ("PARKING_TIME", Decimal("2.40"), 60),
    ]
    dc = by_id["T-DC"]
    assert dc.max_price_minor == 5000 and dc.min_price_minor is None
    assert len(dc.elements) == 2
    restrictions = dc.elements[0].restrictions
    assert restrictions is not None
    assert (restrictions.start_time, restrictions.end_time) == ("07:00", "22:00")
    assert restrictions.day_of_week == ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY"]
    assert dc.elements[1].restrictions is None
    assert [pc.type for pc in dc.elements[1].price_components] == ["ENERGY", "FLAT"]
    assert load.rejected == [
        ("tariffs.csv:7", "Tariff cannot be rated: tariff 'T-BAD': unknown timezone 'Mars/Olympus'")
    ]


def test_tariff_csv_conflicting_restrictions_and_bad_price_point_at_the_row(
    tmp_path: Path,
) -> None:
    text = (
        "tariff_id,currency,element,type,price,start_time,min_duration\n"
        "T-1,EUR,0,ENERGY,0.30,08:00,\n"
        "T-1,EUR,0,TIME,1.00,09:00,\n"
        "T-2,EUR,0,ENERGY,0.30,,600\n"
        "T-2,EUR,1,ENERGY,cheap,,\n"
        "T-3,EUR,0,ENERGY,0.30,,-5\n"
    )
    load = read_tariffs(write(tmp_path, "t.csv", text), now=NOW)
    assert load.records == []
    assert load.rejected[0] == (
        "t.csv:3",
        "tariff 'T-1' element 0: column start_time is '09:00' here but '08:00' on line 2",
    )
    assert load.rejected[1] == (
        "t.csv:5",
        "Tariff: Invalid decimal string - at `$.elements[1].price_components[0].price`",
    )
    assert load.rejected[2][0] == "t.csv:6" and "min_duration" in load.rejected[2][1]


# --------------------------------------------------------------------------- rating check


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"currency": "XYZ"}, "unknown ISO 4217 currency 'XYZ'"),
        ({"timezone": "Nowhere/City"}, "unknown timezone 'Nowhere/City'"),
        ({"min_price_minor": 500, "max_price_minor": 100}, "min_price_minor"),
    ],
)
def test_unratable_tariffs_are_rejected_with_the_reason(
    tmp_path: Path, over: dict[str, Any], reason: str
) -> None:
    path = write(tmp_path, "t.json", json.dumps([tariff("T-OK"), tariff("T-BAD", **over)]))
    load = read_tariffs(path, now=NOW)
    assert load.ids() == ["T-OK"]
    [(location, message)] = load.rejected
    assert location == "t.json[1]"
    assert message.startswith("Tariff cannot be rated: tariff 'T-BAD'") and reason in message


# --------------------------------------------------------------------------- duplicates


def test_duplicate_ids_last_wins_with_a_warning(tmp_path: Path) -> None:
    lines = [station("CP-1", name="old"), station("CP-2"), station("CP-1", name="new")]
    path = write(tmp_path, "s.jsonl", "\n".join(json.dumps(s) for s in lines))
    load = read_stations(path, now=NOW)
    assert load.ids() == ["CP-1", "CP-2"]
    assert load.records[0].name == "new"
    assert load.warnings == [
        "s.jsonl:3: duplicate station_id 'CP-1' (also at s.jsonl:1); the last one is kept"
    ]


def test_duplicates_across_files_last_file_wins(tmp_path: Path) -> None:
    a = read_tariffs(write(tmp_path, "a.json", json.dumps([tariff("T-1")])), now=NOW)
    b = read_tariffs(
        write(tmp_path, "b.json", json.dumps([tariff("T-1", currency="USD")])), now=NOW
    )
    merged = merge_loads([a, b])
    assert [t.currency for t in merged.records if isinstance(t, Tariff)] == ["USD"]
    assert merged.warnings == [
        "b.json[0]: duplicate tariff_id 'T-1' (also at a.json[0]); the last one is kept"
    ]
    with pytest.raises(ValueError, match="different kinds"):
        merge_loads([a, ReferenceLoad("stations")])


# --------------------------------------------------------------------------- format and CLI


def test_format_detection() -> None:
    assert detect_format(Path("x.ndjson")) == "jsonl"
    assert detect_format(Path("x.CSV")) == "csv"
    assert detect_format(Path("x.data"), "json") == "json"
    with pytest.raises(AdapterError, match="cannot tell the format"):
        detect_format(Path("x.data"))


def test_now_must_be_timezone_aware(tmp_path: Path) -> None:
    path = write(tmp_path, "s.json", "[]")
    with pytest.raises(ValueError, match="timezone-aware"):
        read_stations(path, now=datetime(2024, 1, 1))


def test_cli_dry_run_prints_the_summary_and_exit_codes(tmp_path: Path) -> None:
    path = Path(shutil.copy(DATA / "tariffs.csv", tmp_path / "tariffs.csv"))
    runner = CliRunner()
    ok = runner.invoke(main, ["tariffs", "load", "--dry-run", str(path)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[:3] == [
        "tariffs: 2 valid (dry run: nothing produced), from 1 file(s)",
        "rejected 1:",
        "  tariffs.csv:7: Tariff cannot be rated: tariff 'T-BAD': unknown timezone 'Mars/Olympus'",
    ]
    strict = runner.invoke(main, ["tariffs", "load", "--dry-run", "--fail-on-reject", str(path)])
    assert strict.exit_code == 1
    assert "1 rejected and --fail-on-reject given" in strict.output
    wrong_kind = runner.invoke(main, ["stations", "load", "--dry-run", str(path)])
    assert wrong_kind.exit_code == 1
    assert "missing columns" in wrong_kind.output and "no valid station found" in wrong_kind.output
    as_csv = write(tmp_path, "stations.txt", (DATA / "stations.csv").read_text())
    forced = runner.invoke(main, ["stations", "load", "--dry-run", "--format", "csv", str(as_csv)])
    assert forced.exit_code == 0 and "stations: 2 valid" in forced.output
    unknown = runner.invoke(main, ["stations", "load", "--dry-run", str(as_csv)])
    assert unknown.exit_code == 1 and "cannot tell the format" in unknown.output
