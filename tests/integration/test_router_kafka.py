"""The alert router on the real broker, delivering to a local HTTP receiver.

The receiver (aiohttp on 127.0.0.1) plays PagerDuty's Events API v2 and Slack incoming
webhooks: it checks every body against the public formats (400 with the problems
otherwise), counts requests, and can answer 429/500 first. The router runs, stops, and a new
instance (empty memory, same group) gets the same alerts again plus the reconciliation
correction back to ``matched``: nothing is triggered twice, the resolve is sent once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.router import RouterLoop
from streams.settings import Settings
from tests.alert_formats import pagerduty_problems, slack_problems
from tests.integration.helpers import produce_all, read_all
from topics import alerts
from topics.codec import decode, encode
from topics.records import DeadLetter, FraudAlert, ReconciliationResult

pytestmark = [pytest.mark.kafka]

T = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)


@dataclass
class Receiver:
    """Requests by path: (monotonic time, status answered, body)."""

    script: dict[str, list[int]] = field(default_factory=dict)
    """Per path, statuses to answer first (then success)."""
    seen: dict[str, list[tuple[float, int, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        body = json.loads(await request.read())
        check = pagerduty_problems if path.startswith("/pd") else slack_problems
        problems = check(body)
        if request.headers.get("Content-Type") != "application/json":
            problems.append("Content-Type is not application/json")
        queue = self.script.get(path, [])
        if problems:
            status = 400
            self.problems += [f"{path}: {p}" for p in problems]
        elif path == "/broken":
            status = 503
        else:
            status = queue.pop(0) if queue else (202 if path.startswith("/pd") else 200)
        self.seen.setdefault(path, []).append((time.monotonic(), status, body))
        headers = {"Retry-After": "0.3"} if status == 429 else {}
        if path.startswith("/pd") and status == 202:
            text = json.dumps({"status": "success", "message": "Event processed",
                               "dedup_key": body["dedup_key"]})  # fmt: skip
            return web.Response(status=202, text=text, content_type="application/json")
        return web.Response(status=status, text="ok" if status == 200 else "no", headers=headers)

    def delivered(self, path: str) -> list[Any]:
        return [b for _, status, b in self.seen.get(path, []) if status in (200, 202)]


@pytest.fixture
def receiver() -> Any:
    rec = Receiver(script={"/pd": [429, 500]})
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        rec.port = runner.addresses[0][1]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield rec
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def alert(alert_id: str, kind: str, severity: str, event_id: str) -> tuple[bytes, bytes]:
    a = FraudAlert(
        event_id=event_id, event_time=T, source="detection", alert_id=alert_id, kind=kind,
        severity=severity, score=0.9, subject_type="session", subject_id=f"S-{alert_id}",
        session_id=f"S-{alert_id}", station_id="BER-1", evidence={"delta_wh": -5},
        evidence_event_ids=["m1"], explanation=f"{kind}: register went back 5 Wh",
        detector=f"rule:{kind}",
    )  # fmt: skip
    return alert_id.encode(), encode(a)


def result(outcome: str, revision: int) -> tuple[bytes, bytes]:
    r = ReconciliationResult(
        event_id=f"r{revision}", event_time=T, source="billing", result_id="res-9",
        session_id="S9", outcome=outcome, currency="EUR", expected_minor=1200,
        captured_minor=2400 if outcome != "matched" else 1200,
        delta_minor=1200 if outcome != "matched" else 0, revision=revision,
    )  # fmt: skip
    return b"S9", encode(r)


def config(port: int) -> alerts.RouterConfig:
    base = f"http://127.0.0.1:{port}"
    return alerts.parse_config(f"""
session_url: "https://ops.example/sessions/{{session_id}}"
destinations:
  pager: {{type: pagerduty, routing_key: RK, url: "{base}/pd", rate_per_s: 20, burst: 2}}
  chat: {{type: slack, url: "{base}/slack"}}
  dead: {{type: slack, url: "{base}/broken"}}
