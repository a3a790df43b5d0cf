"""``voltguard evaluate``: a replay's detections against the simulator's labels.

The shell around :mod:`models.evaluation`: reads what ``voltguard replay --out`` wrote
(alerts.jsonl, reconciliation.jsonl, bills.jsonl and, once the online detectors run,
scores.jsonl) and the labels of ``voltguard simulate --out``, prints per fault kind the
labels, detections, recall, precision and the detection delay in event time (median and
95th percentile), the false-positive rate on clean sessions and the kinds behind it, and
for the anomaly kinds the average precision (PR-AUC) of the online score and its precision
and recall at the deployed threshold. ``--html`` also writes a self-contained report with
the plots (:mod:`streams.htmlreport`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import click
import msgspec

from models.evaluation import (
    PRCurve,
    Report,
    SessionScore,
    alert_curves,
    detections,
    evaluate,
    score_curves,
)
from topics.records import FraudAlert, ReconciliationResult
from topics.simulation.faults import ANOMALY_KINDS, FAULT_KINDS, HONEST_KINDS, SimLabel

__all__ = ["evaluate_command", "evaluation_summary", "load_run"]


class _ScoreLine(msgspec.Struct):
    session_id: str
    score: float
    threshold: float | None = None
    parts: dict[str, float] = {}


OVERALL: Final = "online score"
"""The name of a scores.jsonl line's own score (its parts keep their names)."""


class BadInput(click.ClickException):
    """A run directory or labels file that cannot be evaluated (exit status 2)."""

    exit_code = 2


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if raw.strip():
                yield number, raw


def _read(path: Path, record_type: type[Any], *, wrapped: bool = False) -> list[Any]:
    """Records of a JSONL file; ``wrapped``: lines may be ``{"topic", "key", "value"}``."""
    out = []
    for number, raw in _lines(path):
        try:
            if wrapped:
                doc = msgspec.json.decode(raw)
                if isinstance(doc, dict) and "value" in doc and "topic" in doc:
                    raw = msgspec.json.encode(doc["value"])
            out.append(msgspec.json.decode(raw, type=record_type))
        except msgspec.DecodeError as exc:
            raise BadInput(f"{path}:{number}: not a {record_type.__name__} line: {exc}") from None
    return out


def load_run(
    run_dir: Path, labels_path: Path
) -> tuple[
    list[FraudAlert], list[ReconciliationResult], int, list[SessionScore] | None, list[SimLabel]
]:
    """Alerts, reconciliation results, session count, scores (None: no scores.jsonl), labels."""
    alerts_path = run_dir / "alerts.jsonl"
    results_path = run_dir / "reconciliation.jsonl"
    for need, hint in ((alerts_path, "run `voltguard replay --detect --out DIR` first"),
                       (results_path, "run `voltguard replay --out DIR` first"),
                       (labels_path, "give --labels (the labels.jsonl of `voltguard simulate --out`)")):  # fmt: skip
        if not need.is_file():
            raise BadInput(f"{need} not found: {hint}")
    alerts = _read(alerts_path, FraudAlert)
    results = _read(results_path, ReconciliationResult)
    bills_path = run_dir / "bills.jsonl"
    if bills_path.is_file():
        sessions = sum(1 for _ in _lines(bills_path))
    else:
        sessions = len({r.session_id for r in results if r.session_id})
    labels = _read(labels_path, SimLabel, wrapped=True)
    if not labels:
        raise BadInput(f"{labels_path} holds no labels")
    scores_path = run_dir / "scores.jsonl"
    scores = None
    if scores_path.is_file():
        scores = []
        for line in _read(scores_path, _ScoreLine):
            scores.append(SessionScore(line.session_id, OVERALL, line.score, line.threshold))
            scores += [
                SessionScore(line.session_id, f"part {name}", value)
                for name, value in line.parts.items()
            ]
    return alerts, results, sessions, scores, labels


def _kind_order(kind: str) -> tuple[int, int, str]:
    for group, kinds in enumerate((FAULT_KINDS, ANOMALY_KINDS)):
        if kind in kinds:
            return group, kinds.index(kind), kind
    return 2, 0, kind


def _curve_dict(c: PRCurve) -> dict[str, Any]:
    return {
        "kind": c.kind,
        "scorer": c.scorer,
        "positives": c.positives,
        "negatives": c.negatives,
        "average_precision": c.average_precision,
        "precision_at_threshold": c.precision_at_threshold,
        "recall_at_threshold": c.recall_at_threshold,
        "precision": list(c.precision),
        "recall": list(c.recall),
        "thresholds": list(c.thresholds),
    }


