"""``voltguard simulate``: files, the Kafka shell (against a fake producer), and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from streams.commands.simulate import FILES, produce_to_kafka, simulate
from tests.unit.simulation.conftest import SECRET
from topics.catalog import CATALOG
from topics.simulation.config import SimulationConfig

ARGS = ["--sessions", "25", "--stations", "6", "--sample-interval", "900", "--seed", "3"]
CLEAN_ENV: dict[str, str | None] = {
    "VOLTGUARD_HASH_SECRET": None,
    "VOLTGUARD_BOOTSTRAP_SERVERS": None,
    "VOLTGUARD_SIM_OUT": None,
}


def invoke(args: list[str], **env: str) -> Any:
    return CliRunner().invoke(simulate, args, env={**CLEAN_ENV, **env})


def test_writes_jsonl_files_and_a_summary(tmp_path: Path) -> None:
    result = invoke([*ARGS, "--out", str(tmp_path)], VOLTGUARD_HASH_SECRET="s3cr3t-value")
    assert result.exit_code == 0, result.output
    assert "simulated 25 sessions" in result.output and "events/s" in result.output
    assert "s3cr3t-value" not in result.output
    for topic, name in FILES.items():
        lines = (tmp_path / name).read_bytes().splitlines()
        assert lines or topic == "sim_labels"
        for line in lines:
            item = orjson.loads(line)
            assert item["topic"] == topic and isinstance(item["key"], str) and item["value"]


def test_json_summary_and_fault_options(tmp_path: Path) -> None:
    result = invoke(
        [*ARGS, "--out", str(tmp_path), "--summary-format", "json", "--fault-rate", "40",
         "--faults", "overcharge,missing_payment", "--duration", "2d"],
        VOLTGUARD_HASH_SECRET="k",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output.strip().splitlines()[-1])
    assert set(summary["labels_by_kind"]) <= {"overcharge", "missing_payment"}
    assert summary["labels"] > 0 and summary["sessions"] == 25


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--out", "x"], {}, "--hash-secret"),
        ([], {"VOLTGUARD_HASH_SECRET": "k"}, "--out DIR"),
        (["--out", "x", "--faults", "nope"], {"VOLTGUARD_HASH_SECRET": "k"}, "unknown kind"),
        (["--out", "x", "--duration", "soon"], {"VOLTGUARD_HASH_SECRET": "k"}, "not a duration"),
        (["--out", "x", "--bootstrap-servers", "h:1"], {"VOLTGUARD_HASH_SECRET": "k"}, "not both"),
        (["--out", "x", "--stations", "0"], {"VOLTGUARD_HASH_SECRET": "k"}, "--stations"),
        (["--out", "x", "--timezone", "Mars/Base"], {"VOLTGUARD_HASH_SECRET": "k"}, "timezone"),
    ],
)
def test_usage_errors(extra: list[str], env: dict[str, str], message: str, tmp_path: Path) -> None:
    extra = [str(tmp_path / "out") if a == "x" else a for a in extra]
    result = invoke([*ARGS, *extra], **env)
    assert result.exit_code == 2 and message in result.output, result.output


class FakeProducer:
    """Records what a confluent_kafka.Producer would send; refuses once to test retries."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.full_once = True

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        if self.full_once and len(self.sent) == 5:
            self.full_once = False
            raise BufferError("queue full")
        self.sent.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for _ in self.sent:
            self.conf["on_delivery"](None, None)
        return 0


def test_produce_to_kafka_keys_and_topics() -> None:
    producers: list[FakeProducer] = []

    def factory(conf: dict[str, Any]) -> FakeProducer:
        producers.append(FakeProducer(conf))
        return producers[-1]

    cfg = SimulationConfig(seed=3, sessions=20, stations=5, sample_interval_s=900, fault_scale=20)
    summary = produce_to_kafka(
        cfg, hash_secret=SECRET, bootstrap_servers="127.0.0.1:1", producer_factory=factory
    )
    [producer] = producers
    assert producer.conf["compression.type"] == "lz4" and 5 <= producer.conf["linger.ms"] <= 20
    names = {CATALOG[t].name: t for t in FILES}
    assert len(producer.sent) == summary.events + summary.labels + 10
    for topic, value, key in producer.sent:
        record = orjson.loads(value)
        short = names[topic]
        expected = {
            "ocpp_frames": lambda r: r["station_id"],
            "psp_payment_events": lambda r: r["session_id"] or r["payment_id"],
            "stations": lambda r: r["station_id"],
            "tariffs": lambda r: r["tariff_id"],
            "sim_labels": lambda r: r["subject_id"],
        }[short](record)
        assert key.decode() == expected


def test_produce_to_kafka_reports_delivery_failures() -> None:
    class Failing(FakeProducer):
        def flush(self, timeout: float) -> int:
            self.conf["on_delivery"]("broker down", None)
            return 0

    cfg = SimulationConfig(seed=3, sessions=2, stations=2, sample_interval_s=900)
    with pytest.raises(RuntimeError, match="not delivered, first: broker down"):
        produce_to_kafka(cfg, hash_secret=SECRET, bootstrap_servers="x", producer_factory=Failing)
