"""Every fault kind is injected and labelled, and each label is visible on the wire."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.unit.simulation.conftest import SECRET, Run, WireSession, sessions_from_frames
from topics.identity import hash_identifier
from topics.simulation.faults import ALL_KINDS, FAULT_KINDS, HONEST_KINDS, is_honest
from topics.simulation.world import km_between


class Wire:
    """A faulty run read back: sessions, payments by session, labels by kind."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.sessions = sessions_from_frames(run.values("ocpp_frames"))
        self.payments: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.by_payment_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in run.values("psp_payment_events"):
            self.payments[p["session_id"]].append(p)
            self.by_payment_id[p["payment_id"]].append(p)
        self.labels: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for label in run.values("sim_labels"):
            self.labels[label["kind"]].append(label)
        self.stations = {s.station_id: s for s in run.sim.world.stations}

    def session(self, label: dict[str, Any], i: int = 0) -> WireSession:
        return self.sessions[label["session_ids"][i]]

    def kinds(self, label: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        return [p for p in self.payments[label["session_id"]] if p["kind"] == kind]


@pytest.fixture(scope="module")
def wire(faulty_run: Run) -> Wire:
    return Wire(faulty_run)


def test_every_kind_is_labelled_at_a_high_fault_rate(wire: Wire) -> None:
    missing = [k for k in ALL_KINDS if not wire.labels.get(k)]
    assert not missing, f"no label of {missing}; got {sorted(wire.labels)}"
    assert wire.run.sim.summary.labels_by_kind == {k: len(v) for k, v in wire.labels.items()}


def test_labels_are_well_formed(wire: Wire) -> None:
    ids = set()
    for kind, labels in wire.labels.items():
        for label in labels:
            assert label["event_id"] not in ids
            ids.add(label["event_id"])
            assert label["honest"] == is_honest(kind)
            assert label["subject_id"]
            for sid in label["session_ids"]:
                if kind != "orphan_payment":
                    assert sid in wire.sessions, (kind, sid)
            for mid in label["message_ids"]:
                station, _, uid = mid.partition("|")
                assert station in wire.stations and uid


def _energy(ws: WireSession) -> int:
    return ws.meter_stop - ws.meter_start  # type: ignore[operator]


def _registers(ws: WireSession) -> list[int]:
    return [s.energy_wh for s in ws.samples if s.energy_wh is not None]  # type: ignore[misc]


def _check(kind: str, label: dict[str, Any], wire: Wire) -> None:
    if kind == "cloned_token_overlap":
        a, b = wire.session(label, 0), wire.session(label, 1)
        assert a.id_tag == b.id_tag and a.station_id != b.station_id
        assert b.start < a.end  # type: ignore[operator]
        assert label["subject_id"] == hash_identifier(a.id_tag or "", SECRET)
    elif kind == "cloned_token_impossible_travel":
        a, b = wire.session(label, 0), wire.session(label, 1)
        sa, sb = wire.stations[a.station_id], wire.stations[b.station_id]
        km = km_between(sa.x_km, sa.y_km, sb.x_km, sb.y_km)
        hours = (b.start - a.end).total_seconds() / 3600  # type: ignore[operator]
        assert a.id_tag == b.id_tag and hours > 0 and km / hours > 300
    elif kind in ("meter_rollback", "meter_reset"):
        regs = _registers(wire.session(label))
        assert any(y < x for x, y in itertools.pairwise(regs))
    elif kind == "energy_above_capability":
        ws = wire.session(label)
        max_w = wire.stations[ws.station_id].evse_power_w[ws.evse_id - 1]
        hours = (ws.end - ws.start).total_seconds() / 3600  # type: ignore[operator]
        assert _energy(ws) > max_w * hours
    elif kind == "seqno_gap":
        seqs = sorted(set(wire.session(label).seq_nos))
        assert seqs != list(range(seqs[-1] + 1))
    elif kind == "offline_replay":
        ws = wire.session(label)
        assert len(ws.seq_nos) > len(set(ws.seq_nos)) and any(ws.offline)
    elif kind == "offline_unknown_token":
        ws = wire.session(label)
        assert all(ws.offline) and ws.auth_status == "Unknown"
        assert ws.id_tag not in {d.id_tag for d in wire.run.sim.world.drivers}
        assert not wire.payments[ws.session_id]
    elif kind == "card_testing":
        events = [e for pid in _payment_ids(label, wire) for e in wire.by_payment_id[pid]]
        assert len({e["payment_id"] for e in events}) >= 10
        assert all(e["terminal_id"] == label["subject_id"] for e in events)
        assert sum(e["kind"] == "failed" for e in events) >= 1
    elif kind == "refund_abuse":
        refunded = sum(p["amount_minor"] for p in wire.kinds(label, "refunded"))
        captured = sum(p["amount_minor"] for p in wire.kinds(label, "captured"))
        assert refunded > captured > 0
    elif kind == "capture_zero_energy":
        assert _energy(wire.session(label)) == 0 and wire.kinds(label, "captured")
    elif kind == "missing_payment":
        assert _energy(wire.session(label)) > 0 and not wire.payments[label["session_id"]]
    elif kind == "orphan_payment":
        events = wire.by_payment_id[label["subject_id"]]
        assert events and all(e["session_id"] not in wire.sessions for e in events)
    elif kind == "duplicate_capture":
        captures = wire.kinds(label, "captured")
        assert len(captures) == 2 and captures[0]["amount_minor"] == captures[1]["amount_minor"]
    elif kind in ("overcharge", "undercharge"):
        [capture] = wire.kinds(label, "captured")
        expected = label["detail"]["expected_minor"]
        assert (capture["amount_minor"] > expected) == (kind == "overcharge")
        assert capture["amount_minor"] != expected
    elif kind == "preauth_shortfall":
        [auth] = wire.kinds(label, "authorized")
        [capture] = wire.kinds(label, "captured")
        assert capture["amount_minor"] > auth["amount_minor"]
        assert not wire.kinds(label, "auth_adjusted")
    elif kind == "currency_mismatch":
        tariff = wire.stations[label["station_id"]].tariff
        assert all(p["currency"] != tariff.currency for p in wire.payments[label["session_id"]])
    elif kind == "chargeback":
        assert wire.kinds(label, "chargeback_opened")
    elif kind == "anomaly:energy_inflation":
        world = wire.run.sim.world
        assert label["station_id"] == world.stations[world.anomaly_station].station_id
        assert 1.09 <= label["detail"]["reported_wh"] / max(1, label["detail"]["true_wh"]) <= 1.26
    elif kind == "anomaly:unusual_hours":
        ws = wire.session(label)
        assert ws.start.astimezone(ZoneInfo("Europe/Berlin")).hour in (1, 2, 3, 4)  # type: ignore[union-attr]
    elif kind == "honest:zero_energy_no_payment":
        assert _energy(wire.session(label)) == 0 and not wire.kinds(label, "captured")
    elif kind == "honest:long_idle_parking":
        ws = wire.session(label)
        assert (ws.end - ws.start).total_seconds() > 6 * 3600  # type: ignore[operator]
        assert wire.stations[ws.station_id].tariff_kind == "energy_parking"
    elif kind == "honest:meter_clock_drift":
        ws = wire.session(label)
        lag = (ws.received[0] - ws.start).total_seconds()  # type: ignore[operator]
        assert abs(lag) >= 1.0 or lag < 0
    elif kind == "honest:late_events":
        ws = wire.session(label)
        assert (ws.received[-1] - ws.end).total_seconds() >= 600  # type: ignore[operator]
    elif kind == "honest:partial_refund":
        [refund] = wire.kinds(label, "refunded")
        [capture] = wire.kinds(label, "captured")
        assert 0 < refund["amount_minor"] < capture["amount_minor"]
        assert label["detail"]["reason"]
    else:  # pragma: no cover
        pytest.fail(f"no check for {kind}")


def _payment_ids(label: dict[str, Any], wire: Wire) -> set[str]:
    wanted = set(label["payment_event_ids"])
    return {
        e["payment_id"] for events in wire.by_payment_id.values() for e in events
        if e["event_id"] in wanted
    }  # fmt: skip


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_label_is_visible_on_the_wire(kind: str, wire: Wire) -> None:
    labels = wire.labels[kind]
    assert labels
    for label in labels:
        _check(kind, label, wire)


def test_clean_world_has_no_labels() -> None:
    from tests.unit.simulation.conftest import run
    from topics.simulation.config import SimulationConfig

    clean = run(SimulationConfig(seed=3, sessions=60, stations=10, sample_interval_s=900,
                                 fault_scale=0.0), keep_truth=False)  # fmt: skip
    assert clean.values("sim_labels") == []


def test_fault_filter_injects_only_the_named_kinds() -> None:
    from tests.unit.simulation.conftest import run
    from topics.simulation.config import SimulationConfig

    only = frozenset({"overcharge", "honest:late_events"})
    filtered = run(SimulationConfig(seed=3, sessions=120, stations=10, sample_interval_s=900,
                                    fault_scale=30.0, fault_filter=only), keep_truth=False)  # fmt: skip
    assert {label["kind"] for label in filtered.values("sim_labels")} == only


def test_kind_catalogue() -> None:
    assert len(FAULT_KINDS) == 19 and all(k.startswith("honest:") for k in HONEST_KINDS)