def evaluation_summary(
    report: Report,
    curves: list[PRCurve],
    *,
    scores_present: bool,
    labels: list[SimLabel],
) -> dict[str, Any]:
    """Everything the terminal, ``--format json`` and the HTML report show."""
    kinds = {}
    for kind in sorted(report.kinds, key=_kind_order):
        s = report.kinds[kind]
        kinds[kind] = {
            "labels": s.labels,
            "detections": s.detections,
            "recall": s.recall,
            "precision": s.precision,
            "delay_median_s": s.delay_s,
            "delay_p95_s": s.delay_p95_s,
            "delays_s": sorted(s.delays_s),
        }
    honest_labels: dict[str, int] = {}
    for lab in labels:
        if lab.honest:
            honest_labels[lab.kind] = honest_labels.get(lab.kind, 0) + 1
    return {
        "sessions": report.sessions,
        "labels": sum(1 for lab in labels if not lab.honest),
        "honest_labels": sum(honest_labels.values()),
        "detections": sum(s.detections for s in report.kinds.values()),
        "kinds": kinds,
        "clean_sessions_flagged": report.clean_sessions_flagged,
        "clean_flag_rate": report.clean_flag_rate,
        "false_positive_kinds": dict(
            sorted(report.false_positive_kinds.items(), key=lambda kv: (-kv[1], kv[0]))
        ),
        "honest_flagged": {
            k: {"labels": honest_labels[k], "flagged": report.honest_flagged.get(k, 0)}
            for k in sorted(honest_labels, key=lambda k: ((*HONEST_KINDS, k)).index(k))
        },
        "scores_present": scores_present,
        "curves": [_curve_dict(c) for c in curves],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_delay(seconds: float | None) -> str:
    """A delay in the unit that reads best (s, min, h, d)."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86_400:.1f}d"


def _text(summary: dict[str, Any]) -> list[str]:
    out = [
        f"{summary['sessions']} sessions, {summary['labels']} fault labels "
        f"({summary['honest_labels']} honest oddities), {summary['detections']} detections",
        f"  {'kind':<32} {'labels':>6} {'found':>6} {'recall':>7} {'precision':>9} "
        f"{'delay p50':>9} {'delay p95':>9}",
    ]
    for kind, row in summary["kinds"].items():
        out.append(
            f"  {kind:<32} {row['labels']:>6} {row['detections']:>6} {_fmt(row['recall']):>7} "
            f"{_fmt(row['precision']):>9} {fmt_delay(row['delay_median_s']):>9} "
            f"{fmt_delay(row['delay_p95_s']):>9}"
        )
    out.append(
        f"clean sessions flagged: {summary['clean_sessions_flagged']} of {summary['sessions']} "
        f"({summary['clean_flag_rate']:.2%})"
    )
    for kind, n in summary["false_positive_kinds"].items():
        out.append(f"  false positives {kind:<32} {n}")
    for kind, row in summary["honest_flagged"].items():
        out.append(f"  honest oddity {kind:<34} {row['flagged']} of {row['labels']} flagged")
    if not summary["scores_present"]:
        out.append(
            "anomaly kinds: no scores.jsonl in the run directory, so no PR-AUC of the online "
            "score (replay writes it when the online detectors run)"
        )
    curves = summary["curves"]
    if curves:
        out.append(
            f"  {'kind':<32} {'scorer':<24} {'pos':>5} {'neg':>6} {'PR-AUC':>7} "
            f"{'P@thr':>6} {'R@thr':>6}"
        )
    for c in curves:
        out.append(
            f"  {c['kind']:<32} {c['scorer']:<24} {c['positives']:>5} {c['negatives']:>6} "
            f"{_fmt(c['average_precision']):>7} {_fmt(c['precision_at_threshold']):>6} "
            f"{_fmt(c['recall_at_threshold']):>6}"
        )
    return out


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--labels",
    "labels_path",
    envvar="VOLTGUARD_EVAL_LABELS",
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Ground-truth labels (labels.jsonl of `voltguard simulate --out`). "
    "Default: RUN_DIR/labels.jsonl.",
)
@click.option(
    "--html",
    "html_path",
    envvar="VOLTGUARD_EVAL_HTML",
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a self-contained HTML report with the plots to this file.",
)
@click.option(
    "--format",
    "fmt",
    envvar="VOLTGUARD_EVAL_FORMAT",
    show_envvar=True,
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Terminal output: a table, or one JSON document (with the curves' points).",
)
def evaluate_command(
    run_dir: Path, labels_path: Path | None, html_path: Path | None, fmt: str
) -> None:
    """Score a replay's detections against the simulator's labels.

    RUN_DIR is the --out directory of `voltguard replay` (alerts.jsonl,
    reconciliation.jsonl, bills.jsonl, optionally scores.jsonl). Per fault kind: recall,
    precision and detection delay in event time; the false-positive rate on sessions no
    label mentions; PR-AUC of the online score for the anomaly kinds. Exits with status 2
    on unreadable or missing input, 0 otherwise (it reports, it does not gate).
    """
    if not run_dir.is_dir():
        raise BadInput(f"{run_dir} is not a directory (the --out of `voltguard replay`)")
    alerts, results, sessions, scores, labels = load_run(
        run_dir, labels_path or run_dir / "labels.jsonl"
    )
    found = detections(alerts, results)
    report = evaluate(found, labels, sessions=sessions)
    curves = alert_curves(found, labels)
    if scores is not None:
        curves = score_curves(scores, labels, kinds=ANOMALY_KINDS) + curves
    summary = evaluation_summary(report, curves, scores_present=scores is not None, labels=labels)
    summary["run_dir"] = str(run_dir)
    if html_path is not None:
        from streams.htmlreport import render_html

        html_path.write_text(render_html(summary), encoding="utf-8")
        summary["html"] = str(html_path)
    if fmt == "json":
        click.echo(msgspec.json.encode(summary).decode())
        return
    for line in _text(summary):
        click.echo(line)
    if html_path is not None:
        click.echo(f"HTML report written to {html_path}")
