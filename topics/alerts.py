"""Alert routing and the outgoing wire formats: PagerDuty Events API v2 and Slack webhooks.

Pure: no network, no clock, no environment (``tests/unit/test_layering.py`` checks it). The
router stage (``streams/router.py``) decodes fraud alerts and reconciliation mismatches
into :class:`Notice`, asks :meth:`RouterConfig.route` where each goes, builds the request
bodies here, and sends them.

Config (YAML or JSON, :func:`parse_config`)::

    session_url: "https://ops.example.com/sessions/{session_id}"   # optional
    destinations:
      oncall: {type: pagerduty, routing_key: "R0UTINGKEY...", rate_per_s: 2, burst: 5}
      fraud-channel: {type: slack, url_env: SLACK_FRAUD_WEBHOOK_URL}
    routes:             # every matching route delivers (a destination at most once)
      - {severity: [critical, error], to: [oncall]}
      - {severity: [warning], kind: [token_overlap], stations: ["DE-BER-"], to: [fraud-channel]}
    mismatch_severity: {duplicate_capture: error}   # outcome -> severity (default warning)

A route matches when each of its given criteria holds: ``kind`` (list), ``severity``
(list), ``source`` (``fraud`` or ``reconciliation``) and ``stations`` (station id prefixes,
or exact ids; a notice without a station matches no ``stations`` route).

Routing keys and webhook URLs are secrets. Instead of writing them in the file, name the
environment variable that holds them: ``routing_key_env`` for ``routing_key`` and ``url_env``
for ``url``; :func:`parse_config` reads them from the ``env`` mapping it is given (the router
passes ``os.environ``), so the file can be kept in version control.

Examples
--------
>>> cfg = parse_config('''
... destinations: {pd: {type: pagerduty, routing_key: k}, sl: {type: slack, url: "http://h/x"}}
... routes: [{severity: [critical], to: [pd]}, {severity: [warning, critical], to: [sl]}]
... ''')
>>> n = Notice(key="a1", kind="meter_backwards", severity="critical", summary="s",
...            source="fraud", station_id="CP1")
>>> [d.name for d in cfg.route(n)]
['pd', 'sl']
>>> pagerduty_event(cfg.destinations["pd"], n, "trigger")["payload"]["severity"]
'critical'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

__all__ = [
    "Action",
    "ConfigError",
    "Destination",
    "Notice",
    "Route",
    "RouterConfig",
    "TokenBucket",
    "backoff_s",
    "notice_from_alert",
    "notice_from_mismatch",
    "pagerduty_event",
    "parse_config",
    "slack_message",
]

Action = Literal["trigger", "resolve"]
SEVERITIES = ("info", "warning", "error", "critical")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_MAX = 1024  # PagerDuty payload.summary
DEDUP_MAX = 255  # PagerDuty dedup_key
HEADER_MAX = 150  # Slack header block plain_text
SECTION_MAX = 3000  # Slack section text
FIELD_MAX = 2000  # Slack section field text


class ConfigError(ValueError):
    """The routing config is invalid; the message names the offending entry."""


@dataclass(frozen=True, slots=True)
class Notice:
    """What the router delivers: one fraud alert or reconciliation result, format-neutral.

    ``key`` is the alert id or the reconciliation result id: PagerDuty's ``dedup_key`` and
    the key of the delivery record.
    """

    key: str
    kind: str
    severity: str
    summary: str
    source: Literal["fraud", "reconciliation"]
    explanation: str = ""
    score: float | None = None
    subject: str = ""
    session_id: str | None = None
    station_id: str | None = None
    timestamp: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    resolved: bool = False
    """A reconciliation result back to ``matched``: resolve what was triggered."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A PagerDuty service (routing key) or a Slack incoming webhook, with its rate limit."""

    name: str
    type: Literal["pagerduty", "slack"]
    url: str
    routing_key: str = ""
    rate_per_s: float = 1.0
    burst: int = 5

    def __repr__(self) -> str:  # the routing key and webhook URL are secrets
        return f"Destination({self.name!r}, {self.type})"


