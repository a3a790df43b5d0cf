"""The retraining job's shell: inputs from files or Kafka, the registry, the announcement.

:func:`run_retrain` loads the model in service from the registry, fits and compares a new
one with :func:`models.offline.retrain`, and only when it is better by the margin writes a
new version, produces its :class:`~topics.records.ModelUpdate` to the model updates topic
(keyed by model name, acknowledged) and then moves the registry's current pointer. The
order matters: a version is never "current" before the workers were told about it, and an
announcement that failed leaves only an unused file behind.

Inputs:

* files (:func:`read_feature_files`, :func:`read_label_files`): ``features.jsonl`` of
  ``voltguard replay --out`` (one SessionFeatures per line, or ``{"topic", "key", "value"}``
  lines), labels as the simulator's ``labels.jsonl`` (SimLabel lines) or AlertLabel lines,
  and the fraud alerts the analyst labels are about (``alerts.jsonl``);
* Kafka (:func:`read_kafka_inputs`): the session features, alert labels and fraud alerts
  topics, committed records, from the beginning to the end they had when the job started.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import orjson
from confluent_kafka import Message

from models.offline import RetrainOutcome, SessionModel, retrain, session_labels
from streams.registry import ModelRegistry
from streams.settings import Settings
from streams.topic_reader import assign_consumer, read_to_end
from topics.catalog import CLOCK_KEY, topic
from topics.codec import decode, encode
from topics.exceptions import RecordDecodeError
from topics.records import AlertLabel, FraudAlert, ModelUpdate, SessionFeatures
from topics.simulation.faults import SimLabel

__all__ = [
    "RetrainInputs",
    "announce",
    "read_alert_files",
    "read_feature_files",
    "read_kafka_inputs",
    "read_label_files",
    "run_retrain",
]

log = logging.getLogger(__name__)


class InputError(ValueError):
    """An input line that is not what it should be; the message names file and line."""


@dataclass
class RetrainInputs:
    """Sessions (latest record per session id) and what the labels say about them."""

    features: dict[str, SessionFeatures] = field(default_factory=dict)
    sim_labels: list[SimLabel] = field(default_factory=list)
    alert_labels: dict[str, AlertLabel] = field(default_factory=dict)
    alert_sessions: dict[str, str] = field(default_factory=dict)
    skipped: int = 0

    def labels(self) -> dict[str, int]:
        """Session id -> 1 fraud / 0 legitimate."""
        return session_labels(
            sim_labels=self.sim_labels,
            alert_labels=self.alert_labels.values(),
            alert_sessions=self.alert_sessions,
        )

    def add_alert(self, alert: FraudAlert) -> None:
        session = alert.session_id or (
            alert.subject_id if alert.subject_type == "session" else None
        )
        if session:
            self.alert_sessions[alert.alert_id] = session


# --------------------------------------------------------------------------- files


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, document) of a JSONL file; a ``{"topic", "value"}`` line is unwrapped
    into ``{"topic": ..., **value}`` so that the caller can tell record types apart."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise InputError(f"{path}:{number}: not a JSON object")
            if "topic" in doc and isinstance(doc.get("value"), dict):
                doc = {**doc["value"], "__topic": doc["topic"]}
            yield number, doc


def _convert(path: Path, number: int, doc: dict[str, Any], record_type: type[Any]) -> Any:
    doc = {k: v for k, v in doc.items() if k != "__topic"}
    try:
        return msgspec.convert(doc, record_type, strict=False)
    except msgspec.ValidationError as exc:
        raise InputError(f"{path}:{number}: not a {record_type.__name__}: {exc}") from None


def read_feature_files(paths: Iterable[Path], inputs: RetrainInputs | None = None) -> RetrainInputs:
    """Session features from JSONL files; a later line for the same session replaces it."""
    inputs = inputs or RetrainInputs()
    for path in paths:
        for number, doc in _lines(path):
            f: SessionFeatures = _convert(path, number, doc, SessionFeatures)
            inputs.features[f.session_id] = f
    return inputs


def read_label_files(paths: Iterable[Path], inputs: RetrainInputs | None = None) -> RetrainInputs:
    """SimLabel (simulator) and AlertLabel (analyst) lines, told apart by their fields."""
    inputs = inputs or RetrainInputs()
    for path in paths:
        for number, doc in _lines(path):
            kind = doc.get("__topic")
            if kind == "alert_labels" or (kind is None and "label" in doc and "alert_id" in doc):
                label: AlertLabel = _convert(path, number, doc, AlertLabel)
                inputs.alert_labels[label.alert_id] = label
            elif kind == "sim_labels" or (kind is None and "subject_type" in doc):
                inputs.sim_labels.append(_convert(path, number, doc, SimLabel))
            else:
                raise InputError(
                    f"{path}:{number}: neither a simulator label (SimLabel) nor an analyst "
                    "label (AlertLabel)"
                )
    return inputs


def read_alert_files(paths: Iterable[Path], inputs: RetrainInputs | None = None) -> RetrainInputs:
    """Fraud alerts (``alerts.jsonl``): which session each labelled alert is about."""
    inputs = inputs or RetrainInputs()
    for path in paths:
        for number, doc in _lines(path):
            inputs.add_alert(_convert(path, number, doc, FraudAlert))
    return inputs


# --------------------------------------------------------------------------- Kafka


def read_kafka_inputs(
    settings: Settings, *, timeout_s: float = 120.0, sim_labels: bool = False
) -> RetrainInputs:
    """Session features, alert labels and fraud alerts from their topics, to their end.

    ``sim_labels`` also reads the simulator's ground truth topic (a simulated fleet sent to
    Kafka with ``voltguard simulate --bootstrap-servers``). Records that do not decode are
    logged and counted in ``skipped``.
    """
    inputs = RetrainInputs()
    features_topic, labels_topic, alerts_topic, sim_topic = (
        topic("session_features"),
        topic("alert_labels"),
        topic("fraud_alerts"),
        topic("sim_labels"),
    )

    def on_message(msg: Message) -> None:
        value = msg.value()
        if value is None or msg.key() == CLOCK_KEY:
            return
        name = msg.topic()
        try:
            if name == features_topic:
                f = decode(value, SessionFeatures)
                inputs.features[f.session_id] = f
            elif name == labels_topic:
                label = decode(value, AlertLabel)
                inputs.alert_labels[label.alert_id] = label
            elif name == alerts_topic:
                inputs.add_alert(decode(value, FraudAlert))
            elif name == sim_topic:
                inputs.sim_labels.append(decode(value, SimLabel))
        except RecordDecodeError as exc:
            log.warning("%s[%d]@%d skipped: %s", name, msg.partition(), msg.offset(), exc)
            inputs.skipped += 1

    consumer = assign_consumer(settings, "retrain")
    try:
        names = [features_topic, labels_topic, alerts_topic] + ([sim_topic] if sim_labels else [])
        read_to_end(consumer, names, on_message, timeout_s=timeout_s)
    finally:
        consumer.close()
    return inputs


def announce(settings: Settings, update: ModelUpdate, *, timeout_s: float = 30.0) -> None:
    """Produce ``update`` to the model updates topic keyed by model name; wait for the ack.

    Raises
    ------
    RuntimeError
        Not acknowledged within ``timeout_s``, or delivery failed.
    """
    from confluent_kafka import Producer

    producer = Producer(
        {**settings.kafka.client_config(), "enable.idempotence": True, "acks": "all"}
    )
    errors: list[object] = []
    producer.produce(
        topic("model_updates"),
        encode(update),
        update.model_name.encode(),
        on_delivery=lambda err, _msg: errors.append(err) if err is not None else None,
    )
    if producer.flush(timeout_s) != 0:
        raise RuntimeError(f"model update {update.version} not acknowledged within {timeout_s:g} s")
    if errors:
        raise RuntimeError(f"model update {update.version} not delivered: {errors[0]}")


# --------------------------------------------------------------------------- the job


def run_retrain(
    inputs: RetrainInputs,
    registry: ModelRegistry,
    *,
    model_name: str,
    now: datetime,
    settings: Settings | None,
    model: SessionModel | None = None,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    margin: float = 0.01,
    unlabelled: Literal["legitimate", "unknown"] = "legitimate",
    dry_run: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Fit, compare with the model in service, publish if better; the summary as a dict.

    ``settings`` None: write the registry only, announce nothing (no Kafka). ``force``
    publishes even when the new model is not better (a first model without labels, a
    deliberate rollback of features). ``dry_run`` publishes nothing at all.
    """
    started = time.perf_counter()
    current_update = registry.current(model_name)
    current = registry.load(current_update) if current_update is not None else None
    outcome: RetrainOutcome = retrain(
        list(inputs.features.values()),
        inputs.labels(),
        current,
        model=model,
        heldout_fraction=heldout_fraction,
        split_seed=split_seed,
        margin=margin,
        unlabelled=unlabelled,
    )
    c, m = outcome.comparison, outcome.model
    publish = (c.better or force) and not dry_run
    update: ModelUpdate | None = None
    if publish:
        metrics = {
            **c.metrics(),
            "threshold": round(m.threshold, 6),
            "train_rows": float(outcome.train_rows),
            "train_positives": float(outcome.train_positives),
            "fit_s": round(m.fit_seconds, 3),
        }
        update = registry.publish(m, model_name=model_name, metrics=metrics, now=now, promote=False)
        if settings is not None:
            announce(settings, update)
        registry.promote(update)
    if publish and update is not None:
        decision = f"published {update.version}" + (" (forced)" if not c.better else "")
    elif dry_run:
        decision = "dry run: nothing published" + (" (would publish)" if c.better or force else "")
    else:
        decision = "not published"

    def fin(v: float | None) -> float | None:
        return None if v is None or not math.isfinite(v) else round(v, 4)

    return {
        "model_name": model_name,
        "rows": outcome.rows,
        "train_rows": outcome.train_rows,
        "heldout_rows": outcome.heldout_rows,
        "labelled_sessions": outcome.labelled_sessions,
        "fraud_sessions": outcome.fraud_sessions,
        "train_positives": outcome.train_positives,
        "heldout_positives": c.heldout_positives,
        "skipped_records": inputs.skipped,
        "model": m.fitted_kind,
        "features": len(m.feature_names),
        "model_input_version": m.model_input_version,
        "fit_s": round(m.fit_seconds, 3),
        "threshold": fin(m.threshold),
        "heldout_ap_new": fin(c.new_ap),
        "heldout_ap_current": fin(c.current_ap),
        "heldout_ap_baseline": fin(c.baseline_ap),
        "heldout_precision_at_threshold": fin(c.new_precision),
        "heldout_recall_at_threshold": fin(c.new_recall),
        "heldout_alerts_at_threshold": c.new_alerts,
        "current_version": current_update.version if current_update else None,
        "margin": margin,
        "better": c.better,
        "reason": c.reason,
        "decision": decision,
        "published": update is not None,
        "announced": update is not None and settings is not None,
        "model_update": orjson.loads(encode(update)) if update is not None else None,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
