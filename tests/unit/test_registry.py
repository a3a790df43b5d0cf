"""streams/registry.py and models/registry.py: versions, atomic files, verified loads."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import pytest

from models.exceptions import ArtifactMissing, ChecksumMismatch, IncompatibleModel
from models.offline import SessionModel
from streams.model_follower import LoadedModel, ModelHolder
from streams.registry import ModelRegistry

NOW = datetime(2024, 5, 6, tzinfo=UTC)
ROWS = [{"a": float(i % 13), "b": float(i % 7)} for i in range(200)]


def model(seed: int = 0) -> SessionModel:
    return SessionModel(n_estimators=10, max_samples=64, seed=seed).fit_many(ROWS)


def test_publish_then_load_round_trips_and_versions_increase(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.current("m") is None and reg.versions("m") == []
    first = reg.publish(model(1), model_name="m", metrics={"heldout_ap": 0.5}, now=NOW)
    second = reg.publish(model(2), model_name="m", metrics={"heldout_ap": 0.6}, now=NOW)
    assert (first.version, first.replaces) == ("v0001", None)
    assert (second.version, second.replaces, second.artifact) == ("v0002", "v0001", "m/v0002.pkl")
    assert second.feature_names == ["a", "b"] and second.metrics == {"heldout_ap": 0.6}
    assert reg.versions("m") == ["v0001", "v0002"] and reg.current("m") == second
    meta = msgspec.json.decode((tmp_path / "m" / "v0002.json").read_bytes())
    assert meta["sha256"] == second.sha256
    loaded = reg.load(first)
    np.testing.assert_array_equal(loaded.score_many(ROWS[:20]), model(1).score_many(ROWS[:20]))
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")]


def test_publish_without_promote_leaves_the_current_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    first = reg.publish(model(), model_name="m", metrics={}, now=NOW)
    second = reg.publish(model(), model_name="m", metrics={}, now=NOW, promote=False)
    assert reg.current("m") == first and second.replaces == "v0001"
    reg.promote(second)
    assert reg.current("m") == second


def test_a_version_taken_meanwhile_is_never_overwritten(tmp_path: Path, monkeypatch) -> None:
    reg = ModelRegistry(tmp_path)
    reg.publish(model(), model_name="m", metrics={}, now=NOW)
    (tmp_path / "m" / "v0002.pkl").write_bytes(b"somebody else's")
    monkeypatch.setattr(reg, "versions", lambda name: ["v0001"])  # a stale listing
    update = reg.publish(model(), model_name="m", metrics={}, now=NOW)
    assert update.version == "v0003"
    assert (tmp_path / "m" / "v0002.pkl").read_bytes() == b"somebody else's"


def test_a_file_that_does_not_match_its_sha256_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    update = reg.publish(model(), model_name="m", metrics={}, now=NOW)
    path = tmp_path / update.artifact
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=r"m/v0001.pkl: sha256 [0-9a-f]{64} is not"):
        reg.load(update)


def test_missing_escaping_and_mismatched_artifacts_are_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    update = reg.publish(model(), model_name="m", metrics={}, now=NOW)
    with pytest.raises(ArtifactMissing, match="cannot read"):
        reg.load(msgspec.structs.replace(update, artifact="m/v0009.pkl"))
    (tmp_path / "outside.pkl").write_bytes(b"x")
    with pytest.raises(ArtifactMissing, match="outside the registry"):
        reg.load(msgspec.structs.replace(update, artifact="../outside.pkl"))
    with pytest.raises(IncompatibleModel, match="model features"):
        reg.load(msgspec.structs.replace(update, feature_names=["a", "b", "c"]))
    with pytest.raises(ValueError, match="model name"):
        reg.publish(model(), model_name="../x", metrics={}, now=NOW)


def test_holder_swaps_atomically_and_wait_for_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    u1 = reg.publish(model(1), model_name="m", metrics={}, now=NOW)
    u2 = reg.publish(model(2), model_name="m", metrics={}, now=NOW)
    holder = ModelHolder()
    assert holder.current() is None and not holder.wait_for_version("v0001", 0.01)
    holder.swap(LoadedModel(model=reg.load(u1), update=u1))
    batch_model = holder.current()
    previous = holder.swap(LoadedModel(model=reg.load(u2), update=u2))
    assert previous is batch_model and batch_model.version == "v0001"  # a batch keeps its model
    assert holder.current().version == "v0002" and holder.wait_for_version("v0002", 0.01)
