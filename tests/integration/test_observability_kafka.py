"""Debian's Prometheus scrapes running voltguard processes; every dashboard query works.

On a broker of its own: simulator traffic (plus one poison frame) goes through the ingest,
billing, detection and router workers, and a few requests through the payment ingress, all
real subprocesses serving /metrics. ``/usr/bin/prometheus`` scrapes them every second with
the project's alerting rules loaded. Every panel query of every dashboard and every rule
expression is then evaluated through the HTTP API: none may error, and the core panels must
return data (a finite value).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.commands.simulate import produce_to_kafka
from streams.localkafka import find_free_port
from tests.integration.helpers import produce_all
from tests.observability import (
    DASHBOARDS,
    GRAFANA_VARIABLES,
    RULE_FILES,
    panel_queries,
    rule_expressions,
)
from topics.simulation.config import SimulationConfig

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SECRET = "observability-integration"
TOKEN = "observability-bearer-token-0123"
CONFIG = SimulationConfig(seed=2718, sessions=150, stations=12, fault_scale=6.0)
STAGES = ("ingest", "billing", "detection", "router")

CORE = {
    "pipeline-health": [
        "Processes up",
        "Input records/s by stage and topic",
        "Output records/s by stage and topic",
        "Ingest: input by topic and outcome",
        "Billing: input by topic and outcome",
        "Detection: input by topic and outcome",
        "Dead letters by stage and reason (in range)",
        "Consumer lag by stage and topic",
        "Event-time lag by stage and topic",
        "Newest event time handled by stage and topic",
        "Batch time p50 / p99 by stage",
        "Open sessions (billing)",
        "Billing watermark age by partition",
        "CPU by process",
        "Resident memory by process",
        "Payment ingress: requests/s by endpoint and outcome",
        "Payment ingress: p99 latency by endpoint",
    ],
    "money": [
        "Revenue leakage by currency (minor units)",
        "Unreconciled amounts by currency (minor units)",
        "Reconciliation results/s by outcome",
        "Results by outcome (in range)",
        "Bills published/s",
    ],
    "fraud": [
        "Alerts/s by kind and severity",
        "Alerts by kind (in range)",
        "Online score distribution",
        "Online score p50 / p99",
        "Scoring latency p99 by detector",
        "Detection time per input event p99",
        "Model versions in service",
        "Offline model loaded",
        "Alert deliveries/s by destination and status",
        "Router notices by outcome (in range)",
    ],
}
"""Panels that must return data once traffic has gone through (the others may be empty:
e.g. the mismatch share is NaN when every result is a match)."""

VARIABLES = {**GRAFANA_VARIABLES, "$__rate_interval": "5m"}
"""The traffic is over in seconds: rates over 5 minutes still see it when the test asks."""


class _Slack(BaseHTTPRequestHandler):
    """Plays a Slack incoming webhook: 200 "ok" to every POST."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _get(url: str, timeout_s: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def _query(base: str, expr: str) -> dict:
    """``/api/v1/query`` of an instant expression; the JSON body (errors too)."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return _get(url)
    except urllib.error.HTTPError as exc:  # 400/422: the body says why
        return json.loads(exc.read())


def _has_data(body: dict) -> bool:
    data = body.get("data", {})
    if data.get("resultType") == "scalar":
        return not math.isnan(float(data["result"][1]))
    return any(not math.isnan(float(r["value"][1])) for r in data.get("result", []))


@pytest.fixture(scope="module")
def processes(private_kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The four workers and the ingress, running on the private broker with traffic fed;
    yields the metrics port of each job."""
    bootstrap = private_kafka
    create_topics(AdminClient({"bootstrap.servers": bootstrap}))

    slack = ThreadingHTTPServer(("127.0.0.1", 0), _Slack)
    threading.Thread(target=slack.serve_forever, daemon=True).start()
    tmp = tmp_path_factory.mktemp("observability")
    routes = tmp / "routes.yaml"
    routes.write_text(
        yaml.safe_dump(
            {
                "destinations": {
                    "chat": {
                        "type": "slack",
                        "url": f"http://127.0.0.1:{slack.server_port}/hook",
                        "rate_per_s": 1000,
                        "burst": 1000,
                    }
                },
                "routes": [{"severity": ["info", "warning", "error", "critical"], "to": "chat"}],
            }
        )
    )
    env = {
        **os.environ,
        "VOLTGUARD_HASH_SECRET": SECRET,
        "VOLTGUARD_ROUTER_CONFIG": str(routes),
        "VOLTGUARD_INGRESS_API_TOKEN": TOKEN,
        "VOLTGUARD_MODEL_REGISTRY": str(tmp / "empty-registry"),
    }
    ports = {job: find_free_port() for job in (*STAGES, "ingress")}
    logs = {job: (tmp / f"{job}.log").open("wb") for job in ports}
    running: dict[str, subprocess.Popen[bytes]] = {}
    cli = [sys.executable, "-m", "streams.cli"]
    try:
        for stage in STAGES:
            running[stage] = subprocess.Popen(
                [*cli, "worker", "--stage", stage, "--bootstrap-servers", bootstrap,
                 "--metrics-port", str(ports[stage])],
                cwd=ROOT, env={**env, "VOLTGUARD_INSTANCE_ID": f"obs-{stage}"},
                stdout=logs[stage], stderr=subprocess.STDOUT,
            )  # fmt: skip
        ingress_port = find_free_port()
        running["ingress"] = subprocess.Popen(
            [*cli, "ingress", "--port", str(ingress_port), "--bootstrap-servers", bootstrap],
            cwd=ROOT, env={**env, "VOLTGUARD_METRICS_PORT": str(ports["ingress"])},
            stdout=logs["ingress"], stderr=subprocess.STDOUT,
        )  # fmt: skip
        yield {
            "ports": ports, "running": running, "tmp": tmp, "bootstrap": bootstrap,
            "ingress_port": ingress_port,
        }  # fmt: skip
    finally:
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc in running.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for handle in logs.values():
            handle.close()
        slack.shutdown()


