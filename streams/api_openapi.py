"""The operator API's OpenAPI 3.1 document, served at ``GET /openapi.json``.

The response and body schemas are generated from the msgspec types the handlers encode and
decode (:mod:`topics.operator_view`, :mod:`topics.records`), and the parameters' limits
from the same constants the parsers check, so the document cannot drift from the code;
``tests/unit/test_api_schemathesis.py`` fuzzes a live server against it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from topics.operator_view import (
    CURRENCY_PATTERN,
    CURSOR_PATTERN,
    DEFAULT_LIMIT,
    LABELS,
    MAX_LIMIT,
    SEVERITIES,
    AlertPage,
    ErrorBody,
    Health,
    LabelRequest,
    SessionPicture,
    Summary,
)
from topics.records import AlertLabel

__all__ = ["openapi_document"]

VERSION = "1.0.0"


def _any(t: Any) -> dict[str, Any]:
    if t is object:
        return {"description": "any JSON value"}
    raise NotImplementedError(t)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _error(description: str) -> dict[str, Any]:
    return _json("ErrorBody", description)


UNAUTHORIZED = {
    **_error("Missing or wrong bearer token."),
    "headers": {
        "WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`"},
    },
}


def _text_param(name: str, where: str, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": 256, **extra},
    }


@cache
def _document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [SessionPicture, AlertPage, Summary, LabelRequest, AlertLabel, ErrorBody, Health],
        ref_template="#/components/schemas/{name}",
        schema_hook=_any,
    )
    alert_params = [
        _text_param("kind", "query", "Alert kind, exactly (e.g. `card_testing`)."),
        {
            "name": "severity",
            "in": "query",
            "description": "Alert severity.",
            "schema": {"type": "string", "enum": list(SEVERITIES)},
        },
        _text_param("station", "query", "Station id, exactly."),
        _text_param("session", "query", "Session id the alert is about, exactly."),
        {
            "name": "since",
            "in": "query",
            "description": "Alerts whose event time is at or after this instant (RFC 3339).",
            "schema": {"type": "string", "format": "date-time"},
        },
        {
            "name": "until",
            "in": "query",
            "description": "Alerts whose event time is before this instant (RFC 3339).",
            "schema": {"type": "string", "format": "date-time"},
        },
        {
            "name": "labelled",
            "in": "query",
            "description": "Only alerts an analyst labelled (true) or did not (false).",
            "schema": {"type": "boolean"},
        },
        {
            "name": "label",
            "in": "query",
            "description": "Only alerts whose current label is this one.",
            "schema": {"type": "string", "enum": list(LABELS)},
        },
        {
            "name": "limit",
            "in": "query",
            "description": "Page size.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT,
            },
        },
        {
            "name": "cursor",
            "in": "query",
            "description": "`next_cursor` of the previous page, as is. Pages are keyset pages "
            "(event time, then arrival): an alert arriving meanwhile never shifts a page, and "
            "one older than the cursor is not shown on later pages.",
            "schema": {"type": "string", "pattern": CURSOR_PATTERN},
        },
    ]
    summary_params = [
        {
            "name": "from",
            "in": "query",
            "description": "First UTC day, inclusive (default: 29 days before `to`). A case "
            "counts on the day of its first verdict's event time.",
            "schema": {"type": "string", "format": "date"},
        },
        {
            "name": "to",
            "in": "query",
            "description": "Last UTC day, inclusive (default: today, UTC).",
            "schema": {"type": "string", "format": "date"},
        },
        {
            "name": "currency",
            "in": "query",
            "description": "Only this ISO 4217 currency.",
            "schema": {"type": "string", "pattern": CURRENCY_PATTERN},
        },
    ]
    bad = _error("A parameter or the body is invalid; `detail` names it and says why.")
    public: list[dict[str, list[str]]] = []
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "voltguard operator API",
            "version": VERSION,
            "description": "Sessions, alerts and reconciliation as voltguard's topics tell "
            "them, for billing analysts and on-call engineers. The view follows the topics, "
            "so it may be a few hundred milliseconds behind them. Money is integer minor "
            "units with an ISO 4217 currency; rates and volumes are decimal strings.",
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/v1/sessions/{session_id}": {
                "get": {
                    "operationId": "getSession",
                    "summary": "A session's full picture",
                    "description": "Session events, payments, the bill with its lines (and "
                    "earlier publications), every reconciliation revision, the alerts about the "
                    "session with their labels, and the alert router's deliveries.",
                    "parameters": [_text_param("session_id", "path", "Session id.")],
                    "responses": {
                        "200": _json("SessionPicture", "What the view knows of the session."),
                        "400": bad,
                        "401": UNAUTHORIZED,
                        "404": _error("The view knows nothing about this session."),
                    },
                }
            },
            "/v1/alerts": {
                "get": {
                    "operationId": "listAlerts",
                    "summary": "Alerts, filtered, newest first",
                    "parameters": alert_params,
                    "responses": {
                        "200": _json("AlertPage", "One page of alerts."),
                        "400": bad,
                        "401": UNAUTHORIZED,
                    },
                }
            },
            "/v1/alerts/{alert_id}/labels": {
                "post": {
                    "operationId": "labelAlert",
                    "summary": "Label an alert (fraud, legitimate, unsure)",
                    "description": "Writes an AlertLabel to `voltguard.alert.labels.v1` (key: "
                    "the alert id) and answers once Kafka acknowledged it. Retraining reads "
                    "that topic: fraud and legitimate labels become training labels of the "
                    "alert's session. The latest label of an alert is its label.",
                    "parameters": [_text_param("alert_id", "path", "Alert id.")],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("LabelRequest")}},
                    },
                    "responses": {
                        "201": _json("AlertLabel", "The label as written to the topic."),
                        "400": bad,
                        "401": UNAUTHORIZED,
                        "404": _error("No alert with this id in the view."),
                        "413": _error("The body is larger than 64 KiB."),
                        "503": _error("Kafka did not acknowledge the label; retry."),
                    },
                }
            },
            "/v1/reconciliation/summary": {
                "get": {
                    "operationId": "reconciliationSummary",
                    "summary": "Reconciliation by UTC day and currency",
                    "description": "Per day and currency, the cases by their latest verdict: "
                    "counts by outcome, billed (expected), authorized, captured and refunded "
                    "amounts, leakage (undercharged and missing payment) and unreconciled "
                    "amounts (every verdict other than matched), in minor units. Days without "
                    "cases are left out.",
                    "parameters": summary_params,
                    "responses": {
                        "200": _json("Summary", "The totals."),
                        "400": bad,
                        "401": UNAUTHORIZED,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and view sizes (no token)",
                    "security": public,
                    "responses": {"200": _json("Health", "The process is serving.")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "200 once the view caught up with the topics (no token)",
                    "security": public,
                    "responses": {
                        "200": _json("Health", "The view is caught up with start-up."),
                        "503": _json("Health", "Still reading, or the follower failed."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (no token)",
                    "security": public,
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document (no token)",
                    "security": public,
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token of VOLTGUARD_API_TOKEN.",
                }
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document (a fresh deep copy: callers may change theirs)."""
    return msgspec.json.decode(msgspec.json.encode(_document()))
