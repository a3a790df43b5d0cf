"""The operator API's aiohttp app over a seeded view, with a recording label writer.

The writer here stands in for the labels topic on purpose: this test is about HTTP (routes,
auth, statuses, bodies). ``tests/integration/test_api_kafka.py`` posts a label through the
real producer to the real broker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.api import make_app
from streams.api_openapi import openapi_document
from tests.api_data import TOKEN, seeded_store
from topics.operator_view import AlertPage, Health, SessionPicture, Summary
from topics.records import AlertLabel

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_800_000_000.0  # 2027-01-15, UTC


class Recorder:
    def __init__(self) -> None:
        self.labels: list[AlertLabel] = []
        self.fail = False

    async def write(self, label: AlertLabel) -> None:
        if self.fail:
            raise RuntimeError("broker down")
        self.labels.append(label)


def _health() -> Health:
    return Health(status="ok", caught_up=True, lag={}, counts={})


async def _client(recorder: Recorder) -> TestClient:
    app = make_app(seeded_store(), recorder, token=TOKEN, health=_health, clock=lambda: NOW)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _get(client: TestClient, path: str, **kw: Any) -> tuple[int, Any]:
    resp = await client.get(path, **kw)
    return resp.status, await resp.json() if resp.content_type == "application/json" else None


def test_every_v1_route_needs_the_token(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        client = await _client(Recorder())
        try:
            with caplog.at_level(logging.DEBUG):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                    for path in ("/v1/sessions/s1", "/v1/alerts", "/v1/reconciliation/summary"):
                        resp = await client.get(path, headers=headers)
                        assert resp.status == 401, (path, headers)
                        assert resp.headers["WWW-Authenticate"] == "Bearer"
                        assert (await resp.json())["error"] == "unauthorized"
                    resp = await client.post(
                        "/v1/alerts/alert-00/labels", json={"label": "fraud"}, headers=headers
                    )
                    assert resp.status == 401
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                assert (await client.get(path)).status == 200, path
        finally:
            await client.close()

    run(go())
    assert TOKEN not in caplog.text


def test_session_picture() -> None:
    async def go() -> None:
        client = await _client(Recorder())
        try:
            status, body = await _get(client, "/v1/sessions/s1", headers=AUTH)
            assert status == 200
            picture = msgspec.convert(body, SessionPicture)
            assert picture.bill is not None and picture.bill.total_minor == 500
            assert body["bill"]["lines"][0]["unit_price"] == "0.40"  # decimals as strings
            assert body["reconciliation"][0]["result"]["delta_minor"] == -200
            assert isinstance(body["reconciliation"][0]["result"]["delta_minor"], int)
            assert body["alerts"][0]["label"]["label"] == "fraud"
            status, body = await _get(client, "/v1/sessions/nobody", headers=AUTH)
            assert (status, body["error"]) == (404, "not_found")
            status, body = await _get(client, "/v1/sessions/" + "x" * 300, headers=AUTH)
            assert status == 400 and "session_id" in body["detail"]
        finally:
            await client.close()

    run(go())


def test_alert_list_filters_and_pages() -> None:
    async def go() -> None:
        client = await _client(Recorder())
        try:
            seen, cursor = [], None
            while True:
                params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
                status, body = await _get(client, "/v1/alerts", params=params, headers=AUTH)
                assert status == 200
                page = msgspec.convert(body, AlertPage)
                seen += [v.alert.alert_id for v in page.items]
                if (cursor := page.next_cursor) is None:
                    break
            assert seen == ["alert-04", "alert-03", "alert-02", "alert-01", "alert-00"]
            status, body = await _get(
                client,
                "/v1/alerts",
                params={"severity": "critical", "labelled": "false"},
                headers=AUTH,
            )
            assert [v["alert"]["alert_id"] for v in body["items"]] == ["alert-04"]
            for bad in (
                {"limit": "0"},
                {"severity": "loud"},
                {"since": "noon"},
                {"x": "1"},
                {"cursor": "zzz"},
            ):
                status, body = await _get(client, "/v1/alerts", params=bad, headers=AUTH)
                assert status == 400 and body["detail"].startswith(next(iter(bad))), bad
            status, body = await _get(client, "/v1/alerts?kind=a&kind=b", headers=AUTH)
            assert status == 400 and "more than once" in body["detail"]
        finally:
            await client.close()

    run(go())


def test_label_goes_to_the_writer_and_the_view_at_once() -> None:
    async def go() -> None:
        recorder = Recorder()
        client = await _client(recorder)
        try:
            resp = await client.post(
                "/v1/alerts/alert-03/labels",
                json={"label": "legitimate", "comment": "regular fleet car", "analyst": "bo"},
                headers=AUTH,
            )
            assert resp.status == 201
            written = msgspec.convert(await resp.json(), AlertLabel)
            assert recorder.labels == [written]
            assert (written.alert_id, written.label, written.analyst) == (
                "alert-03",
                "legitimate",
                "bo",
            )
            assert written.source == "operator-api" and written.event_time.timestamp() == NOW
            _, body = await _get(client, "/v1/alerts", params={"label": "legitimate"}, headers=AUTH)
            assert [v["alert"]["alert_id"] for v in body["items"]] == ["alert-03"]
            for payload, status in (
                ({"label": "maybe"}, 400),
                ({"label": "fraud", "note": "x"}, 400),
                ({"label": "fraud"}, 201),
            ):
                resp = await client.post("/v1/alerts/alert-01/labels", json=payload, headers=AUTH)
                assert resp.status == status, payload
            resp = await client.post(
                "/v1/alerts/nope/labels", json={"label": "fraud"}, headers=AUTH
            )
            assert resp.status == 404
            resp = await client.post("/v1/alerts/alert-01/labels", data=b"x" * 70_000, headers=AUTH)
            assert resp.status == 413 and (await resp.json())["error"]
            recorder.fail = True
            resp = await client.post(
                "/v1/alerts/alert-02/labels", json={"label": "fraud"}, headers=AUTH
            )
            assert resp.status == 503
            _, body = await _get(client, "/v1/alerts", params={"labelled": "true"}, headers=AUTH)
            assert "alert-02" not in [v["alert"]["alert_id"] for v in body["items"]]
            assert len(recorder.labels) == 2
        finally:
            await client.close()

    run(go())


def test_summary_by_day_and_currency() -> None:
    async def go() -> None:
        client = await _client(Recorder())
        try:
            status, body = await _get(
                client,
                "/v1/reconciliation/summary",
                params={"from": "2024-05-01", "to": "2024-05-31"},
                headers=AUTH,
            )
            assert status == 200
            summary = msgspec.convert(body, Summary)
            assert body["from"] == "2024-05-01"
            assert [(d.day, d.currency, d.cases) for d in summary.days] == [
                ("2024-05-06", "EUR", 2),
                ("2024-05-07", "GBP", 1),
            ]
            assert (summary.days[0].leakage_minor, summary.days[1].unreconciled_minor) == (200, 100)
            _, body = await _get(client, "/v1/reconciliation/summary", headers=AUTH)
            assert (body["from"], body["to"], body["days"]) == ("2026-12-17", "2027-01-15", [])
            _, body = await _get(
                client,
                "/v1/reconciliation/summary",
                params={"from": "2024-06-01", "to": "2024-05-01"},
                headers=AUTH,
            )
            assert body["days"] == []
            status, body = await _get(
                client, "/v1/reconciliation/summary", params={"currency": "euro"}, headers=AUTH
            )
            assert status == 400 and body["detail"].startswith("currency")
        finally:
            await client.close()

    run(go())


def test_unknown_routes_and_methods_answer_json() -> None:
    async def go() -> None:
        client = await _client(Recorder())
        try:
            resp = await client.get("/nowhere")
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
            resp = await client.delete("/v1/alerts", headers=AUTH)
            assert resp.status == 405 and "GET" in resp.headers["Allow"]
        finally:
            await client.close()

    run(go())


def test_document_describes_the_routes_the_app_serves() -> None:
    document = openapi_document()
    app = make_app(seeded_store(), Recorder(), token=TOKEN, health=_health)
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert served == documented
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        make_app(seeded_store(), Recorder(), token="", health=_health)