@dataclass(frozen=True, slots=True)
class Route:
    """Criteria (None: any) and the destinations a matching notice goes to."""

    to: tuple[str, ...]
    kind: frozenset[str] | None = None
    severity: frozenset[str] | None = None
    source: frozenset[str] | None = None
    stations: tuple[str, ...] | None = None

    def matches(self, n: Notice) -> bool:
        if self.kind is not None and n.kind not in self.kind:
            return False
        if self.severity is not None and n.severity not in self.severity:
            return False
        if self.source is not None and n.source not in self.source:
            return False
        if self.stations is None:
            return True
        return n.station_id is not None and any(n.station_id.startswith(p) for p in self.stations)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Destinations by name, routes in order, and the mismatch outcome -> severity map."""

    destinations: dict[str, Destination]
    routes: tuple[Route, ...]
    session_url: str | None = None
    mismatch_severity: dict[str, str] = field(default_factory=dict)

    def route(self, n: Notice) -> list[Destination]:
        """Every destination of every matching route, each once, in route order."""
        out: dict[str, Destination] = {}
        for r in self.routes:
            if r.matches(n):
                for name in r.to:
                    out.setdefault(name, self.destinations[name])
        return list(out.values())

    def link(self, n: Notice) -> str | None:
        if self.session_url is None or n.session_id is None:
            return None
        return self.session_url.format(session_id=n.session_id)


def parse_config(
    text: str, *, session_url: str | None = None, env: Mapping[str, str] | None = None
) -> RouterConfig:
    """Parse a YAML (or JSON, a subset) routing config; ``session_url`` overrides the file's.

    ``env`` resolves ``routing_key_env`` and ``url_env`` (the names of variables holding the
    secrets); a named variable that is unset or empty is a :class:`ConfigError`.
    """
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"router config: not YAML/JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("router config: top level must be a mapping")
    dests: dict[str, Destination] = {}
    for name, d in (raw.get("destinations") or {}).items():
        if not isinstance(d, dict) or d.get("type") not in ("pagerduty", "slack"):
            raise ConfigError(f"destination {name!r}: type must be pagerduty or slack")
        d = _resolve_secrets(str(name), d, env or {})
        if d["type"] == "pagerduty" and not d.get("routing_key"):
            raise ConfigError(f"destination {name!r}: pagerduty needs routing_key")
        if d["type"] == "slack" and not d.get("url"):
            raise ConfigError(f"destination {name!r}: slack needs url (the webhook)")
        rate, burst = float(d.get("rate_per_s", 1.0)), int(d.get("burst", 5))
        if rate <= 0 or burst < 1:
            raise ConfigError(f"destination {name!r}: rate_per_s > 0 and burst >= 1")
        dests[str(name)] = Destination(
            name=str(name), type=d["type"], url=str(d.get("url", PAGERDUTY_URL)),
            routing_key=str(d.get("routing_key", "")), rate_per_s=rate, burst=burst,
        )  # fmt: skip
    routes = []
    for i, r in enumerate(raw.get("routes") or []):
        to = r.get("to") if isinstance(r, dict) else None
        if not to:
            raise ConfigError(f"route {i}: 'to' names no destination")
        to = [to] if isinstance(to, str) else list(to)
        for name in to:
            if name not in dests:
                raise ConfigError(f"route {i}: unknown destination {name!r}")
        for s in r.get("severity") or ():
            if s not in SEVERITIES:
                raise ConfigError(f"route {i}: unknown severity {s!r}")
        stations = r.get("stations")
        routes.append(
            Route(
                to=tuple(to),
                kind=_set(r.get("kind")),
                severity=_set(r.get("severity")),
                source=_set(r.get("source")),
                stations=None if stations is None else tuple(_list(stations)),
            )
        )
    mismatch = {str(k): str(v) for k, v in (raw.get("mismatch_severity") or {}).items()}
    for k, v in mismatch.items():
        if v not in SEVERITIES:
            raise ConfigError(f"mismatch_severity {k!r}: unknown severity {v!r}")
    return RouterConfig(
        destinations=dests,
        routes=tuple(routes),
        session_url=session_url or raw.get("session_url"),
        mismatch_severity=mismatch,
    )


def _resolve_secrets(name: str, d: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``routing_key_env``/``url_env`` replaced by the variables' values (never echoed)."""
    d = dict(d)
    for key in ("routing_key", "url"):
        var = d.pop(f"{key}_env", None)
        if var is None:
            continue
        if key in d:
            raise ConfigError(f"destination {name!r}: give {key} or {key}_env, not both")
        value = env.get(str(var), "")
        if not value:
            raise ConfigError(f"destination {name!r}: {key}_env names {var}, which is not set")
        d[key] = value
    return d


