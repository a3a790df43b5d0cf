"""The operator API against the real broker.

Records go to the real topics; ``voltguard api``'s :func:`serve` follows them into its
SQLite view and answers over loopback HTTP. Checked: the session picture, alert filters and
pages, the reconciliation summary against what was produced, a label posted through the
API landing on the labels topic (and read by retraining's Kafka input), a broken record
dead-lettered, and a restart resuming from the positions stored with the view.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import date, timedelta
from typing import Any

import aiohttp
import msgspec
import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from streams.admin import create_topics
from streams.api_store import ViewStore
from streams.commands.api import serve
from streams.localkafka import find_free_port
from streams.retrain import read_kafka_inputs
from streams.settings import Secret, Settings
from tests.api_data import ALERTS, T0, TOKEN, messages
from tests.integration.helpers import produce_all, read_all
from topics.codec import decode, encode
from topics.records import AlertLabel, DeadLetter

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _produce(bootstrap: str, msgs: list[tuple[str, bytes | None, bytes | None]]) -> None:
    by_topic: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
    for short, key, value in msgs:
        by_topic.setdefault(short, []).append((key, value))
    for short, values in by_topic.items():
        produce_all(bootstrap, short, values)


async def _until_ready(http: aiohttp.ClientSession, base: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with http.get(base + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the API's view did not catch up")


async def _eventually(
    http: aiohttp.ClientSession, url: str, check: Any, timeout_s: float = 30, **kw: Any
) -> Any:
    """GET ``url`` until ``check(status, body)`` holds (the follower applies asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(url, headers=AUTH, **kw) as resp:
            status, body = resp.status, await resp.json()
        if check(status, body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: {status} {body}")
        await asyncio.sleep(0.2)


def test_api_serves_the_topics_and_writes_labels(
    kafka_bootstrap: str, kafka_admin: AdminClient, tmp_path: Any
) -> None:
    create_topics(kafka_admin)
    run = f"api-{uuid.uuid4().hex[:10]}-"
    # a day of the 1980s and test currencies no other test writes: the summary is ours alone
    shift = timedelta(days=-random.randint(12_000, 14_000))
    currencies = {"EUR": "XTS", "GBP": "XBA"}
    day0 = (T0 + shift).date().isoformat()
    _produce(kafka_bootstrap, messages(run, shift, currencies))
    poison_key = f"{run}poison".encode()
    produce_all(kafka_bootstrap, "fraud_alerts", [(poison_key, b'{"alert_id": 7}')])

    db = str(tmp_path / "api-view.sqlite3")
    port = find_free_port()
    settings = Settings.from_env(
        {},
        bootstrap_servers=kafka_bootstrap,
        api_token=Secret(TOKEN),
        api_addr="127.0.0.1",
        api_port=port,
        api_db=db,
        instance_id=f"test-{run}",
    )
    base = f"http://127.0.0.1:{port}"

    async def first_run() -> dict[str, Any]:
        ready = asyncio.Event()
        server = asyncio.create_task(serve(settings, ready=ready))
        await asyncio.wait_for(ready.wait(), 30)
        out: dict[str, Any] = {}
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/v1/alerts") as resp:
                    assert resp.status == 401
                await _until_ready(http, base)
                out["session"] = await _eventually(
                    http, f"{base}/v1/sessions/{run}s1", lambda s, b: s == 200
                )
                pages, cursor = [], None
                while True:
                    params = {"station": f"{run}CP2", "limit": "1"}
                    if cursor:
                        params["cursor"] = cursor
                    async with http.get(base + "/v1/alerts", params=params, headers=AUTH) as resp:
                        assert resp.status == 200
                        page = await resp.json()
                    pages.append([v["alert"]["alert_id"] for v in page["items"]])
                    if (cursor := page["next_cursor"]) is None:
                        break
                out["pages"] = pages
                async with http.get(
                    base + "/v1/alerts",
                    params={"session": f"{run}s1", "label": "fraud"},
                    headers=AUTH,
                ) as resp:
                    out["labelled"] = await resp.json()
                async with http.get(
                    base + "/v1/reconciliation/summary",
                    params={"from": day0, "to": day0, "currency": "XTS"},
                    headers=AUTH,
                ) as resp:
                    out["summary"] = await resp.json()
                async with http.get(
                    base + "/v1/reconciliation/summary",
                    params={"from": day0, "to": next_day(day0)},
                    headers=AUTH,
                ) as resp:
                    out["summary_all"] = await resp.json()
                async with http.post(
                    f"{base}/v1/alerts/{run}alert-03/labels",
                    json={"label": "fraud", "comment": "confirmed by CPO", "analyst": "ann"},
                    headers=AUTH,
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    out["posted"] = await resp.json()
                async with http.post(
                    f"{base}/v1/alerts/{run}unknown/labels", json={"label": "fraud"}, headers=AUTH
                ) as resp:
                    assert resp.status == 404
        finally:
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server
        return out

    out = asyncio.run(first_run())

    picture = out["session"]
    assert [e["kind"] for e in picture["events"]] == ["started", "ended"]
    assert [p["amount_minor"] for p in picture["payments"]] == [300]
    assert picture["bill"]["total_minor"] == 500 and len(picture["bill_revisions"]) == 2
    (case,) = picture["reconciliation"]
    assert [r["revision"] for r in case["revisions"]] == [0, 1]
    assert case["result"]["outcome"] == "undercharged" and case["result"]["currency"] == "XTS"
    (alert,) = picture["alerts"]
    assert alert["alert"]["alert_id"] == f"{run}alert-00"
    assert alert["label"]["label"] == "fraud"
    assert alert["deliveries"] == [
        {"destination": "pager", "action": "trigger", "status": "delivered", "attempts": 1,
         "at": "2024-05-06T10:32:00Z"}
    ]  # fmt: skip
    # two alerts of the same event time, one a page: their order is their arrival (partitions
    # interleave), but the pages hold each exactly once
    assert [len(p) for p in out["pages"]] == [1, 1]
    assert sorted(a for p in out["pages"] for a in p) == [f"{run}alert-01", f"{run}alert-02"]
    assert [v["alert"]["alert_id"] for v in out["labelled"]["items"]] == [f"{run}alert-00"]

    # the summary, against what was produced: s1 undercharged (500 billed, 300 captured),
    # s2 matched (400/400) on day 0 in XTS; s3 overcharged (600 billed, 700 captured) in XBA
    (xts,) = out["summary"]["days"]
    assert (xts["day"], xts["currency"], xts["cases"]) == (day0, "XTS", 2)
    assert xts["outcomes"] == {"matched": 1, "undercharged": 1}
    assert (xts["billed_minor"], xts["captured_minor"], xts["refunded_minor"]) == (900, 700, 0)
    assert (xts["leakage_minor"], xts["unreconciled_minor"]) == (200, 200)
    ours = [d for d in out["summary_all"]["days"] if d["currency"] in ("XTS", "XBA")]
    assert [(d["day"], d["currency"], d["cases"]) for d in ours] == [
        (day0, "XTS", 2),
        (next_day(day0), "XBA", 1),
    ]
    assert (ours[1]["billed_minor"], ours[1]["unreconciled_minor"]) == (600, 100)

    # the label is on the topic, and retraining reads it as the alert session's label
    posted = msgspec.convert(out["posted"], AlertLabel)
    on_topic = [
        decode(v, AlertLabel)
        for v in read_all(
            kafka_bootstrap, "alert_labels", keep=lambda v: posted.event_id.encode() in v, expect=1
        )
    ]
    assert on_topic == [posted]
    assert (posted.label, posted.analyst, posted.comment) == ("fraud", "ann", "confirmed by CPO")
    inputs = read_kafka_inputs(settings, timeout_s=60)
    assert inputs.alert_labels[f"{run}alert-03"] == posted
    assert inputs.labels()[f"{run}s2"] == 1

    # the broken alert is dead-lettered by the API, with its bytes and the reason
    letters = [
        decode(v, DeadLetter)
        for v in read_all(
            kafka_bootstrap, "dead_letters", keep=lambda v: b'"stage":"api"' in v and
            encode(poison_key)[1:-1] in v, expect=1,
        )
    ]  # fmt: skip
    assert len(letters) == 1
    assert letters[0].original_key == poison_key
    assert letters[0].original_value == b'{"alert_id": 7}'
    assert "FraudAlert" in letters[0].reason

    # a restart resumes from the stored positions: the new alert comes, nothing twice
    stored = ViewStore(db)
    positions_before = stored.positions()
    alerts_before = stored.counts()["alerts"]
    stored.close()
    late = msgspec.structs.replace(
        ALERTS[1], alert_id=f"{run}alert-late", event_id=f"{run}late",
        station_id=f"{run}CP2", event_time=ALERTS[1].event_time + shift,
    )  # fmt: skip
    produce_all(kafka_bootstrap, "fraud_alerts", [(late.alert_id.encode(), encode(late))])

    async def second_run() -> dict[str, Any]:
        ready = asyncio.Event()
        server = asyncio.create_task(serve(settings, ready=ready))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            async with aiohttp.ClientSession() as http:
                await _until_ready(http, base)
                return await _eventually(
                    http,
                    f"{base}/v1/alerts",
                    lambda s, b: s == 200 and len(b["items"]) == 3,
                    params={"station": f"{run}CP2"},
                )
        finally:
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server

    consumed_before = _consumed()
    page = asyncio.run(second_run())
    # the second run read only what was produced after the first one stopped: the late alert
    assert _consumed() - consumed_before == 1
    assert sorted(v["alert"]["alert_id"] for v in page["items"]) == [
        f"{run}alert-01",
        f"{run}alert-02",
        f"{run}alert-late",
    ]
    stored = ViewStore(db)
    try:
        after = stored.positions()
        assert all(after[tp] >= offset for tp, offset in positions_before.items())
        assert stored.counts()["alerts"] == alerts_before + 1
        # the posted label, applied at once and again by the follower, is there once
        s2 = stored.session(f"{run}s2")
        assert s2 is not None and s2.alerts[0].labels == [posted]
    finally:
        stored.close()


def _consumed() -> float:
    """Records the API's followers consumed in this process (every topic and outcome)."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "voltguard_api_view_records":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()
