"""What the Prometheus and Grafana files under deploy/ query, for the unit and broker tests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import yaml
from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
"""Grafana's built-in variables and what the tests put in their place."""

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_SERVER_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
"""Series Prometheus itself adds to every target."""


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel of a dashboard, those inside rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(
    path: Path, variables: dict[str, str] = GRAFANA_VARIABLES
) -> list[tuple[str, str]]:
    """``(panel title / refId, PromQL)`` of every target of a dashboard, variables replaced."""
    out = []
    for panel in panels(json.loads(path.read_text())):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(name, value)
            out.append((f"{path.stem}: {panel['title']} / {target['refId']}", expr))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    """``(alert name, PromQL)`` of every alerting and recording rule."""
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a lexical reading, enough for ours).

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{x="y"}[5m])) / on() b or vector(0)'))
    ['a_bucket', 'b']
    """
    s = re.sub(r"#[^\n]*", "", expr)
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', s)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", s)
    return {n for n in names if n.lower() not in _KEYWORDS}


def exported_names(registry: CollectorRegistry = REGISTRY) -> set[str]:
    """Every series name the registry's collectors can expose, plus Prometheus' own."""
    import streams.api  # the operator API's own metrics
    import streams.api_follower
    import streams.metrics  # noqa: F401  (defines voltguard's metrics)

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    names = set(_SERVER_METRICS)
    for family in registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
    return names
