"""`voltguard replay` on `voltguard simulate` files: bills, results, alerts and the scores."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from streams.cli import main
from streams.commands.simulate import simulate_to_files
from topics.simulation.config import SimulationConfig


def test_replay_writes_results_and_scores_detections(tmp_path: Path) -> None:
    sim_dir = tmp_path / "sim"
    config = SimulationConfig(seed=31, sessions=300, stations=20, fault_scale=4.0)
    simulate_to_files(config, hash_secret=b"cli-secret", out_dir=sim_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["replay", str(sim_dir), "--out", str(out), "--format", "json"],
        env={"VOLTGUARD_HASH_SECRET": "cli-secret"},
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["bills"] >= 295 and summary["dead_letters"] == 0
    assert summary["outcomes"]["matched"] > 250
    kinds = summary["evaluation"]["kinds"]
    assert kinds["overcharge"]["recall"] == 1.0 and kinds["overcharge"]["precision"] == 1.0
    assert summary["evaluation"]["clean_sessions_flagged"] == 0
    bills = (out / "bills.jsonl").read_text().splitlines()
    assert len(bills) == summary["bills"]
    assert (out / "alerts.jsonl").exists() and (out / "mismatches.jsonl").exists()
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == summary["bills"]
    assert set(scores[0]) == {
        "session_id", "station_id", "token_hash", "event_time", "score", "threshold",
        "detector", "model_version", "parts",
    }  # fmt: skip
    assert {"river-hst", "station-baseline"} == set(scores[-1]["parts"])
    assert scores[0]["threshold"] is None  # each partition warms up first (150 sessions)
    features = [json.loads(line) for line in (out / "features.jsonl").read_text().splitlines()]
    assert {f["session_id"] for f in features} == {s["session_id"] for s in scores}
    with_token = [f for f in features if f["token_hash"]]
    assert with_token and all("token_night_share" in f["features"] for f in with_token)
    assert all("energy_over_power_integral" in f["features"] for f in features)


def test_replay_scores_with_the_model_in_service_of_a_registry(tmp_path: Path) -> None:
    """Train on one run's features, then replay another run with that registry: the
    model's alerts come out with its version; a registry without a model is an error."""
    from models.offline import SessionModel
    from streams.registry import ModelRegistry

    env = {"VOLTGUARD_HASH_SECRET": "cli-secret"}
    sims = {}
    for seed in (32, 33):
        sims[seed] = tmp_path / f"sim{seed}"
        config = SimulationConfig(seed=seed, sessions=300, stations=20, fault_scale=4.0)
        simulate_to_files(config, hash_secret=b"cli-secret", out_dir=sims[seed])
    train = tmp_path / "train"
    result = CliRunner().invoke(main, ["replay", str(sims[32]), "--out", str(train)], env=env)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x)["features"] for x in (train / "features.jsonl").read_text().splitlines()]
    registry = tmp_path / "registry"
    update = ModelRegistry(registry).publish(
        SessionModel(seed=1, threshold_quantile=0.9).fit_many(rows), model_name="session-anomaly",
        metrics={},
        now=__import__("datetime").datetime(2024, 1, 1, tzinfo=__import__("datetime").UTC),
    )  # fmt: skip
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["replay", str(sims[33]), "--out", str(out), "--model-registry", str(registry)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    alerts = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines()]
    offline = [a for a in alerts if a["kind"] == "session_anomaly"]
    assert offline and {a["model_version"] for a in offline} == {update.version}
    empty = CliRunner().invoke(
        main, ["replay", str(sims[33]), "--model-registry", str(tmp_path / "none")], env=env
    )
    assert empty.exit_code != 0 and "no version of 'session-anomaly' in service" in empty.output
