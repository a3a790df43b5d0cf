"""Two ingest workers' clock ticks on the real broker, as billing combines them
(``topics.clock.InputClock``): a worker at the end of its partitions keeps the clock moving
while the other reads on (it renews its claim, having read the other's ticks back), and a
worker SIGKILLed at its end stops holding that claim, so the records that reach its
partitions before another worker takes them over are not overtaken by the clock.

A broker of the module's own: the groups start from the beginning of the input topics, so
nobody else's frames may be in them.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from tests.integration.helpers import stage_process, wait_until
from topics.catalog import CLOCK_KEY, topic
from topics.clock import InputClock
from topics.codec import decode
from topics.records import ClockTick

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FRAMES = topic("ocpp_frames")


def minute(text: str) -> int:
    """Unix ms of ``2024-03-01T<text>:00Z``."""
    return int(datetime.fromisoformat(f"2024-03-01T{text}:00+00:00").timestamp() * 1000)


def heartbeat(at: str, n: int) -> bytes:
    return orjson.dumps(
        {"station_id": f"CP-{n}", "received_at": f"2024-03-01T{at}:00Z",
         "protocol": "ocpp1.6", "frame": [2, f"hb{n}", "Heartbeat", {}]}
    )  # fmt: skip


def send(bootstrap: str, partitions: set[int], at: str) -> None:
    """One OCPP Heartbeat frame received at ``at`` to each of ``partitions``."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for p in sorted(partitions):
        producer.produce(FRAMES, heartbeat(at, p), f"CP-{p}".encode(), partition=p)
    assert producer.flush(30) == 0


class Ticks:
    """The clock ticks of session_events[0], combined as billing does."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "clock-ticks-reader",
             "enable.auto.commit": False, "isolation.level": "read_committed"}
        )  # fmt: skip
        self.consumer.assign([TopicPartition(topic("session_events"), 0, OFFSET_END)])
        self.clock = InputClock()
        self.seen: list[tuple[int | None, ClockTick]] = []

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for m in self.consumer.consume(500, 0.2):
                if m.error() is None and m.key() == CLOCK_KEY:
                    tick = decode(m.value(), ClockTick)
                    self.seen.append((self.clock.observe(tick), tick))

    def until(self, at_ms: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.read(0.5)
            if self.now() == at_ms:
                return
        raise AssertionError(f"clock {self.now()} after {timeout_s} s, expected {at_ms}")

    def now(self) -> int | None:
        return max((t for t, _ in self.seen if t is not None), default=None)


def ocpp_partitions(log: str) -> set[int]:
    """The ocpp_frames partitions of a worker's last 'assigned' log line."""
    lines = [ln for ln in log.splitlines() if "ingest: assigned" in ln]
    if not lines:
        return set()
    found = re.search(r"ocpp_frames ([0-9,-]+)", lines[-1])
    out: set[int] = set()
    for part in found.group(1).split(",") if found else []:
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


@pytest.fixture
def workers(private_kafka: str, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    create_topics(AdminClient({"bootstrap.servers": private_kafka}))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = {"VOLTGUARD_HASH_SECRET": "clock-it", "VOLTGUARD_SESSION_TIMEOUT_MS": "6000"}
    try:
        for name in ("a", "b"):
            procs[name] = stage_process(
                "ingest", private_kafka, env={**env, "VOLTGUARD_INSTANCE_ID": name},
                exit_when_idle=None, log_path=tmp_path / f"{name}.log",
            )  # fmt: skip
            time.sleep(2)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def test_an_idle_workers_claim_keeps_the_clock_moving_and_a_dead_ones_lapses(
    private_kafka: str, workers: dict[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    log = {name: tmp_path / f"{name}.log" for name in workers}
    wait_until(
        lambda: all(ocpp_partitions(log[n].read_text()) for n in workers)
        and ocpp_partitions(log["a"].read_text()).isdisjoint(ocpp_partitions(log["b"].read_text())),
        60, "both ingest workers to hold ocpp_frames partitions",
    )  # fmt: skip
    mine = {n: ocpp_partitions(log[n].read_text()) for n in workers}
    ticks = Ticks(private_kafka)
    ticks.read(1.0)

    # Every partition at 11:00, both workers at their end: the clock is 11:00.
    send(private_kafka, mine["a"] | mine["b"], "11:00")
    ticks.until(minute("11:00"), 30)

    # a reads on to 13:00 while b stays at its end (more than a lease later): b renews its
    # claim on a's ticks, so the clock follows a.
    time.sleep(2)
    send(private_kafka, mine["a"], "13:00")
    ticks.until(minute("13:00"), 30)

    # b dies at its end, its claim last renewed over a lease ago (within the lease it still
    # holds: that window is the design's). A record reaches one of its partitions (12:00)
    # and a reads on to 15:00: the clock must not pass 12:00 before a has taken b's
    # partitions over and read it.
    time.sleep(2)
    workers["b"].kill()
    workers["b"].wait(10)
    orphan = min(mine["b"])
    send(private_kafka, {orphan}, "12:00")
    send(private_kafka, mine["a"], "15:00")
    ticks.until(minute("15:00"), 60)
    taken = {f"ocpp_frames/{orphan}", f"ocpp_frames/{min(mine['a'])}"}  # a's after the rebalance
    takeover = next(
        (i for i, (_, t) in enumerate(ticks.seen) if taken <= set(t.covers or ())), None
    )
    assert takeover is not None, "the clock reached 15:00 before a took b's partitions over"
    before = [at for at, _ in ticks.seen[:takeover] if at is not None]
    assert max(before) == minute("13:00"), [t for t in before if t > minute("13:00")]
    assert ocpp_partitions(log["a"].read_text()) == mine["a"] | mine["b"]
