"""The operator API (aiohttp): sessions, alerts, labels and reconciliation, for people.

Served by ``voltguard api`` (:mod:`streams.commands.api`). The OpenAPI 3.1 document is
``GET /openapi.json`` (:mod:`streams.api_openapi`); in short:

``GET /v1/sessions/{session_id}``
    The session's events, payments, bill with lines, reconciliation revisions, alerts with
    labels and deliveries.
``GET /v1/alerts?kind=&severity=&station=&session=&since=&until=&labelled=&label=&limit=&cursor=``
    Newest first, keyset pagination (``next_cursor``).
``POST /v1/alerts/{alert_id}/labels``
    ``{"label": "fraud"|"legitimate"|"unsure", "comment"?, "analyst"?}``: an
    :class:`~topics.records.AlertLabel` to the labels topic, 201 once Kafka acknowledged it.
``GET /v1/reconciliation/summary?from=&to=&currency=``
    Per UTC day and currency: cases by outcome and the amounts, minor units.
``GET /healthz``, ``GET /readyz``, ``GET /metrics``, ``GET /openapi.json``
    No token.

Every ``/v1`` request needs ``Authorization: Bearer <token>``, compared in constant time
(``hmac.compare_digest``); the token is never logged. Statuses: 400 with the parameter and
the problem for a bad parameter or body, 401 without or with a wrong token, 404 for an id
the view does not know, 503 when Kafka did not acknowledge a label. Every error body is
``{"error", "detail"}`` JSON, including aiohttp's own 404 and 405; an unexpected exception
is logged and answered 500 (the schemathesis test checks that none happens).

The data come from the materialised view (:mod:`streams.api_store`) that
:mod:`streams.api_follower` keeps up to date from the topics. A label is applied to the view
as soon as Kafka acknowledged it, so the analyst who posted it sees it at once.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

from streams.api_openapi import openapi_document
from streams.api_store import ViewStore
from topics.catalog import topic
from topics.codec import encode
from topics.operator_view import (
    BadRequest,
    ErrorBody,
    Health,
    LabelRow,
    Summary,
    parse_alert_query,
    parse_label_request,
    parse_summary_query,
    summarise,
)
from topics.records import AlertLabel

__all__ = ["API_REQUESTS", "KafkaLabelWriter", "LabelWriter", "make_app"]

log = logging.getLogger(__name__)

API_REQUESTS = Counter(
    "voltguard_api_requests_total",
    "Operator API requests by route (the pattern, not the path) and status.",
    ["route", "status"],
)

MAX_BODY_BYTES = 64 * 1024
LABEL_SOURCE = "operator-api"


class LabelWriter(Protocol):
    """Where labels go: produce one and return once it is acknowledged (or raise)."""

    async def write(self, label: AlertLabel) -> None: ...


class KafkaLabelWriter:
    """:class:`LabelWriter` on the labels topic (key: alert id), through the ingress's
    idempotent ``acks=all`` producer (:class:`streams.ingress.KafkaDelivery`)."""

    def __init__(self, delivery: Any) -> None:
        self.delivery = delivery
        self.topic = topic("alert_labels")

    async def write(self, label: AlertLabel) -> None:
        await self.delivery.send_many([(self.topic, label.alert_id.encode(), encode(label))])


def _reply(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=encode(body), content_type="application/json", headers=headers
    )


def _error(status: int, error: str, detail: str = "", **headers: str) -> web.Response:
    return _reply(status, ErrorBody(error=error, detail=detail), headers or None)


class _Api:
    def __init__(
        self,
        store: ViewStore,
        writer: LabelWriter,
        token: str,
        health: Callable[[], Health],
        clock: Callable[[], float],
    ) -> None:
        if not token:
            raise ValueError("the operator API needs a token")
        self.store = store
        self.writer = writer
        self._token = token.encode()
        self.health_of = health
        self.clock = clock
        self.document = encode(openapi_document())

    # ------------------------------------------------------------------ middlewares

    @web.middleware
    async def errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own 404, 405, 413: JSON like ours
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
            response = _error(
                exc.status, exc.reason.lower().replace(" ", "_"), exc.text or "", **headers
            )
        except Exception:
            log.exception("operator API: %s %s failed", request.method, name)
            response = _error(500, "internal", "unexpected error; it is logged")
        API_REQUESTS.labels(route=name, status=str(response.status)).inc()
        return response

    @web.middleware
    async def auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/v1/") or request.path == "/v1":
            given = request.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            ok = hmac.compare_digest(token.strip().encode("utf-8", "replace"), self._token)
            if scheme.lower() != "bearer" or not ok:
                return _error(
                    401,
                    "unauthorized",
                    "send Authorization: Bearer <token>",
                    **{"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    # ------------------------------------------------------------------ handlers

    @staticmethod
    def _query(request: web.Request) -> dict[str, str]:
        query = request.query
        if len(set(query.keys())) != len(query):
            repeated = next(k for k in query if len(query.getall(k)) > 1)
            raise BadRequest(repeated, "given more than once")
        return dict(query)

    @staticmethod
    def _id(request: web.Request, name: str) -> str:
        value = request.match_info[name]
        if not 1 <= len(value) <= 256:
            raise BadRequest(name, "must be 1 to 256 characters")
        return value

    async def session(self, request: web.Request) -> web.Response:
        try:
            session_id = self._id(request, "session_id")
        except BadRequest as exc:
            return _error(400, "bad_request", str(exc))
        picture = self.store.session(session_id)
        if picture is None:
            return _error(404, "not_found", f"no session {session_id!r} in the view")
        return _reply(200, picture)

    async def alerts(self, request: web.Request) -> web.Response:
        try:
            query = parse_alert_query(self._query(request))
        except BadRequest as exc:
            return _error(400, "bad_request", str(exc))
        return _reply(200, self.store.alerts(query))

    async def label(self, request: web.Request) -> web.Response:
        try:
            alert_id = self._id(request, "alert_id")
            body = parse_label_request(await request.read())
        except BadRequest as exc:
            return _error(400, "bad_request", str(exc))
        if not self.store.alert_exists(alert_id):
            return _error(404, "not_found", f"no alert {alert_id!r} in the view")
        label = AlertLabel(
            event_id=f"label-{uuid.uuid4().hex}",
            event_time=datetime.fromtimestamp(self.clock(), UTC),
            source=LABEL_SOURCE,
            alert_id=alert_id,
            label=body.label,
            analyst=body.analyst,
            comment=body.comment,
        )
        try:
            await self.writer.write(label)
        except Exception as exc:  # Kafka did not acknowledge: nothing changed, retry
            log.error("label on alert %s not acknowledged by Kafka: %s", alert_id, exc)
            return _error(503, "kafka_unavailable", "the label was not written; retry")
        self.store.apply([LabelRow(label)], {})
        log.info("alert %s labelled %s by %s", alert_id, label.label, label.analyst)
        return _reply(201, label)

    async def summary(self, request: web.Request) -> web.Response:
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        try:
            q = parse_summary_query(self._query(request), today=today)
        except BadRequest as exc:
            return _error(400, "bad_request", str(exc))
        days = summarise(self.store.cases(q)) if q.first <= q.last else []
        return _reply(
            200,
            Summary(
                from_=q.first.isoformat(), to=q.last.isoformat(), currency=q.currency, days=days
            ),
        )

    async def healthz(self, _request: web.Request) -> web.Response:
        return _reply(200, self.health_of())

    async def readyz(self, _request: web.Request) -> web.Response:
        health = self.health_of()
        return _reply(200 if health.status == "ok" and health.caught_up else 503, health)

    async def metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.document, content_type="application/json")


def make_app(
    store: ViewStore,
    writer: LabelWriter,
    *,
    token: str,
    health: Callable[[], Health],
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The operator API application (routes above). ``health`` reports the follower."""
    api = _Api(store, writer, token, health, clock)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[api.errors, api.auth])
    app.router.add_get("/v1/sessions/{session_id}", api.session)
    app.router.add_get("/v1/alerts", api.alerts)
    app.router.add_post("/v1/alerts/{alert_id}/labels", api.label)
    app.router.add_get("/v1/reconciliation/summary", api.summary)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/openapi.json", api.openapi)
    return app
