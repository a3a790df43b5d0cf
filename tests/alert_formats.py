"""Checks of the public request formats the alert router must speak.

PagerDuty Events API v2 (POST https://events.pagerduty.com/v2/enqueue) and Slack incoming
webhooks with Block Kit. Each check returns the list of problems (empty: valid), so a test
receiver can answer 400 with them, as the real services do.
"""

from __future__ import annotations

from typing import Any

PD_SEVERITIES = {"critical", "error", "warning", "info"}
PD_ACTIONS = {"trigger", "acknowledge", "resolve"}
SLACK_BLOCKS = {"header", "section", "actions", "context", "divider"}


def pagerduty_problems(body: Any) -> list[str]:
    """What is wrong with an Events API v2 event body."""
    p: list[str] = []
    if not isinstance(body, dict):
        return ["body is not an object"]
    if not isinstance(body.get("routing_key"), str) or not body["routing_key"]:
        p.append("routing_key missing")
    action = body.get("event_action")
    if action not in PD_ACTIONS:
        p.append(f"event_action {action!r}")
    dedup = body.get("dedup_key")
    if action in ("acknowledge", "resolve") and not dedup:
        p.append("dedup_key required for acknowledge/resolve")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        p.append("dedup_key must be a string of at most 255 characters")
    if action == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            return [*p, "payload required for trigger"]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) > 1024:
            p.append("payload.summary must be 1-1024 characters")
        if not isinstance(payload.get("source"), str) or not payload["source"]:
            p.append("payload.source required")
        if payload.get("severity") not in PD_SEVERITIES:
            p.append(f"payload.severity {payload.get('severity')!r}")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            p.append("payload.custom_details must be an object")
        for link in body.get("links", []):
            if not isinstance(link, dict) or not str(link.get("href", "")).startswith("http"):
                p.append(f"bad link {link!r}")
    return p


def _text(obj: Any, kind: str | None, limit: int) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return [f"text object {obj!r}"]
    if kind and obj["type"] != kind:
        return [f"text type {obj['type']} where {kind} is required"]
    text = obj.get("text")
    if not isinstance(text, str) or not text or len(text) > limit:
        return [f"text must be 1-{limit} characters"]
    return []


def slack_problems(body: Any) -> list[str]:
    """What is wrong with an incoming-webhook message using Block Kit."""
    if not isinstance(body, dict):
        return ["body is not an object"]
    p: list[str] = []
    if not isinstance(body.get("text"), str) or not body["text"]:
        p.append("text fallback missing (required when blocks are sent, for notifications)")
    blocks = body.get("blocks", [])
    if not isinstance(blocks, list) or len(blocks) > 50:
        return [*p, "blocks must be a list of at most 50"]
    for b in blocks:
        t = b.get("type") if isinstance(b, dict) else None
        if t not in SLACK_BLOCKS:
            p.append(f"block type {t!r}")
        elif t == "header":
            p += _text(b.get("text"), "plain_text", 150)
        elif t == "section":
            if "text" not in b and "fields" not in b:
                p.append("section needs text or fields")
            if "text" in b:
                p += _text(b["text"], None, 3000)
            fields = b.get("fields", [])
            if len(fields) > 10:
                p.append("section has more than 10 fields")
            for f in fields:
                p += _text(f, None, 2000)
        elif t == "actions":
            for e in b.get("elements", []):
                if e.get("type") != "button":
                    p.append(f"action element {e.get('type')!r}")
                    continue
                p += _text(e.get("text"), "plain_text", 75)
                if "url" in e and not str(e["url"]).startswith("http"):
                    p.append("button url must be http(s)")
        elif t == "context":
            for e in b.get("elements", []):
                p += _text(e, None, 3000)
    return p
