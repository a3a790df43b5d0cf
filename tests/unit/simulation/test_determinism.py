"""Same seed, same bytes; another seed, another world."""

from __future__ import annotations

import hashlib
from pathlib import Path

from streams.commands.simulate import FILES, simulate_to_files
from tests.unit.simulation.conftest import SECRET
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import iter_records


def _digest(config: SimulationConfig, secret: bytes = SECRET) -> str:
    h = hashlib.sha256()
    for topic, key, value in iter_records(config, hash_secret=secret):
        h.update(topic.encode() + b"\0" + key.encode() + b"\0" + value + b"\n")
    return h.hexdigest()


CFG = SimulationConfig(seed=21, sessions=80, stations=12, sample_interval_s=600, fault_scale=5.0)


def test_same_seed_gives_the_same_bytes() -> None:
    assert _digest(CFG) == _digest(CFG)


def test_different_seed_gives_different_bytes() -> None:
    other = SimulationConfig(seed=22, sessions=80, stations=12, sample_interval_s=600,
                             fault_scale=5.0)  # fmt: skip
    assert _digest(CFG) != _digest(other)


def test_different_secret_changes_only_hashes() -> None:
    assert _digest(CFG) != _digest(CFG, secret=b"another-secret")


def test_world_does_not_depend_on_the_session_count() -> None:
    from topics.simulation.engine import Simulation

    small = Simulation(CFG, hash_secret=SECRET).world
    big = Simulation(
        SimulationConfig(seed=21, sessions=500, stations=12, sample_interval_s=600),
        hash_secret=SECRET,
    ).world
    assert [s.record for s in small.stations] == [s.record for s in big.stations]
    assert small.drivers == big.drivers


def test_files_are_byte_identical_across_runs(tmp_path: Path) -> None:
    a = simulate_to_files(CFG, hash_secret=SECRET, out_dir=tmp_path / "a")
    b = simulate_to_files(CFG, hash_secret=SECRET, out_dir=tmp_path / "b")
    assert a.as_dict() | {"elapsed_s": 0, "events_per_s": 0} == b.as_dict() | {
        "elapsed_s": 0,
        "events_per_s": 0,
    }
    for name in FILES.values():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
