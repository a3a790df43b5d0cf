"""Small helpers for tests against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from topics.catalog import CLOCK_KEY, topic


def produce_all(
    bootstrap: str, short: str, values: list[tuple[bytes | None, bytes | None]]
) -> None:
    """Produce (key, value) pairs to a catalog topic and wait until all are acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    errors: list[object] = []
    for key, value in values:
        while True:
            try:
                producer.produce(
                    topic(short), value, key, on_delivery=lambda e, m: e and errors.append(e)
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors


def read_all(
    bootstrap: str,
    short: str,
    *,
    keep: Callable[[bytes], bool] = lambda v: True,
    expect: int | None = None,
    timeout_s: float = 30.0,
    settle_s: float = 1.5,
) -> list[bytes]:
    """Every committed value of a topic that ``keep`` accepts.

    Reads from the beginning until ``expect`` values were kept (then ``settle_s`` more, to
    catch duplicates) or, without ``expect``, until ``settle_s`` passes with no new message.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    name = topic(short)
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.key() == CLOCK_KEY:
                    continue  # the ingest's clock ticks, not records of the topic's contract
                if msg.error() is None and msg.value() is not None and keep(msg.value()):
                    out.append(msg.value())
                    last_new = time.monotonic()
            enough = expect is None or len(out) >= expect
            if enough and time.monotonic() - last_new > settle_s:
                break
    finally:
        consumer.close()
    return out


# ---------------------------------------------------------------- worker processes

ROOT = Path(__file__).resolve().parents[2]


def stage_process(
    stage: str,
    bootstrap: str,
    *,
    env: dict[str, str] | None = None,
    exit_when_idle: float | None = 6.0,
    log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``voltguard worker --stage STAGE`` as a subprocess (so a test can SIGKILL it).

    ``env`` adds VOLTGUARD_* settings; ``exit_when_idle=None`` runs until a signal. Output
    goes to ``log_path`` when given (appended, so a restarted worker's log follows its
    predecessor's), else to a pipe.
    """
    out: Any = subprocess.PIPE
    if log_path is not None:
        out = log_path.open("ab")
    idle = [] if exit_when_idle is None else ["--exit-when-idle", str(exit_when_idle)]
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--stage", stage,
             "--bootstrap-servers", bootstrap, *idle],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    finally:
        if log_path is not None:
            out.close()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 0.2 s until it holds; AssertionError naming ``what`` after."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def group_lag(bootstrap: str, group: str, short: str) -> list[int] | None:
    """Per partition, the offsets of a catalog topic a consumer group has not committed yet
    (None: the broker did not answer). A topic written in transactions keeps a lag of one
    per partition after its last commit marker, which no consumer ever consumes."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    name = topic(short)
    try:
        meta = consumer.list_topics(name, timeout=5).topics[name].partitions
        committed = consumer.committed([TopicPartition(name, p) for p in meta], timeout=5)
        lags = []
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=5)
            lags.append(high - (tp.offset if tp.offset >= 0 else 0))
        return lags
    except KafkaException:
        return None
    finally:
        consumer.close()


def group_backlog(bootstrap: str, group: str, short: str) -> list[int] | None:
    """Per partition, the records past a group's committed offset that a read_committed
    consumer can still read (None: the broker did not answer).

    Unlike :func:`group_lag` this is 0 when a partition ends with a commit marker or with
    an aborted transaction (its records and the abort marker): nothing is left to consume,
    yet offsets stay uncommitted, as no consumer commits again before new input. Two CI runs
    of the fault test waited 200 s on a partition 2 offsets short, most likely that. Clock
    ticks do not count: an ingest worker at its end renews its claim every 250 ms while
    another moves on (topics/clock.py), so its readers may have a few ticks left to read.
    """
    lags = group_lag(bootstrap, group, short)
    if lags is None or max(lags, default=0) <= 0:
        return lags
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})  # fmt: skip
    name = topic(short)
    try:
        backlog = [0] * len(lags)
        behind = [p for p, lag in enumerate(lags) if lag > 0]
        committed = consumer.committed([TopicPartition(name, p) for p in behind], timeout=5)
        consumer.assign([TopicPartition(name, tp.partition, max(tp.offset, 0)) for tp in committed])
        ended: set[int] = set()
        deadline = time.monotonic() + 10
        while len(ended) < len(behind) and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        ended.add(m.partition())
                    continue
                if m.key() != CLOCK_KEY:  # ticks, e.g. renewals of idle claims, are not input
                    backlog[m.partition()] += 1
        if len(ended) < len(behind):
            return None  # could not read to the end: say nothing
        return backlog
    except KafkaException:
        return None
    finally:
        consumer.close()


# ---------------------------------------------------------------- an HTTP receiver


@dataclass
class HttpReceiver:
    """A local aiohttp server in a thread that answers POSTs with ``handler``.

    ``handler(path, body bytes, headers)`` is a coroutine returning (status, text, headers).
    """

    handler: Callable[[str, bytes, dict[str, str]], Awaitable[tuple[int, str, dict[str, str]]]]
    port: int = 0

    def __enter__(self) -> HttpReceiver:
        from aiohttp import web

        self._loop = asyncio.new_event_loop()

        async def handle(request: web.Request) -> web.Response:
            status, text, headers = await self.handler(
                request.path, await request.read(), dict(request.headers)
            )
            return web.Response(status=status, text=text, headers=headers)

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app)
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