def _feed_ingress(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """A few accepted, duplicate and unauthorised POST /payments once the ingress listens."""
    url = f"http://127.0.0.1:{port}/payments"
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(f"http://127.0.0.1:{port}/healthz", timeout_s=1)
            break
        except OSError:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the ingress did not start"
            time.sleep(0.2)
    for i, token in enumerate([TOKEN] * 6 + ["wrong"] * 2):
        body = {
            "event_id": f"obs-{i % 4}",
            "event_time": "2024-03-01T10:00:00Z",
            "payment_id": f"w-{i % 4}",
            "psp": "wallet",
            "psp_reference": f"w-{i % 4}",
            "kind": "captured",
            "amount_minor": 700,
            "currency": "EUR",
            "method": "prepaid",
            "station_id": "CP-OBS",
            "transaction_id": i % 4,
        }
        request = urllib.request.Request(
            url,
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except urllib.error.HTTPError as exc:
            assert exc.code == 401, exc.read()


@pytest.fixture(scope="module")
def prometheus(processes: dict) -> Iterator[str]:
    """Debian's Prometheus scraping the processes every second, the rules loaded; its URL."""
    tmp: Path = processes["tmp"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in processes["ports"].items()
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = find_free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "prometheus did not get ready"
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def traffic(prometheus: str, processes: dict) -> str:
    """Once Prometheus scrapes every process (so that rate() sees each increase from its
    first sample on): the simulator's traffic, a poison frame and a few ingress requests."""
    deadline = time.monotonic() + 60
    while True:
        targets = _get(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        if len(targets) == len(processes["ports"]) and all(t["health"] == "up" for t in targets):
            break
        for job, proc in processes["running"].items():
            assert proc.poll() is None, (processes["tmp"] / f"{job}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, [t.get("lastError") for t in targets]
        time.sleep(0.5)
    time.sleep(2)  # two more scrapes: every series has a sample before the traffic
    bootstrap = processes["bootstrap"]
    produce_to_kafka(CONFIG, hash_secret=SECRET.encode(), bootstrap_servers=bootstrap)
    produce_all(bootstrap, "ocpp_frames", [(b"CP-POISON", b"{not json")])
    tmp: Path = processes["tmp"]
    _feed_ingress(processes["ingress_port"], processes["running"]["ingress"], tmp / "ingress.log")
    return prometheus


def _core_queries() -> list[tuple[str, str]]:
    wanted = {f"{board}: {title}" for board, titles in CORE.items() for title in titles}
    queries = [q for d in DASHBOARDS for q in panel_queries(d, VARIABLES)]
    titles = {where.rsplit(" / ", 1)[0] for where, _ in queries}
    assert wanted <= titles, f"core panels not in the dashboards: {sorted(wanted - titles)}"
    return [(where, expr) for where, expr in queries if where.rsplit(" / ", 1)[0] in wanted]


def test_every_dashboard_query_runs_and_the_core_panels_have_data(
    traffic: str, processes: dict
) -> None:
    prometheus = traffic
    core = _core_queries()
    deadline = time.monotonic() + 60
    while True:
        empty = [where for where, expr in core if not _has_data(_query(prometheus, expr))]
        if not empty or time.monotonic() > deadline:
            break
        for job, proc in processes["running"].items():
            assert proc.poll() is None, (processes["tmp"] / f"{job}.log").read_text()[-3000:]
        time.sleep(2)
    targets = _get(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == dict.fromkeys(
        processes["ports"], "up"
    ), [t.get("lastError") for t in targets]
    assert empty == [], f"core panels without data: {empty}"

    every = [q for d in DASHBOARDS for q in panel_queries(d, VARIABLES)] + rule_expressions()
    failed = {
        where: body.get("error")
        for where, expr in every
        if (body := _query(prometheus, expr)).get("status") != "success"
    }
    assert failed == {}
    # The server evaluates the alerting rules itself too: none may be in error.
    groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(rule_expressions())
    assert {r["name"]: r.get("lastError", "") for r in rules if r["health"] == "err"} == {}


def test_metrics_carry_the_traffic(traffic: str, processes: dict) -> None:
    """Figures that follow from the traffic: the poison frame is an ingest dead letter,
    the unauthorised requests are counted, lag falls to (near) zero once caught up."""
    prometheus = traffic

    def value(expr: str) -> float:
        body = _query(prometheus, expr)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return sum(float(r["value"][1]) for r in result)

    assert value('sum(voltguard_dead_letters_total{stage="ingest"})') >= 1
    assert value('sum(voltguard_ingress_requests_total{outcome="unauthorized"})') == 2
    assert value('sum(voltguard_ingress_requests_total{outcome="accepted"})') == 4
    assert value('sum(voltguard_ingress_requests_total{outcome="duplicate"})') == 2
    assert value("sum(voltguard_reconciliation_results_total)") > 0
    # The traffic was produced in one go: the workers catch up, and the lag the loop samples
    # from the consumer falls to zero on every partition (transaction markers included).
    deadline = time.monotonic() + 30
    while (lag := value("max(voltguard_consumer_lag_records)")) > 0:
        assert time.monotonic() < deadline, f"consumer lag stays at {lag}"
        time.sleep(1)
