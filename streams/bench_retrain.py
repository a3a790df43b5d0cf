"""Retraining figures: fit time, batch versus row-by-row scoring, held-out AP per model.

``python -m streams.bench_retrain --features features.jsonl --labels labels.jsonl`` prints
one JSON document (and writes it with ``--json-out``). Held-out average precision is the
mean over ``--splits`` seeded splits (the simulator's labels are few: one split of 4,000
sessions holds about 30 fraud sessions, and its AP moves by a few hundredths from split to
split).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import click
import orjson

from models.offline import SessionModel, retrain
from streams.retrain import RetrainInputs, read_feature_files, read_label_files

__all__ = ["main"]

MODELS: dict[str, dict[str, Any]] = {
    "iforest-256": {"kind": "iforest", "max_samples": 256},
    "iforest-1024": {"kind": "iforest", "max_samples": 1024},
    "blend-0.5": {"kind": "blend", "blend_weight": 0.5},
    "hgb-only": {"kind": "blend", "blend_weight": 1.0},
}


def _scoring(model: SessionModel, rows: list[dict[str, float]], batch: int) -> dict[str, float]:
    rows = (rows * (batch // len(rows) + 1))[:batch]
    model.score_many(rows)  # warm
    runs, cpu = [], []
    for _ in range(5):
        started, started_cpu = time.perf_counter(), time.process_time()
        model.score_many(rows)
        runs.append((time.perf_counter() - started) / batch * 1e6)
        cpu.append((time.process_time() - started_cpu) / batch * 1e6)
    one = rows[:200]
    started, started_cpu = time.perf_counter(), time.process_time()
    for x in one:
        model.score_one(x)
    per_row = (time.perf_counter() - started) / len(one) * 1e6
    per_row_cpu = (time.process_time() - started_cpu) / len(one) * 1e6
    return {
        f"batch_{batch}_us_per_row": round(statistics.median(runs), 2),
        f"batch_{batch}_cpu_us_per_row": round(statistics.median(cpu), 2),
        "row_by_row_us_per_row": round(per_row, 1),
        "row_by_row_cpu_us_per_row": round(per_row_cpu, 1),
        "speedup": round(per_row / statistics.median(runs), 1),
    }


@click.command()
@click.option("--features", "feature_files", multiple=True, required=True, type=Path,
              help="features.jsonl files.")  # fmt: skip
@click.option("--labels", "label_files", multiple=True, type=Path, help="labels.jsonl files.")
@click.option("--splits", default=5, show_default=True, help="Seeded held-out splits.")
@click.option("--batch", default=1000, show_default=True, help="Batch size of score_many.")
@click.option("--json-out", type=Path, default=None, help="Also write the figures here.")
def main(
    feature_files: tuple[Path, ...],
    label_files: tuple[Path, ...],
    splits: int,
    batch: int,
    json_out: Path | None,
) -> None:
    """Fit time, scoring speed and held-out AP of the offline models."""
    inputs = read_label_files(label_files, read_feature_files(feature_files, RetrainInputs()))
    features = list(inputs.features.values())
    labels = inputs.labels()
    report: dict[str, Any] = {
        "sessions": len(features),
        "fraud_sessions": sum(labels.get(f.session_id, 0) for f in features),
        "models": {},
    }
    for name, params in MODELS.items():
        aps, fits, cpus = [], [], []
        last = None
        for seed in range(splits):
            started_cpu = time.process_time()
            out = retrain(features, labels, None, model=SessionModel(**params), split_seed=seed)
            cpus.append(time.process_time() - started_cpu)
            aps.append(out.comparison.new_ap)
            fits.append(out.model.fit_seconds)
            last = out
        assert last is not None
        report["models"][name] = {
            "heldout_ap_mean": round(statistics.mean(aps), 3),
            "heldout_ap_per_split": [round(a, 3) for a in aps],
            "fit_s_median": round(statistics.median(fits), 3),
            "fit_and_evaluate_cpu_s_median": round(statistics.median(cpus), 3),
            "train_rows": last.train_rows,
            "heldout_positives": last.comparison.heldout_positives,
            "precision_at_threshold": round(last.comparison.new_precision, 3),
            "recall_at_threshold": round(last.comparison.new_recall, 3),
            **_scoring(last.model, [f.features for f in features], batch),
        }
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    click.echo(text)
    if json_out is not None:
        json_out.write_text(text + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
