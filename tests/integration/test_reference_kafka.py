"""`voltguard stations/tariffs load|list`, read_reference and ReferenceFollower on the real broker.

Each test gets its own pair of fresh compacted topics (the catalog entries are swapped for
the test), so what is read back is exactly what the test loaded.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.cli import main
from streams.reference import ReferenceData, ReferenceFollower, read_reference
from streams.settings import Settings
from tests.integration.helpers import produce_all
from topics.catalog import CATALOG
from topics.records import Station, Tariff

pytestmark = pytest.mark.kafka

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def fresh_topics(
    kafka_admin: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """New, empty stations and tariffs topics, put in the catalog in place of the real ones."""
    suffix = uuid.uuid4().hex[:8]
    specs = {
        short: dataclasses.replace(CATALOG[short], name=f"{CATALOG[short].name}.test-{suffix}")
        for short in ("stations", "tariffs")
    }
    create_topics(kafka_admin, specs=specs)
    for short, spec in specs.items():
        monkeypatch.setitem(CATALOG, short, spec)
    yield {short: spec.name for short, spec in specs.items()}
    kafka_admin.delete_topics([spec.name for spec in specs.values()])


def settings_for(bootstrap: str) -> Settings:
    return Settings.from_env({}, bootstrap_servers=bootstrap)


def load(bootstrap: str, kind: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, [kind, "load", "--bootstrap-servers", bootstrap, *args], catch_exceptions=False
    )


def station_line(station_id: str, tariff_id: str, **over: Any) -> str:
    value = {
        "station_id": station_id,
        "lat": 52.5,
        "lon": 13.4,
        "tariff_id": tariff_id,
        "connectors": [
            {
                "evse_id": 1,
                "connector_id": 1,
                "standard": "IEC_62196_T2",
                "power_type": "AC_3_PHASE",
                "max_power_w": 11000,
            }
        ],
        **over,
    }
    return json.dumps({"topic": "stations", "key": station_id, "value": value})


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_loaded_files_are_read_back_exactly(
    fresh_topics: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    tariffs_csv = Path(shutil.copy(DATA / "tariffs.csv", tmp_path / "tariffs.csv"))
    stations_csv = Path(shutil.copy(DATA / "stations.csv", tmp_path / "stations.csv"))

    tariffs = load(kafka_bootstrap, "tariffs", str(tariffs_csv))
    assert tariffs.exit_code == 0, tariffs.output
    assert tariffs.output.startswith(f"tariffs: loaded 2 to {fresh_topics['tariffs']}")
    assert "tariffs.csv:7: Tariff cannot be rated" in tariffs.output
    stations = load(kafka_bootstrap, "stations", str(stations_csv))
    assert stations.exit_code == 0, stations.output
    assert stations.output.startswith(f"stations: loaded 2 to {fresh_topics['stations']}")
    assert "rejected 2:" in stations.output

    from topics.adapters.reference import read_stations, read_tariffs

    data = read_reference(settings_for(kafka_bootstrap), timeout_s=30)
    assert sorted(data.stations) == ["BER-001", "BER-002"]
    assert sorted(data.tariffs) == ["T-AC", "T-DC"]
    # the same records as the files hold, apart from the load time
    now = data.stations["BER-001"].event_time
    expected_stations = {s.station_id: s for s in read_stations(stations_csv, now=now).records}
    assert data.stations == expected_stations
    expected_tariffs = {t.tariff_id: t for t in read_tariffs(tariffs_csv, now=now).records}
    assert {k: without_event_time(v) for k, v in data.tariffs.items()} == {
        k: without_event_time(v) for k, v in expected_tariffs.items()
    }
    assert data.tariff_of("BER-001") == data.tariffs["T-DC"]
    assert data.positions == {(fresh_topics["stations"], 0): 2, (fresh_topics["tariffs"], 0): 2}
    assert data.skipped == 0

    listed = CliRunner().invoke(main, ["stations", "list", "--bootstrap-servers", kafka_bootstrap])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].startswith("BER-001") and "tariff=T-DC" in lines[0]
    assert "connectors=2 max=150kW" in lines[0]
    assert lines[1].startswith("BER-002") and lines[-1] == (
        f"2 stations on {fresh_topics['stations']}"
    )
    as_json = CliRunner().invoke(
        main, ["tariffs", "list", "--json", "--bootstrap-servers", kafka_bootstrap]
    )
    assert [json.loads(line)["tariff_id"] for line in as_json.output.splitlines()] == [
        "T-AC",
        "T-DC",
    ]


def without_event_time(record: Station | Tariff) -> dict[str, Any]:
    """A record without its event time (set at load), for comparing content."""
    import msgspec

    out = msgspec.to_builtins(record)
    out.pop("event_time")
    return out


def test_empty_topics_return_at_once_and_fail_on_reject_produces_nothing(
    fresh_topics: dict[str, str], kafka_bootstrap: str
) -> None:
    started = time.monotonic()
    data = read_reference(settings_for(kafka_bootstrap), timeout_s=30)
    assert time.monotonic() - started < 10
    assert (data.stations, data.tariffs) == ({}, {})
    assert set(data.positions.values()) == {0}

    strict = load(kafka_bootstrap, "stations", "--fail-on-reject", str(DATA / "stations.csv"))
    assert strict.exit_code == 1
    assert "stations: 2 valid, nothing produced" in strict.output
    assert read_reference(settings_for(kafka_bootstrap)).stations == {}


def test_follower_sees_later_loads_tombstones_and_survives_bad_records(
    fresh_topics: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    first = tmp_path / "first.jsonl"
    first.write_text(station_line("CP-1", "T-1") + "\n" + station_line("CP-2", "T-1") + "\n")
    assert load(kafka_bootstrap, "stations", str(first)).exit_code == 0

    settings = settings_for(kafka_bootstrap)
    data = read_reference(settings)
    assert sorted(data.stations) == ["CP-1", "CP-2"]
    follower = ReferenceFollower(settings, data, poll_timeout_s=0.2)
    follower.start()
    try:
        assert follower.running
        second = tmp_path / "second.jsonl"
        second.write_text(
            station_line("CP-2", "T-9", name="renamed") + "\n" + station_line("CP-3", "T-1") + "\n"
        )
        result = load(kafka_bootstrap, "stations", str(second))
        assert result.exit_code == 0, result.output
        wait_for(lambda: "CP-3" in data.stations)
        assert data.stations["CP-2"].name == "renamed"
        assert data.stations["CP-2"].tariff_id == "T-9"
        assert sorted(data.stations) == ["CP-1", "CP-2", "CP-3"]

        produce_all(
            kafka_bootstrap,
            "stations",
            [(b"CP-1", None), (b"CP-4", b'{"station_id": "CP-4"}'), (b"CP-5", b"not json")],
        )
        wait_for(lambda: data.skipped == 2)
        assert sorted(data.stations) == ["CP-2", "CP-3"]
        assert follower.running

        third = tmp_path / "third.jsonl"
        third.write_text(station_line("CP-6", "T-1") + "\n")
        assert load(kafka_bootstrap, "stations", str(third)).exit_code == 0
        wait_for(lambda: "CP-6" in data.stations)
    finally:
        follower.stop()
    assert not follower.running

    # a fresh read of the whole topic agrees with what the follower built
    again = read_reference(settings)
    assert again.stations == data.stations
    assert sorted(again.stations) == ["CP-2", "CP-3", "CP-6"]
    assert again.skipped == 2
    assert again.positions == data.positions


def test_the_real_catalog_topics_work_too(
    kafka_admin: AdminClient, kafka_bootstrap: str, tmp_path: Path
) -> None:
    create_topics(kafka_admin)
    station_id = f"CP-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "s.jsonl"
    path.write_text(station_line(station_id, "T-1") + "\n")
    result = load(kafka_bootstrap, "stations", str(path))
    assert result.exit_code == 0, result.output
    assert f"to {CATALOG['stations'].name}" in result.output
    data: ReferenceData = read_reference(settings_for(kafka_bootstrap))
    assert data.stations[station_id].tariff_id == "T-1"
    assert data.stations[station_id].source == "voltguard-load"


def test_watermarks_retry_a_partition_without_leader_yet() -> None:
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    from streams.topic_reader import watermarks_until as _watermarks

    class FreshTopicConsumer:
        calls = 0

        def get_watermark_offsets(
            self, tp: TopicPartition, timeout: float, cached: bool
        ) -> tuple[int, int]:
            self.calls += 1
            if self.calls < 3:
                raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
            return 0, 7

    consumer = FreshTopicConsumer()
    tp = TopicPartition("t", 0)
    assert _watermarks(consumer, tp, time.monotonic() + 5) == (0, 7)  # type: ignore[arg-type]
    assert consumer.calls == 3
    consumer.calls = -100
    with pytest.raises(KafkaException):
        _watermarks(consumer, tp, time.monotonic() - 1)  # type: ignore[arg-type]