def _list(v: Any) -> list[str]:
    return [str(v)] if isinstance(v, str) else [str(x) for x in v]


def _set(v: Any) -> frozenset[str] | None:
    return None if v is None else frozenset(_list(v))


# --------------------------------------------------------------------------- notices


def notice_from_alert(alert: Any) -> Notice:
    """A :class:`~topics.records.FraudAlert` as a :class:`Notice`."""
    first = alert.explanation.splitlines()[0] if alert.explanation else alert.kind
    where = f" at {alert.station_id}" if alert.station_id else ""
    return Notice(
        key=alert.alert_id,
        kind=alert.kind,
        severity=alert.severity,
        summary=f"[{alert.severity}] {alert.kind}{where}: {first}",
        source="fraud",
        explanation=alert.explanation,
        score=alert.score,
        subject=f"{alert.subject_type} {alert.subject_id}",
        session_id=alert.session_id,
        station_id=alert.station_id,
        timestamp=alert.event_time.isoformat(),
        details={
            "alert_id": alert.alert_id,
            "detector": alert.detector,
            "model_version": alert.model_version,
            "evidence": alert.evidence,
            "evidence_event_ids": list(alert.evidence_event_ids),
        },
    )


def notice_from_mismatch(result: Any, mismatch_severity: dict[str, str]) -> Notice:
    """A :class:`~topics.records.ReconciliationResult` as a :class:`Notice`; ``matched``
    (a correction) becomes a resolve."""
    amounts = (
        f"expected {result.expected_minor}, captured {result.captured_minor}, "
        f"delta {result.delta_minor} {result.currency or ''}".rstrip()
    )
    return Notice(
        key=result.result_id,
        kind=result.outcome,
        severity=mismatch_severity.get(result.outcome, "warning"),
        summary=f"reconciliation {result.outcome} on session {result.session_id}: {amounts}",
        source="reconciliation",
        explanation=result.detail or amounts,
        subject=f"session {result.session_id}",
        session_id=result.session_id,
        timestamp=result.event_time.isoformat(),
        details={
            "result_id": result.result_id,
            "revision": result.revision,
            "outcomes": list(result.outcomes),
            "currency": result.currency,
            "expected_minor": result.expected_minor,
            "authorized_minor": result.authorized_minor,
            "captured_minor": result.captured_minor,
            "refunded_minor": result.refunded_minor,
            "delta_minor": result.delta_minor,
            "evidence_event_ids": list(result.evidence_event_ids),
        },
        resolved=result.outcome == "matched",
    )


# --------------------------------------------------------------------------- PagerDuty


