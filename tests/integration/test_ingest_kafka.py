"""The ingest worker against the real broker: frames in, canonical events and dead letters out,
and no loss or duplicate across a crash (SIGKILL) or a clean stop (SIGTERM) mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.ingest import IngestLoop
from streams.settings import Settings
from tests.integration.helpers import produce_all, read_all
from topics import samples
from topics.codec import decode
from topics.identity import session_id_for
from topics.records import DeadLetter, MeterReading, SessionEvent

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "tests" / "fixtures" / "ocpp_captures" / "gnezdilov_v16"
SECRET = "integration-secret"


@pytest.fixture(scope="module")
def topics_ready(kafka_bootstrap: str, kafka_admin: AdminClient) -> str:
    create_topics(kafka_admin)
    return kafka_bootstrap


def raw_envelope(station: str, frame_text: str) -> bytes:
    """Wrap a frame exactly as captured (possibly malformed) in a CSMS envelope."""
    return (
        b'{"station_id":"' + station.encode() + b'","received_at":"2024-03-01T08:00:00Z",'
        b'"protocol":"ocpp1.6","frame":' + frame_text.encode() + b"}"
    )


def captured(name: str) -> list[str]:
    return [
        ln.strip()
        for ln in (CAPTURES / name).read_text().splitlines()
        if ln.strip().startswith("[")
    ]


def of_station(station: str):
    marker = f'"station_id":"{station}"'.encode()
    return lambda value: marker in value


def test_frames_become_canonical_events_and_bad_ones_dead_letters(topics_ready: str) -> None:
    bootstrap = topics_ready
    station = f"IT-{uuid.uuid4().hex[:8]}"
    key = station.encode()
    good = [
        samples.start_transaction(
            station_id=station, unique_id="s1", id_tag="RFID-1", meter_start_wh=100
        ),
        samples.start_transaction_result(station_id=station, unique_id="s1", transaction_id=501),
        *(
            samples.meter_values(
                station_id=station, transaction_id=501, seq=i, energy_wh=100 + i * 180
            )
            for i in range(1, 11)
        ),
        samples.stop_transaction(
            station_id=station, unique_id="s2", transaction_id=501, meter_stop_wh=1900
        ),
        raw_envelope(station, '[2,"h1","Heartbeat",{}]'),
    ]
    bad = [
        raw_envelope(station, captured("MeterValues.txt")[0]),  # no action name
        raw_envelope(station, captured("Reset.txt")[0]),  # padded uniqueId
        b'{"station_id":"' + key + b'", "frame": [2, "x", "Heartbeat"',  # truncated JSON
    ]
    produce_all(bootstrap, "ocpp_frames", [(key, v) for v in good + bad])

    settings = Settings.from_env(
        {}, bootstrap_servers=bootstrap, hash_secret=SECRET,
        ingest_group_id=f"it-{station}", instance_id="it-1",
    )  # fmt: skip
    loop = IngestLoop(settings)
    thread = threading.Thread(target=loop.run, kwargs={"max_idle_s": 4.0})
    thread.start()
    try:
        events = [
            decode(v, SessionEvent)
            for v in read_all(bootstrap, "session_events", keep=of_station(station), expect=2)
        ]
        readings = [
            decode(v, MeterReading)
            for v in read_all(bootstrap, "meter_readings", keep=of_station(station), expect=10)
        ]
        letters = [
            decode(v, DeadLetter)
            for v in read_all(
                bootstrap,
                "dead_letters",
                keep=lambda v: decode(v, DeadLetter).original_key == key,
                expect=3,
            )
        ]
    finally:
        loop.stop()
        thread.join(30)

    session_id = session_id_for(station, 501)
    assert [(e.kind, e.session_id) for e in events] == [
        ("started", session_id),
        ("ended", session_id),
    ]
    assert events[0].meter_start_wh == 100 and events[1].meter_stop_wh == 1900
    assert events[0].token_hash and b"RFID-1" not in orjson.dumps(events[0].token_hash)
    assert [r.energy_wh for r in readings] == [100 + i * 180 for i in range(1, 11)]
    assert {r.power_w for r in readings} == {11000.0}

    by_value = {letter.original_value: letter for letter in letters}
    assert set(by_value) == set(bad)
    assert "got 3 elements" in by_value[bad[0]].reason
    assert "leading or trailing whitespace" in by_value[bad[1]].reason
    assert "not valid JSON" in by_value[bad[2]].reason
    assert all(letter.original_topic == "voltguard.ocpp.frames.v1" for letter in letters)
    assert all(letter.original_offset >= 0 for letter in letters)


def worker_process(bootstrap: str, group: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VOLTGUARD_HASH_SECRET": SECRET,
        "VOLTGUARD_INGEST_GROUP_ID": group,
        "VOLTGUARD_INSTANCE_ID": "restart-test",
        "VOLTGUARD_INGEST_BATCH_MAX": "500",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--bootstrap-servers", bootstrap,
         "--exit-when-idle", "6"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def wait_for_readings(bootstrap: str, station_prefix: str, at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    marker = f'"station_id":"{station_prefix}'.encode()
    while time.monotonic() < deadline:
        seen = len(
            read_all(
                bootstrap,
                "meter_readings",
                keep=lambda v: marker in v,
                expect=at_least,
                settle_s=0.0,
                timeout_s=5,
            )
        )
        if seen >= at_least:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"fewer than {at_least} readings after {timeout_s}s")


@pytest.mark.slow
def test_worker_killed_or_stopped_mid_stream_loses_nothing_and_emits_nothing_twice(
    topics_ready: str,
) -> None:
    bootstrap = topics_ready
    run = uuid.uuid4().hex[:6]
    stations = [f"RS-{run}-{i}" for i in range(20)]
    transactions = {s: 9000 + i for i, s in enumerate(stations)}
    per_tx = 1500
    # Phase 1: starts (awaiting the CSMS answer) and a long run of meter values.
    phase1 = [
        (s.encode(), samples.start_transaction(station_id=s, unique_id=f"st-{s}", id_tag=f"T-{s}"))
        for s in stations
    ]
    phase1 += [
        (s.encode(), samples.meter_values(station_id=s, transaction_id=tx, seq=i, energy_wh=i * 50))
        for i in range(1, per_tx + 1)
        for s, tx in transactions.items()
    ]
    group = f"restart-{run}"
    produce_all(bootstrap, "ocpp_frames", phase1[: len(stations)])

    # The meter values keep arriving (about 10,000 frames/s) while the worker runs, so the
    # kill lands mid-stream: there is input the dead worker never saw and, likely, a batch
    # it had in an open transaction.
    def trickle() -> None:
        rest = phase1[len(stations) :]
        for i in range(0, len(rest), 1000):
            produce_all(bootstrap, "ocpp_frames", rest[i : i + 1000])
            time.sleep(0.1)

    feeder = threading.Thread(target=trickle)
    worker = worker_process(bootstrap, group)
    feeder.start()
    wait_for_readings(bootstrap, f"RS-{run}-", 2000, timeout_s=60)
    worker.send_signal(signal.SIGKILL)  # crash mid-stream: its open transaction must vanish
    worker.wait(10)
    feeder.join(60)
    at_kill = len(
        read_all(
            bootstrap, "meter_readings", keep=lambda v: f'"station_id":"RS-{run}-'.encode() in v
        )
    )
    assert at_kill < per_tx * len(stations), "the kill came after the stream had been processed"

    # Phase 2: the CSMS answers (the pending calls must have survived the crash) and stops.
    phase2 = [
        (
            s.encode(),
            samples.start_transaction_result(station_id=s, unique_id=f"st-{s}", transaction_id=tx),
        )
        for s, tx in transactions.items()
    ]
    phase2 += [
        (
            s.encode(),
            samples.stop_transaction(
                station_id=s, unique_id=f"sp-{s}", transaction_id=tx, meter_stop_wh=per_tx * 50
            ),
        )
        for s, tx in transactions.items()
    ]
    produce_all(bootstrap, "ocpp_frames", phase2)

    worker = worker_process(bootstrap, group)
    time.sleep(3)
    worker.send_signal(signal.SIGTERM)  # clean stop mid-stream: commits and leaves
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out.decode()[-3000:]

    worker = worker_process(bootstrap, group)  # finishes the stream, exits when idle
    out, _ = worker.communicate(timeout=180)
    assert worker.returncode == 0, out.decode()[-3000:]

    marker = f'"station_id":"RS-{run}-'.encode()
    expected_readings = per_tx * len(stations)
    readings = read_all(
        bootstrap, "meter_readings", keep=lambda v: marker in v, expect=expected_readings
    )
    ids = Counter(decode(v, MeterReading).event_id for v in readings)
    assert len(ids) == expected_readings, "lost readings"
    assert max(ids.values()) == 1, f"duplicates: {[k for k, n in ids.items() if n > 1][:5]}"

    events = [
        decode(v, SessionEvent)
        for v in read_all(bootstrap, "session_events", keep=lambda v: marker in v, expect=40)
    ]
    kinds = Counter((e.session_id, e.kind) for e in events)
    assert len(events) == 2 * len(stations)
    assert set(kinds.values()) == {1}
    assert {sid for sid, kind in kinds if kind == "started"} == {
        session_id_for(s, tx) for s, tx in transactions.items()
    }