routes:
  - {{severity: [critical, error], to: pager}}
  - {{severity: [warning], to: chat}}
  - {{kind: [doomed], to: dead}}
mismatch_severity: {{duplicate_capture: error}}
""")


def run_router(bootstrap: str, cfg: alerts.RouterConfig) -> float:
    settings = Settings.from_env(
        {}, bootstrap_servers=bootstrap, instance_id="it", router_max_attempts=4,
        router_backoff_base_s=0.1, router_backoff_max_s=0.4, router_delivery_deadline_s=10.0,
    )  # fmt: skip
    loop = RouterLoop(settings, config=cfg)
    started = time.monotonic()
    thread = threading.Thread(target=loop.run, kwargs={"max_idle_s": 3.0})
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    loop.stage.sender.close()
    return time.monotonic() - started


def test_router_delivers_retries_and_never_pages_twice(private_kafka: str, receiver) -> None:
    create_topics(AdminClient({"bootstrap.servers": private_kafka}))
    cfg = config(receiver.port)
    produce_all(private_kafka, "fraud_alerts", [
        alert("A-crit", "meter_backwards", "critical", "e1"),
        alert("A-warn", "token_overlap", "warning", "e2"),
        alert("A-doom", "doomed", "info", "e3"),
    ])  # fmt: skip
    produce_all(private_kafka, "reconciliation_mismatches", [result("duplicate_capture", 1)])
    run_router(private_kafka, cfg)

    assert receiver.problems == []
    pd = receiver.delivered("/pd")
    assert sorted((b["dedup_key"], b["event_action"]) for b in pd) == [
        ("A-crit", "trigger"), ("res-9", "trigger")]  # fmt: skip
    crit = next(b for b in pd if b["dedup_key"] == "A-crit")
    assert crit["routing_key"] == "RK" and crit["payload"]["severity"] == "critical"
    assert crit["links"][0]["href"] == "https://ops.example/sessions/S-A-crit"
    # The first two PagerDuty answers were 429 and 500: retried, after Retry-After (0.3 s).
    statuses = [s for _, s, _ in receiver.seen["/pd"]]
    assert statuses[:2] == [429, 500] and statuses.count(202) == 2
    times = [t for t, _, _ in receiver.seen["/pd"]]
    assert times[1] - times[0] >= 0.3
    slack = receiver.delivered("/slack")
    assert len(slack) == 1 and slack[0]["blocks"][0]["type"] == "header"
    assert "token_overlap" in slack[0]["text"]
    # The broken destination: bounded attempts, then failed and dead-lettered.
    assert [s for _, s, _ in receiver.seen["/broken"]] == [503] * 4
    letters = [decode(v, DeadLetter) for v in read_all(private_kafka, "dead_letters", expect=1)]
    assert [(x.stage, x.error_type) for x in letters] == [("router", "DeliveryFailed")]
    assert "A-doom|dead|trigger" in letters[0].reason

    # Restart: a new router (nothing in memory) gets the same alerts again (a replay or a
    # redelivery publishes the same ids) and the correction back to matched, twice.
    produce_all(private_kafka, "fraud_alerts", [
        alert("A-crit", "meter_backwards", "critical", "e1-again"),
        alert("A-warn", "token_overlap", "warning", "e2-again"),
        alert("A-doom", "doomed", "info", "e3-again"),
    ])  # fmt: skip
    produce_all(private_kafka, "reconciliation_mismatches", [result("matched", 2)])
    produce_all(private_kafka, "reconciliation_mismatches", [result("matched", 3)])
    run_router(private_kafka, cfg)

    assert receiver.problems == []
    pd = receiver.delivered("/pd")
    assert sorted((b["dedup_key"], b["event_action"]) for b in pd) == [
        ("A-crit", "trigger"), ("res-9", "resolve"), ("res-9", "trigger")]  # fmt: skip
    assert len(receiver.delivered("/slack")) == 1
    assert len(receiver.seen["/broken"]) == 4  # a failed delivery is not retried either
    records = read_all(private_kafka, "alert_deliveries")
    assert len(records) >= 4
