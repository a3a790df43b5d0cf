"""The whole billing path without a broker (ingest + billing processors, as `voltguard
replay` runs them) against the simulator's ground truth."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.replay import Replay
from tests.simcheck import BILLING_FAULTS, check
from topics.codec import decode
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation
from topics.simulation.faults import SimLabel


@pytest.fixture(scope="module")
def replayed() -> tuple[Replay, Simulation, list[SimLabel]]:
    sim = Simulation(
        SimulationConfig(seed=5, sessions=450, stations=30, fault_scale=6.0),
        hash_secret=b"replay-test",
        keep_truth=True,
    )
    records = list(sim.records())
    labels = [decode(v, SimLabel) for t, _, v in records if t == "sim_labels"]
    return Replay(hash_secret=b"replay-test").run(records), sim, labels


def test_every_billing_fault_found_exactly_and_no_clean_mismatch(replayed) -> None:
    replay, sim, labels = replayed
    assert sim.truth is not None
    problems, counts = check(replay.results.values(), labels, bills=replay.bills, truth=sim.truth)
    assert problems == []
    kinds = Counter(lab.kind for lab in labels if lab.kind in BILLING_FAULTS)
    assert len(kinds) >= 8 and counts["faults_checked"] == sum(kinds.values())
    assert counts["clean_checked"] > 250 and counts["bills_checked"] == len(sim.truth)
    assert replay.dead_letters == []


def test_replay_is_deterministic(replayed) -> None:
    replay, _, _ = replayed
    sim = Simulation(
        SimulationConfig(seed=5, sessions=450, stations=30, fault_scale=6.0),
        hash_secret=b"replay-test",
    )
    again = Replay(hash_secret=b"replay-test", batch_size=37).run(sim.records())
    assert {k: (r.event_id, r.outcome) for k, r in again.results.items()} == {
        k: (r.event_id, r.outcome) for k, r in replay.results.items()
    }
    assert {k: b.event_id for k, b in again.bills.items()} == {
        k: b.event_id for k, b in replay.bills.items()
    }


def test_session_features_show_the_meter_faults_and_not_on_clean_sessions(replayed) -> None:
    replay, sim, labels = replayed
    assert sim.truth is not None
    kind = {lab.session_id: lab.kind for lab in labels if lab.session_id}
    assert set(replay.features) == set(sim.truth)  # one feature record per billed session
    checks = {
        "meter_reset": lambda f: f["register_resets"] >= 1,
        "meter_rollback": lambda f: f["register_rollbacks"] >= 1,
        "energy_above_capability": lambda f: f["energy_over_capability"] > 1.2,
        "seqno_gap": lambda f: f["seq_gaps"] >= 1,
    }
    seen = Counter()
    for sid, record in replay.features.items():
        f = record.features
        k = kind.get(sid)
        if k in checks:
            seen[k] += 1
            assert checks[k](f), (k, sid, f)
        elif k is None:
            assert not any(check(f) for check in checks.values()), (sid, f)
    assert seen, "the simulation injected no meter fault"
