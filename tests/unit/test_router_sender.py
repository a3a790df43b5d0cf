"""The router's HTTP sending against a real local aiohttp server (no broker).

Rate limit per destination, no retry on a 4xx other than 429, a failing destination's
further deliveries in the batch get one attempt, and a slow destination is cut off at its
deadline without holding up the others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from aiohttp import web

from streams.router import Delivery, Sender
from streams.settings import Settings
from topics import alerts

BEHAVIOUR = {"/ok": 200, "/bad": 400, "/down": 503}


@pytest.fixture
def server() -> Iterator[tuple[int, Counter[str], list[tuple[str, float]]]]:
    hits: Counter[str] = Counter()
    times: list[tuple[str, float]] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        hits[request.path] += 1
        times.append((request.path, time.monotonic()))
        if request.path == "/slow":
            await asyncio.sleep(3)
        return web.Response(status=BEHAVIOUR.get(request.path, 200), text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        port.append(runner.addresses[0][1])
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port[0], hits, times
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def sender_for(port: int, **settings: object) -> tuple[Sender, alerts.RouterConfig]:
    base = f"http://127.0.0.1:{port}"
    cfg = alerts.parse_config(
        "destinations:\n"
        + "".join(
            f"  {name}: {{type: slack, url: '{base}/{name}', rate_per_s: {rate}, burst: 1}}\n"
            for name, rate in (("ok", 10), ("bad", 100), ("down", 100), ("slow", 100))
        )
    )
    s = Settings.from_env({}, router_backoff_base_s=0.01, router_backoff_max_s=0.02, **settings)
    return Sender(s, cfg), cfg


def deliveries(cfg: alerts.RouterConfig, dest: str, n: int) -> list[Delivery]:
    return [
        Delivery(
            alerts.Notice(
                key=f"{dest}-{i}", kind="k", severity="warning", summary="s", source="fraud"
            ),
            cfg.destinations[dest],
            "trigger",
            0,
            ("t", 0, i, None, b""),
        )
        for i in range(n)
    ]


def test_rate_limit_spaces_requests_to_one_destination(server) -> None:
    port, _, times = server
    sender, cfg = sender_for(port)
    try:
        ds = deliveries(cfg, "ok", 4)
        sender.send_all(ds)
    finally:
        sender.close()
    assert [d.status for d in ds] == ["delivered"] * 4
    stamps = [t for path, t in times if path == "/ok"]
    assert stamps[-1] - stamps[0] >= 0.28  # burst 1, 10/s: three waits of 0.1 s


def test_a_client_error_is_not_retried(server) -> None:
    port, hits, _ = server
    sender, cfg = sender_for(port, router_max_attempts=5)
    try:
        ds = deliveries(cfg, "bad", 1)
        sender.send_all(ds)
    finally:
        sender.close()
    assert ds[0].status == "failed" and "not retryable" in ds[0].error
    assert hits["/bad"] == 1


def test_a_dead_destination_costs_one_round_of_retries_per_batch(server) -> None:
    port, hits, _ = server
    sender, cfg = sender_for(port, router_max_attempts=3)
    try:
        ds = deliveries(cfg, "down", 3) + deliveries(cfg, "ok", 1)
        sender.send_all(ds)
    finally:
        sender.close()
    assert [d.status for d in ds] == ["failed"] * 3 + ["delivered"]
    assert [d.attempts for d in ds[:3]] == [3, 1, 1]
    assert hits["/down"] == 5


def test_a_slow_destination_is_cut_off_and_does_not_hold_up_others(server) -> None:
    port, _, times = server
    sender, cfg = sender_for(port, router_delivery_deadline_s=0.5, router_request_timeout_s=5)
    started = time.monotonic()
    try:
        ds = deliveries(cfg, "slow", 1) + deliveries(cfg, "ok", 2)
        sender.send_all(ds)
    finally:
        sender.close()
    elapsed = time.monotonic() - started
    assert [d.status for d in ds] == ["failed", "delivered", "delivered"]
    assert elapsed < 1.5
    ok = [t for path, t in times if path == "/ok"]
    assert ok[-1] - started < 0.4  # delivered while the slow one was still pending
