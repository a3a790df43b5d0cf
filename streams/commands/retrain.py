"""``voltguard retrain``: fit a session model, compare it with the one in service, publish if better.

The shell around :func:`streams.retrain.run_retrain`. Inputs come from files when
``--features`` is given, else from Kafka (session features, alert labels and fraud alerts,
read to their end). A new version goes to the registry and, with ``--announce`` (the
default), to the model updates topic, where the workers' model followers pick it up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from models.exceptions import RegistryError
from models.offline import SessionModel
from streams.registry import ModelRegistry
from streams.settings import ConfigError, Settings

__all__ = ["retrain"]

_FILES = click.Path(exists=True, dir_okay=False, path_type=Path)


def _settings(bootstrap_servers: str | None) -> Settings:
    from streams.cli import _settings as cli_settings  # late: streams.cli imports this module

    return cli_settings(bootstrap_servers)


@click.command("retrain")
@click.option(
    "--features",
    "feature_files",
    multiple=True,
    type=_FILES,
    envvar="VOLTGUARD_RETRAIN_FEATURES",
    show_envvar=True,
    help="features.jsonl of `voltguard replay --out` (one SessionFeatures per line); "
    "repeatable. Given: inputs come from files. Not given: from Kafka.",
)
@click.option(
    "--labels",
    "label_files",
    multiple=True,
    type=_FILES,
    envvar="VOLTGUARD_RETRAIN_LABELS",
    show_envvar=True,
    help="Labels: the simulator's labels.jsonl (SimLabel lines) and/or AlertLabel lines; "
    "repeatable. Only with --features.",
)
@click.option(
    "--alerts",
    "alert_files",
    multiple=True,
    type=_FILES,
    envvar="VOLTGUARD_RETRAIN_ALERTS",
    show_envvar=True,
    help="Fraud alerts (alerts.jsonl of `voltguard replay --out`) that AlertLabel lines are "
    "about, to find their sessions; repeatable. Only with --features.",
)
@click.option(
    "--kafka-sim-labels",
    is_flag=True,
    envvar="VOLTGUARD_RETRAIN_KAFKA_SIM_LABELS",
    show_envvar=True,
    help="With Kafka inputs, also read the simulator's ground-truth labels topic "
    "(a simulated fleet sent with `voltguard simulate --bootstrap-servers`).",
)
@click.option(
    "--registry",
    "registry_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="VOLTGUARD_MODEL_REGISTRY",
    default="./model-registry",
    show_default=True,
    show_envvar=True,
    help="Root directory of the model registry (shared with the workers).",
)
@click.option(
    "--model-name",
    envvar="VOLTGUARD_MODEL_NAME",
    default="session-anomaly",
    show_default=True,
    show_envvar=True,
    help="Registry name of the model (the key on the model updates topic).",
)
@click.option(
    "--model",
    "kind",
    type=click.Choice(["auto", "iforest", "blend"]),
    envvar="VOLTGUARD_RETRAIN_MODEL",
    default="auto",
    show_default=True,
    show_envvar=True,
    help="iforest: IsolationForest only. blend: IsolationForest blended with a "
    "HistGradientBoosting classifier on labelled sessions. auto: blend when the training "
    "part has --min-positive-labels fraud labels.",
)
@click.option(
    "--n-estimators",
    type=click.IntRange(1, 2000),
    envvar="VOLTGUARD_RETRAIN_N_ESTIMATORS",
    default=100,
    show_default=True,
    show_envvar=True,
    help="IsolationForest trees.",
)
@click.option(
    "--max-samples",
    type=click.IntRange(2),
    envvar="VOLTGUARD_RETRAIN_MAX_SAMPLES",
    default=1024,
    show_default=True,
    show_envvar=True,
    help="Sessions per IsolationForest tree (1024 had twice the held-out AP of 256).",
)
@click.option(
    "--threshold-quantile",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    envvar="VOLTGUARD_RETRAIN_THRESHOLD_QUANTILE",
    default=0.99,
    show_default=True,
    show_envvar=True,
    help="Quantile of the training scores that becomes the alert threshold.",
)
@click.option(
    "--blend-weight",
    type=click.FloatRange(0, 1),
    envvar="VOLTGUARD_RETRAIN_BLEND_WEIGHT",
    default=0.5,
    show_default=True,
    show_envvar=True,
    help="Weight of the supervised probability in a blended score.",
)
@click.option(
    "--min-positive-labels",
    type=click.IntRange(2),
    envvar="VOLTGUARD_RETRAIN_MIN_POSITIVE_LABELS",
    default=20,
    show_default=True,
    show_envvar=True,
    help="Fraud-labelled training sessions --model auto needs to blend.",
)
@click.option(
    "--seed",
    type=int,
    envvar="VOLTGUARD_RETRAIN_SEED",
    default=0,
    show_default=True,
    show_envvar=True,
    help="Seed of the models.",
)
@click.option(
    "--heldout-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    envvar="VOLTGUARD_RETRAIN_HELDOUT_FRACTION",
    default=0.2,
    show_default=True,
    show_envvar=True,
    help="Share of sessions held out for evaluation (by a seeded hash of the session id: "
    "keep it and --split-seed fixed so no model is judged on what it trained on).",
)
@click.option(
    "--split-seed",
    type=int,
    envvar="VOLTGUARD_RETRAIN_SPLIT_SEED",
    default=0,
    show_default=True,
    show_envvar=True,
    help="Seed of the held-out split.",
)
@click.option(
    "--margin",
    type=click.FloatRange(0, 1),
    envvar="VOLTGUARD_RETRAIN_MARGIN",
    default=0.01,
    show_default=True,
    show_envvar=True,
    help="Held-out average precision the new model must gain over the one in service "
    "(or over the positive rate when none is) to be published.",
)
@click.option(
    "--unlabelled",
    type=click.Choice(["legitimate", "unknown"]),
    envvar="VOLTGUARD_RETRAIN_UNLABELLED",
    default="legitimate",
    show_default=True,
    show_envvar=True,
    help="How sessions without a label count: as legitimate (simulator ground truth; nearly "
    "all unlabelled sessions in production), or not at all in training and evaluation.",
)
@click.option(
    "--announce/--no-announce",
    envvar="VOLTGUARD_RETRAIN_ANNOUNCE",
    default=True,
    show_default=True,
    show_envvar=True,
    help="Produce the ModelUpdate of a published version to the model updates topic "
    "(--no-announce: registry files only, no Kafka when inputs are files).",
)
@click.option(
    "--bootstrap-servers",
    envvar="VOLTGUARD_BOOTSTRAP_SERVERS",
    default=None,
    show_envvar=True,
    help="Kafka bootstrap servers, host:port[,host:port]. Default: the local broker of "
    "`voltguard kafka up` if it runs, else 127.0.0.1:9092.",
)
@click.option(
    "--kafka-timeout",
    "kafka_timeout_s",
    type=click.FloatRange(1),
    envvar="VOLTGUARD_RETRAIN_KAFKA_TIMEOUT_S",
    default=120.0,
    show_default=True,
    show_envvar=True,
    help="Longest time to read the input topics to their end, seconds.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="VOLTGUARD_RETRAIN_DRY_RUN",
    show_envvar=True,
    help="Fit and evaluate, publish nothing.",
)
@click.option(
    "--force",
    is_flag=True,
    envvar="VOLTGUARD_RETRAIN_FORCE",
    show_envvar=True,
    help="Publish even when not better (a first model without labels to judge it by).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    envvar="VOLTGUARD_RETRAIN_FORMAT",
    default="text",
    show_default=True,
    show_envvar=True,
    help="Summary format.",
)
def retrain(
    feature_files: tuple[Path, ...],
    label_files: tuple[Path, ...],
    alert_files: tuple[Path, ...],
    kafka_sim_labels: bool,
    registry_dir: Path,
    model_name: str,
    kind: str,
    n_estimators: int,
    max_samples: int,
    threshold_quantile: float,
    blend_weight: float,
    min_positive_labels: int,
    seed: int,
    heldout_fraction: float,
    split_seed: int,
    margin: float,
    unlabelled: str,
    announce: bool,
    bootstrap_servers: str | None,
    kafka_timeout_s: float,
    dry_run: bool,
    force: bool,
    fmt: str,
) -> None:
    """Retrain the session anomaly model and publish it only if it beats the one in service.

    Reads session features and labels (files with --features, else the Kafka topics),
    holds out a seeded share of sessions, fits on the rest, compares held-out average
    precision with the version in service, and when better by --margin writes a new
    registry version and announces it on the model updates topic; workers reload it.
    """
    from streams.retrain import (
        InputError,
        RetrainInputs,
        read_alert_files,
        read_feature_files,
        read_kafka_inputs,
        read_label_files,
        run_retrain,
    )

    if not feature_files and (label_files or alert_files):
        raise click.UsageError("--labels and --alerts go with --features (file inputs)")
    if feature_files and kafka_sim_labels:
        raise click.UsageError("--kafka-sim-labels goes with Kafka inputs (no --features)")
    try:
        from models.registry import check_name

        check_name(model_name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model-name") from None
    settings = _settings(bootstrap_servers) if announce or not feature_files else None
    try:
        if feature_files:
            inputs = read_feature_files(feature_files, RetrainInputs())
            read_label_files(label_files, inputs)
            read_alert_files(alert_files, inputs)
        else:
            assert settings is not None
            inputs = read_kafka_inputs(
                settings, timeout_s=kafka_timeout_s, sim_labels=kafka_sim_labels
            )
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(f"reading the input topics: {exc}") from None
    if not inputs.features:
        raise click.ClickException("no session features to train on")
    model = SessionModel(
        kind=kind,  # type: ignore[arg-type]
        n_estimators=n_estimators,
        max_samples=max_samples,
        threshold_quantile=threshold_quantile,
        blend_weight=blend_weight,
        min_positive_labels=min_positive_labels,
        seed=seed,
    )
    try:
        summary = run_retrain(
            inputs,
            ModelRegistry(registry_dir),
            model_name=model_name,
            now=datetime.now(UTC),
            settings=settings if announce else None,
            model=model,
            heldout_fraction=heldout_fraction,
            split_seed=split_seed,
            margin=margin,
            unlabelled=unlabelled,  # type: ignore[arg-type]
            dry_run=dry_run,
            force=force,
        )
    except RegistryError as exc:
        raise click.ClickException(f"model in service cannot be loaded: {exc}") from None
    except (ValueError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except RuntimeError as exc:  # announcement not acknowledged
        raise click.ClickException(str(exc)) from None
    summary["registry"] = str(registry_dir)
    if fmt == "json":
        click.echo(orjson.dumps(summary).decode())
        return
    click.echo(_text(summary))


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _text(s: dict[str, Any]) -> str:
    current = (
        f"current {s['current_version']} {_f(s['heldout_ap_current'])}"
        if s["current_version"]
        else f"no model in service (baseline {_f(s['heldout_ap_baseline'])})"
    )
    lines = [
        f"retrain {s['model_name']}: {s['rows']} sessions ({s['train_rows']} train, "
        f"{s['heldout_rows']} held out), {s['labelled_sessions']} labelled, "
        f"{s['fraud_sessions']} fraud ({s['train_positives']} train, "
        f"{s['heldout_positives']} held out)",
        f"  model {s['model']}, {s['features']} features (input v{s['model_input_version']}), "
        f"fit {s['fit_s']} s, threshold {_f(s['threshold'])}",
        f"  held-out AP: new {_f(s['heldout_ap_new'])} vs {current}, margin {s['margin']}",
        f"  at threshold: precision {_f(s['heldout_precision_at_threshold'])}, recall "
        f"{_f(s['heldout_recall_at_threshold'])}, {s['heldout_alerts_at_threshold']} alerts",
        f"  decision: {s['decision']} ({s['reason']})",
    ]
    if s["model_update"]:
        u = s["model_update"]
        lines.append(
            f"  {s['registry']}/{u['artifact']} sha256 {u['sha256'][:16]}..."
            + (" announced on the model updates topic" if s["announced"] else " (not announced)")
        )
    return "\n".join(lines)
