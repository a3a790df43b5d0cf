"""``voltguard replay``: bills and reconciliation results from files, without a broker.

The shell around :class:`streams.replay.Replay`: reads JSONL files (``voltguard simulate
--out`` output, or ``voltguard send`` lines), runs the ingest and billing processors the
workers run, writes what they would have published and prints a summary.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import click
import msgspec

from models.evaluation import Report, detections, evaluate
from streams.replay import Replay, time_ordered
from streams.settings import ConfigError, Settings
from topics.records import SessionFeatures
from topics.simulation.faults import SimLabel

__all__ = ["replay"]

_encode = msgspec.json.Encoder().encode


def _write(path: Path, records: list[Any]) -> None:
    with path.open("wb") as handle:
        for record in records:
            handle.write(_encode(record) + b"\n")


def summarize(run: Replay, elapsed_s: float) -> dict[str, Any]:
    """Counts and money of a replay, for the terminal or ``--format json``."""
    outcomes = Counter(r.outcome for r in run.results.values())
    money: dict[str, dict[str, int]] = defaultdict(lambda: Counter())  # type: ignore[arg-type]
    for r in run.results.values():
        if r.currency is None:
            continue
        m = money[r.currency]
        m["expected_minor"] += r.expected_minor
        m["captured_minor"] += r.captured_minor
        m["refunded_minor"] += r.refunded_minor
        if r.outcome in ("undercharged", "missing_payment"):
            m["leakage_minor"] += -r.delta_minor
        elif r.outcome != "matched":
            m["other_mismatch_delta_minor"] += r.delta_minor
    return {
        "input_records": run.counts["input"],
        "bills": len(run.bills),
        "results": len(run.results),
        "outcomes": dict(outcomes.most_common()),
        "money_by_currency": {c: dict(v) for c, v in sorted(money.items())},
        "bill_publications": run.counts["bill_publications"],
        "result_publications": run.counts["result_publications"],
        "mismatch_publications": run.mismatch_publications,
        "dead_letters": len(run.dead_letters),
        "open_cases": sum(len(e.cases) for e in run.billing.engines.values()),
        "elapsed_s": round(elapsed_s, 3),
        "records_per_s": round(run.counts["input"] / elapsed_s) if elapsed_s else None,
    }


@click.command("replay")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write bills.jsonl, reconciliation.jsonl (latest version of each result), "
    "mismatches.jsonl and dead_letters.jsonl here; with detection also alerts.jsonl, "
    "features.jsonl (latest features of every session, token features merged in) and "
    "scores.jsonl (the online score of every session).",
)
@click.option(
    "--hash-secret",
    envvar="VOLTGUARD_HASH_SECRET",
    required=True,
    show_envvar=True,
    help="Key of the token hashes (the same as the simulator's and the worker's).",
)
@click.option(
    "--detect/--no-detect",
    default=True,
    show_default=True,
    help="Also run the fraud rules (writes alerts.jsonl) and, when a labels.jsonl from "
    "`voltguard simulate` is among the inputs, score detections against it.",
)
@click.option(
    "--model-registry",
    envvar="VOLTGUARD_MODEL_REGISTRY",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_envvar=True,
    help="Also score with the offline model in service in this registry (its current "
    "version), as the detection worker would; without it, rules and online detectors only.",
)
@click.option(
    "--model-name",
    envvar="VOLTGUARD_MODEL_NAME",
    default="session-anomaly",
    show_default=True,
    show_envvar=True,
    help="Name of the model in the registry.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Summary format.",
)
def replay(
    inputs: tuple[Path, ...],
    out_dir: Path | None,
    hash_secret: str,
    detect: bool,
    model_registry: Path | None,
    model_name: str,
    fmt: str,
) -> None:
    """Run ingest, billing and reconciliation on JSONL files, without a broker.

    INPUTS are files or directories (every *.jsonl in them). Station and tariff files are
    read first; the rest are merged by time. Grace periods come from the same
    VOLTGUARD_* variables as the worker's, so the results equal the worker's for the same
    input.
    """
    files: list[Path] = []
    for path in inputs:
        files += sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    label_files = [f for f in files if f.name == "labels.jsonl"]
    files = [f for f in files if f.name != "labels.jsonl"]
    if not files:
        raise click.UsageError("no .jsonl input files")
    try:
        config = Settings.from_env().reconciliation_config()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    started = time.perf_counter()
    try:
        kw = {"hash_secret": hash_secret.encode(), "config": config}
        model = _model_in_service(model_registry, model_name) if detect else None
        run = (
            Replay.with_detection(model=model, **kw)  # type: ignore[arg-type]
            if detect
            else Replay(**kw)  # type: ignore[arg-type]
        ).run(time_ordered(files))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    summary = summarize(run, time.perf_counter() - started)
    report = None
    if run.detection is not None:
        alerts = sorted(run.detection.alerts.values(), key=lambda a: a.event_time)
        summary["alerts"] = dict(Counter(a.kind for a in alerts).most_common())
        if label_files:
            labels = [
                msgspec.json.decode(value, type=SimLabel)
                for f in label_files
                for value in _label_values(f)
            ]
            found = detections(alerts, run.results.values())
            report = evaluate(found, labels, sessions=len(run.bills))
            summary["evaluation"] = _report_dict(report)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        results = sorted(run.results.values(), key=lambda r: r.result_id)
        _write(out_dir / "bills.jsonl", sorted(run.bills.values(), key=lambda b: b.session_id))
        _write(out_dir / "reconciliation.jsonl", results)
        _write(out_dir / "mismatches.jsonl", [r for r in results if r.outcome != "matched"])
        _write(out_dir / "dead_letters.jsonl", run.dead_letters)
        if run.detection is not None:
            _write(out_dir / "alerts.jsonl", alerts)
            _write(out_dir / "features.jsonl", _merged_features(run))
            _write(
                out_dir / "scores.jsonl",
                sorted(run.detection.scores.values(), key=lambda s: (s.event_time, s.session_id)),
            )
        summary["out_dir"] = str(out_dir)
    if fmt == "json":
        click.echo(msgspec.json.encode(summary).decode())
        return
    click.echo(
        f"replayed {summary['input_records']} records in {summary['elapsed_s']} s: "
        f"{summary['bills']} bills, {summary['results']} reconciliation results, "
        f"{summary['dead_letters']} dead letters"
    )
    for outcome, n in summary["outcomes"].items():
        click.echo(f"  {outcome:<30} {n}")
    for currency, m in summary["money_by_currency"].items():
        click.echo(
            f"  {currency}: expected {m.get('expected_minor', 0)}, captured "
            f"{m.get('captured_minor', 0)}, refunded {m.get('refunded_minor', 0)}, "
            f"leakage {m.get('leakage_minor', 0)} (minor units)"
        )
    for kind, n in summary.get("alerts", {}).items():
        click.echo(f"  alert {kind:<32} {n}")
    if report is not None:
        click.echo(
            f"  {'kind':<32} {'labels':>6} {'found':>6} {'recall':>7} {'precision':>9} {'delay':>8}"
        )
        for kind, row in sorted(summary["evaluation"]["kinds"].items()):
            click.echo(
                f"  {kind:<32} {row['labels']:>6} {row['detections']:>6} {_fmt(row['recall']):>7} "
                f"{_fmt(row['precision']):>9} {_fmt_delay(row['delay_s']):>8}"
            )
        click.echo(
            f"  clean sessions flagged: {report.clean_sessions_flagged} of {report.sessions} "
            f"({report.clean_flag_rate:.2%})"
        )
    if out_dir is not None:
        click.echo(f"written to {out_dir}")


def _merged_features(run: Replay) -> list[SessionFeatures]:
    """The latest features of every session, its token features merged in, in time order."""
    token = run.detection.token_features if run.detection is not None else {}
    out = []
    for f in sorted(run.features.values(), key=lambda f: (f.event_time, f.session_id)):
        extra = token.get(f.session_id)
        out.append(msgspec.structs.replace(f, features={**f.features, **extra}) if extra else f)
    return out


def _model_in_service(registry: Path | None, name: str) -> Any:
    """``() -> LoadedModel`` of the registry's current version, or None without one."""
    if registry is None:
        return None
    from models.exceptions import RegistryError
    from streams.model_follower import LoadedModel
    from streams.registry import ModelRegistry

    reg = ModelRegistry(registry)
    try:
        update = reg.current(name)
        if update is None:
            raise click.ClickException(f"{registry}: no version of {name!r} in service")
        loaded = LoadedModel(model=reg.load(update), update=update)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"scoring with {name} {update.version} from {registry}", err=True)
    return lambda: loaded


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt_delay(value: float | None) -> str:
    return "-" if value is None else f"{value / 60:.1f}m"


def _label_values(path: Path) -> list[bytes]:
    out = []
    for raw in path.read_bytes().splitlines():
        if raw.strip():
            out.append(msgspec.json.encode(msgspec.json.decode(raw)["value"]))
    return out


def _report_dict(report: Report) -> dict[str, Any]:
    return {
        "kinds": {
            kind: {
                "labels": s.labels,
                "detections": s.detections,
                "recall": s.recall,
                "precision": s.precision,
                "delay_s": s.delay_s,
            }
            for kind, s in report.kinds.items()
        },
        "sessions": report.sessions,
        "clean_sessions_flagged": report.clean_sessions_flagged,
        "false_positive_kinds": report.false_positive_kinds,
    }