def pagerduty_event(dest: Destination, n: Notice, action: Action, *, link: str | None = None):
    """The PagerDuty Events API v2 body (POST /v2/enqueue) for a trigger or a resolve.

    ``dedup_key`` is the notice key, so a re-sent trigger updates the same incident and the
    resolve closes it. A resolve needs only ``routing_key``, ``event_action`` and
    ``dedup_key``; a trigger carries ``payload`` (``summary`` at most 1024 characters,
    ``source``, ``severity`` in critical/error/warning/info).

    >>> d = Destination("pd", "pagerduty", PAGERDUTY_URL, routing_key="k")
    >>> n = Notice(key="a", kind="k", severity="error", summary="x" * 2000, source="fraud")
    >>> e = pagerduty_event(d, n, "trigger")
    >>> len(e["payload"]["summary"]), e["dedup_key"], e["event_action"]
    (1024, 'a', 'trigger')
    >>> sorted(pagerduty_event(d, n, "resolve"))
    ['dedup_key', 'event_action', 'routing_key']
    """
    body: dict[str, Any] = {
        "routing_key": dest.routing_key,
        "event_action": action,
        "dedup_key": n.key[:DEDUP_MAX],
    }
    if action == "resolve":
        return body
    payload: dict[str, Any] = {
        "summary": _clip(n.summary, SUMMARY_MAX),
        "source": n.station_id or f"voltguard-{n.source}",
        "severity": n.severity if n.severity in SEVERITIES else "warning",
        "component": n.station_id or "billing",
        "group": n.source,
        "class": n.kind,
        "custom_details": {
            "explanation": n.explanation,
            "score": n.score,
            "subject": n.subject,
            "session_id": n.session_id,
            **n.details,
        },
    }
    if n.timestamp:
        payload["timestamp"] = n.timestamp
    body["payload"] = payload
    body["client"] = "voltguard"
    if link:
        body["links"] = [{"href": link, "text": f"Session {n.session_id}"}]
    return body


# --------------------------------------------------------------------------- Slack


def slack_message(n: Notice, action: Action, *, link: str | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook body: Block Kit blocks plus the ``text`` fallback.

    Header, a section with the explanation and fields (kind, severity, score, subject), and
    a button to the session page when there is one. A resolve is a short "resolved" note.

    >>> n = Notice(key="a", kind="k", severity="critical", summary="s", source="fraud",
    ...            explanation="why", score=0.9, session_id="S1")
    >>> m = slack_message(n, "trigger", link="https://ops/s/S1")
    >>> [b["type"] for b in m["blocks"]], m["text"]
    (['header', 'section', 'actions'], 's')
    """
    if action == "resolve":
        text = f"Resolved: {n.kind} ({n.key}) is back to matched"
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, SECTION_MAX)}}
        ]
        return {"text": text, "blocks": blocks}
    icon = {"critical": ":rotating_light:", "error": ":red_circle:", "warning": ":warning:"}
    header = f"{icon.get(n.severity, ':information_source:')} {n.kind} ({n.severity})"
    fields = [
        f"*Kind*\n{n.kind}",
        f"*Severity*\n{n.severity}",
        f"*Score*\n{'-' if n.score is None else f'{n.score:.3f}'}",
        f"*Subject*\n{n.subject or '-'}",
    ]
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(header, HEADER_MAX)}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _clip(n.explanation or n.summary, SECTION_MAX)},
            "fields": [{"type": "mrkdwn", "text": _clip(f, FIELD_MAX)} for f in fields],
        },
    ]
    if link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open session"},
                        "url": link,
                    }
                ],
            }
        )
    return {"text": _clip(n.summary, SECTION_MAX), "blocks": blocks}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- pacing


class TokenBucket:
    """A token bucket: ``rate_per_s`` refill, ``burst`` capacity; time is an argument.

    >>> b = TokenBucket(rate_per_s=2.0, burst=2)
    >>> [b.take(0.0), b.take(0.0), b.take(0.0)]
    [0.0, 0.0, 0.5]
    """

    def __init__(self, *, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float) -> float:
        """Take a token; returns how long to wait before using it (0: now)."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s


def backoff_s(attempt: int, *, base_s: float, max_s: float, jitter: float) -> float:
    """Full-jitter exponential backoff before retry ``attempt`` (1 = first retry).

    ``jitter`` in [0, 1) is the caller's random draw (the core has no randomness of its own).

    >>> [backoff_s(a, base_s=0.5, max_s=4.0, jitter=0.999) for a in (1, 2, 3, 4, 5)]
    [0.4995, 0.999, 1.998, 3.996, 3.996]
    """
    return min(max_s, base_s * 2 ** (attempt - 1)) * jitter


def dumps(body: dict[str, Any]) -> bytes:
    """The request body bytes (compact JSON, UTF-8)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()
