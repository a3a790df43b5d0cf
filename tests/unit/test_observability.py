"""deploy/prometheus and deploy/grafana: promtool accepts them, the rules' unit tests pass,
and every rule and dashboard query selects only metrics voltguard exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from streams.metrics import EVENT_TIME, INGRESS_REQUESTS
from tests.observability import (
    DASHBOARDS,
    GRAFANA,
    PROMETHEUS,
    ROOT,
    RULE_FILES,
    exported_names,
    metric_names,
    panel_queries,
    panels,
    rule_expressions,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool not installed (Debian package prometheus; .ci/run installs it)",
)


def promtool(*args: str, cwd: Path = PROMETHEUS, stdin: bytes | None = None) -> str:
    assert PROMTOOL is not None, "promtool is not installed (Debian package prometheus)"
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, input=stdin, capture_output=True, timeout=60, check=False
    )
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    return output


@needs_promtool
def test_promtool_accepts_the_config_and_its_rules() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert f"{len(RULE_FILES)} rule files found" in out
    assert RULE_FILES
    promtool("check", "rules", *map(str, RULE_FILES))


@needs_promtool
def test_alerting_rules_pass_their_unit_tests() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    out = promtool("test", "rules", *map(str, tests))
    assert "SUCCESS" in out


@needs_promtool
def test_every_alert_has_a_unit_test() -> None:
    tested = set()
    for path in (PROMETHEUS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    alerts = {name for name, _ in rule_expressions()}
    assert alerts - tested == set(), "alerts no test sees firing"


@needs_promtool
def test_every_panel_query_parses(tmp_path: Path) -> None:
    # promtool parses a rule's expression: each panel query becomes a recording rule.
    rules = [
        {"record": f"panel:{i}", "expr": expr}
        for i, (_, expr) in enumerate(q for d in DASHBOARDS for q in panel_queries(d))
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert f"{len(rules)} rules found" in out


@needs_promtool
def test_the_metrics_exposition_passes_promtool_lint() -> None:
    promtool("check", "metrics", stdin=generate_latest(REGISTRY))


def test_rules_and_panels_select_only_exported_metrics() -> None:
    exported = exported_names()
    queries = rule_expressions() + [q for d in DASHBOARDS for q in panel_queries(d)]
    assert len(queries) > 30
    unknown = {
        (where, name)
        for where, expr in queries
        for name in metric_names(expr)
        if name not in exported
    }
    assert unknown == set()
    used = {name for _, expr in queries for name in metric_names(expr)}
    voltguard = {n for n in exported if n.startswith("voltguard_") and not n.endswith("_created")}
    # Every family voltguard exports appears in a dashboard or a rule (by some series).
    families = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in voltguard}
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}
    assert families - shown == set(), "metrics no dashboard or rule shows"


def test_dashboards_are_grafana_dashboards_on_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert {d.stem for d in DASHBOARDS} == {"pipeline-health", "money", "fraud"}
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids and board["title"] and board["schemaVersion"] >= 36
        uids.add(board["uid"])
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for p in panels(board):
            grid = p["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"{path.name}: {p['title']}"
            assert p["datasource"]["uid"] == datasource["uid"]
            assert p["targets"], f"{path.name}: {p['title']} has no query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == datasource["uid"] and t["expr"].strip()
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "voltguard.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_scrape_config_has_every_process_and_compose_metrics_port() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]}
        for job in config["scrape_configs"]
    }
    assert {"ingest", "billing", "detection", "router", "ingress", "api"} <= targets.keys()
    assert all(
        "labels" not in sc for job in config["scrape_configs"] for sc in job["static_configs"]
    ), "a target label `stage` would rename the metrics' own to exported_stage"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    scraped = set().union(*targets.values())
    for name, service in compose.items():
        command = service.get("command", [])
        env = service.get("environment") or {}
        port = None
        if "--metrics-port" in command:
            port = command[command.index("--metrics-port") + 1]
        elif "VOLTGUARD_METRICS_PORT" in env:
            port = env["VOLTGUARD_METRICS_PORT"]
        elif command[:1] == ["api"]:  # the operator API serves /metrics on its own port
            port = env["VOLTGUARD_API_PORT"]
        if port is not None:
            assert f"{name}:{port}" in scraped, f"compose service {name} is not scraped"
    for job in ("ingest", "billing", "detection", "router", "ingress", "api"):
        for target in targets[job]:
            assert target.split(":")[0] in compose, f"{job} scrapes {target}: no such service"


def test_event_time_lag_is_computed_at_scrape_time() -> None:
    EVENT_TIME.labels(stage="unit", topic="t").set(time.time() - 120)
    lag = REGISTRY.get_sample_value(
        "voltguard_stage_event_time_lag_seconds", {"stage": "unit", "topic": "t"}
    )
    assert lag is not None and 119 < lag < 130
    EVENT_TIME.remove("unit", "t")


def test_ingress_counts_outcomes_and_times_requests() -> None:
    from tests.unit.test_ingress_app import FakeProducer, auth, call, post

    def value(metric: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(metric, labels) or 0.0

    before = value(
        "voltguard_ingress_requests_total", {"endpoint": "generic", "outcome": "unauthorized"}
    )
    timed = value(
        "voltguard_ingress_request_seconds_count", {"endpoint": "generic", "status": "4xx"}
    )
    status, _ = call(FakeProducer(), lambda c: post(c, "/payments", b"{}", auth("wrong")))
    assert status == 401
    assert INGRESS_REQUESTS.labels("generic", "unauthorized")._value.get() == before + 1
    assert (
        value("voltguard_ingress_request_seconds_count", {"endpoint": "generic", "status": "4xx"})
        == timed + 1
    )
