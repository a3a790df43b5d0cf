"""Routing config, PagerDuty Events v2 and Slack Block Kit bodies (topics/alerts.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.alert_formats import pagerduty_problems, slack_problems
from topics import alerts
from topics.alerts import TokenBucket, backoff_s, parse_config
from topics.records import FraudAlert, ReconciliationResult

T = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)

CONFIG = """
session_url: "https://ops.example/sessions/{session_id}"
destinations:
  pager: {type: pagerduty, routing_key: R1, url: "http://127.0.0.1:1/v2/enqueue"}
  fraud: {type: slack, url: "http://127.0.0.1:1/slack"}
  berlin: {type: slack, url: "http://127.0.0.1:1/berlin"}
routes:
  - {severity: [critical, error], to: pager}
  - {severity: [warning], source: fraud, to: [fraud]}
  - {kind: [token_overlap], stations: ["BER-", "HAM-7"], to: [berlin]}
mismatch_severity: {duplicate_capture: error}
"""


def alert(**kw: object) -> FraudAlert:
    base: dict[str, object] = dict(
        event_id="e1", event_time=T, source="detection", alert_id="a-1", kind="meter_backwards",
        severity="critical", score=0.97, subject_type="session", subject_id="S1",
        session_id="S1", station_id="BER-001", evidence={"delta_wh": -120},
        evidence_event_ids=["m1", "m2"], explanation="register went back 120 Wh\nat 10:01",
        detector="rule:meter_backwards",
    )  # fmt: skip
    base.update(kw)
    return FraudAlert(**base)  # type: ignore[arg-type]


def mismatch(outcome: str = "duplicate_capture", **kw: object) -> ReconciliationResult:
    base: dict[str, object] = dict(
        event_id="r1", event_time=T, source="billing", result_id="res-1", session_id="S9",
        outcome=outcome, currency="EUR", expected_minor=1200, captured_minor=2400,
        delta_minor=1200, revision=1, detail="captured twice",
    )  # fmt: skip
    base.update(kw)
    return ReconciliationResult(**base)  # type: ignore[arg-type]


@pytest.fixture
def cfg() -> alerts.RouterConfig:
    return parse_config(CONFIG)


def names(cfg: alerts.RouterConfig, n: alerts.Notice) -> list[str]:
    return [d.name for d in cfg.route(n)]


def test_routes_by_severity_kind_and_station_group(cfg: alerts.RouterConfig) -> None:
    assert names(cfg, alerts.notice_from_alert(alert())) == ["pager"]
    assert names(cfg, alerts.notice_from_alert(alert(severity="warning"))) == ["fraud"]
    overlap = alert(kind="token_overlap", severity="warning", station_id="HAM-70")
    assert names(cfg, alerts.notice_from_alert(overlap)) == ["fraud", "berlin"]
    elsewhere = alert(kind="token_overlap", severity="info", station_id="MUC-1")
    assert names(cfg, alerts.notice_from_alert(elsewhere)) == []
    no_station = alert(kind="token_overlap", severity="info", station_id=None)
    assert names(cfg, alerts.notice_from_alert(no_station)) == []


def test_a_destination_is_delivered_once_when_several_routes_match() -> None:
    cfg = parse_config(
        "destinations: {p: {type: pagerduty, routing_key: k}}\n"
        "routes: [{severity: [critical], to: p}, {kind: [x], to: [p]}]"
    )
    n = alerts.Notice(key="a", kind="x", severity="critical", summary="s", source="fraud")
    assert names(cfg, n) == ["p"]


def test_mismatch_severity_and_source(cfg: alerts.RouterConfig) -> None:
    n = alerts.notice_from_mismatch(mismatch(), cfg.mismatch_severity)
    assert (n.severity, n.source, n.key, n.resolved) == ("error", "reconciliation", "res-1", False)
    assert names(cfg, n) == ["pager"]
    low = alerts.notice_from_mismatch(mismatch("undercharged"), cfg.mismatch_severity)
    assert low.severity == "warning" and names(cfg, low) == []  # fraud-only warning route
    assert alerts.notice_from_mismatch(mismatch("matched"), {}).resolved


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("destinations: {p: {type: email}}", "type must be pagerduty or slack"),
        ("destinations: {p: {type: pagerduty}}", "needs routing_key"),
        ("destinations: {s: {type: slack}}", "needs url"),
        ("routes: [{severity: [critical], to: nowhere}]", "unknown destination 'nowhere'"),
        ("routes: [{severity: [critical]}]", "'to' names no destination"),
        (
            "destinations: {p: {type: pagerduty, routing_key: k}}\n"
            "routes: [{severity: [urgent], to: p}]",
            "unknown severity 'urgent'",
        ),
        ("[1, 2]", "top level must be a mapping"),
        ("{a: [", "not YAML/JSON"),
    ],
)
def test_bad_configs_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(alerts.ConfigError, match=match):
        parse_config(text)


def test_json_config_is_accepted() -> None:
    cfg = parse_config('{"destinations": {"s": {"type": "slack", "url": "http://h/x"}},'
                       ' "routes": [{"severity": ["info"], "to": ["s"]}]}')  # fmt: skip
    assert list(cfg.destinations) == ["s"] and "http" not in repr(cfg.destinations["s"])


def test_pagerduty_trigger_follows_events_v2(cfg: alerts.RouterConfig) -> None:
    n = alerts.notice_from_alert(alert(explanation="x" * 3000))
    body = alerts.pagerduty_event(cfg.destinations["pager"], n, "trigger", link=cfg.link(n))
    assert pagerduty_problems(body) == []
    assert body["routing_key"] == "R1" and body["dedup_key"] == "a-1"
    assert body["event_action"] == "trigger"
    payload = body["payload"]
    assert len(payload["summary"]) == 1024
    assert payload["severity"] == "critical" and payload["source"] == "BER-001"
    assert payload["custom_details"]["evidence"] == {"delta_wh": -120}
    assert payload["custom_details"]["evidence_event_ids"] == ["m1", "m2"]
    assert body["links"] == [{"href": "https://ops.example/sessions/S1", "text": "Session S1"}]


def test_pagerduty_resolve_carries_the_same_dedup_key(cfg: alerts.RouterConfig) -> None:
    n = alerts.notice_from_mismatch(mismatch("matched"), {})
    body = alerts.pagerduty_event(cfg.destinations["pager"], n, "resolve")
    assert body == {"routing_key": "R1", "event_action": "resolve", "dedup_key": "res-1"}
    assert pagerduty_problems(body) == []


@pytest.mark.parametrize("severity", ["info", "warning", "error", "critical"])
def test_every_severity_maps_to_a_pagerduty_severity(severity: str) -> None:
    n = alerts.notice_from_alert(alert(severity=severity))
    dest = alerts.Destination("p", "pagerduty", alerts.PAGERDUTY_URL, routing_key="k")
    assert alerts.pagerduty_event(dest, n, "trigger")["payload"]["severity"] == severity


def test_the_format_checks_can_fail() -> None:
    assert pagerduty_problems({"routing_key": "k", "event_action": "resolve"})
    assert pagerduty_problems({"routing_key": "k", "event_action": "trigger",
                               "payload": {"summary": "s", "source": "x", "severity": "high"}})  # fmt: skip
    assert slack_problems({"blocks": []})
    assert slack_problems({"text": "t", "blocks": [{"type": "header", "text": {
        "type": "mrkdwn", "text": "h"}}]})  # fmt: skip


def test_slack_message_is_block_kit_with_fallback(cfg: alerts.RouterConfig) -> None:
    n = alerts.notice_from_alert(alert(kind="k" * 200))
    msg = alerts.slack_message(n, "trigger", link=cfg.link(n))
    assert slack_problems(msg) == []
    header, section, actions = msg["blocks"]
    assert header["type"] == "header" and len(header["text"]["text"]) <= 150
    assert section["text"]["text"].startswith("register went back 120 Wh")
    fields = [f["text"] for f in section["fields"]]
    assert fields[1:] == ["*Severity*\ncritical", "*Score*\n0.970", "*Subject*\nsession S1"]
    assert actions["elements"][0]["url"] == "https://ops.example/sessions/S1"
    assert msg["text"] == n.summary


def test_slack_without_a_session_has_no_button() -> None:
    n = alerts.notice_from_alert(alert(session_id=None, subject_type="token", subject_id="t"))
    msg = alerts.slack_message(n, "trigger", link=None)
    assert [b["type"] for b in msg["blocks"]] == ["header", "section"]
    assert slack_problems(alerts.slack_message(n, "resolve")) == []


def test_token_bucket_refills_at_its_rate() -> None:
    b = TokenBucket(rate_per_s=4.0, burst=2)
    assert [b.take(10.0), b.take(10.0)] == [0.0, 0.0]
    assert b.take(10.0) == pytest.approx(0.25)
    assert b.take(10.5) == pytest.approx(0.0)  # 2 tokens refilled, one owed, one taken
    assert b.take(10.5) == pytest.approx(0.25)


def test_backoff_doubles_up_to_its_cap() -> None:
    waits = [backoff_s(a, base_s=0.1, max_s=0.5, jitter=1.0) for a in range(1, 6)]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert backoff_s(3, base_s=0.1, max_s=0.5, jitter=0.0) == 0.0


def test_the_example_config_parses() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy/router/routes.example.yaml"
    env = {"PAGERDUTY_ROUTING_KEY": "k" * 32, "SLACK_WEBHOOK_URL": "https://hooks.example/x"}
    cfg = parse_config(path.read_text(), env=env)
    assert set(cfg.destinations) == {"oncall", "fraud-channel"}
    assert cfg.destinations["oncall"].routing_key == "k" * 32
    assert cfg.destinations["fraud-channel"].url == "https://hooks.example/x"
    crit = alerts.notice_from_alert(alert())
    assert names(cfg, crit) == ["oncall", "fraud-channel"]


def test_secrets_come_from_the_named_variables() -> None:
    text = "destinations: {p: {type: pagerduty, routing_key_env: PD_KEY}}\nroutes: [{to: p}]"
    cfg = parse_config(text, env={"PD_KEY": "secret-key"})
    assert cfg.destinations["p"].routing_key == "secret-key"
    with pytest.raises(alerts.ConfigError, match="routing_key_env names PD_KEY, which is not set"):
        parse_config(text, env={})
    both = "destinations: {s: {type: slack, url: http://h/x, url_env: U}}\nroutes: [{to: s}]"
    with pytest.raises(alerts.ConfigError, match="give url or url_env, not both"):
        parse_config(both, env={"U": "http://h/y"})
