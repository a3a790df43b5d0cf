"""The simulation: arrivals in, one event-time-ordered stream of records out.

:class:`Simulation` draws the world and the arrivals from ``config.seed`` and then, arrival
by arrival, builds each session (charging curve, meter samples, OCPP frames, rating through
:func:`billing.rating.rate_session`, payment flow), injects the session's drawn kind and
emits its labels. Each session yields a list of entries sorted by emit time; a heap merges
them so the stream is in event-time order, with late frames placed by their receive time
(frames are ordered by ``received_at``, payments by ``event_time``). Before an arrival is
built, everything due before it has been emitted; nothing a session produces happens before
its arrival, so the merge is exact.

The stream is ``(topic_short, key, value_bytes)``: reference data first (``stations`` keyed
by station id, ``tariffs`` by tariff id), then ``ocpp_frames`` (keyed by station id),
``psp_payment_events`` (keyed by session id, or payment id when there is none) and
``sim_labels`` (keyed by subject id).

Examples
--------
>>> from topics.simulation.config import SimulationConfig
>>> sim = Simulation(SimulationConfig(seed=1, sessions=5, stations=3, sample_interval_s=600),
...                  hash_secret=b"k")
>>> topics = [t for t, _, _ in sim.records()]
>>> topics[:4]
['stations', 'stations', 'stations', 'tariffs']
>>> sim.summary.sessions, sim.summary.frames > 0
(5, True)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from billing.periods import charging_periods
from billing.rating import ChargingPeriod, rate_session
from topics.codec import encode
from topics.identity import hash_identifier, session_id_for, stable_id
from topics.simulation import ocpp16, ocpp201
from topics.simulation._time import DAY_MS, HOUR_MS, iso_ms, to_datetime, to_ms
from topics.simulation._wire import Entry, Frames, WireSession
from topics.simulation.config import SimulationConfig
from topics.simulation.faults import (
    ALL_KINDS,
    PLACEMENT,
    SimLabel,
    apply_meter_fault,
    apply_payment_fault,
    apply_wire_fault,
    is_honest,
)
from topics.simulation.payments import (
    HOLD_MINOR,
    PaymentPlan,
    card_testing_burst,
    orphan_capture,
    render,
)
from topics.simulation.sessions import (
    Planner,
    build_samples,
    clock_boundaries,
    csms_samples,
    draw_arrivals,
    plan_charge,
)
from topics.simulation.world import SOURCE, Driver, StationProfile, World, build_world, km_between

__all__ = ["Record", "SessionTruth", "Simulation", "Summary", "iter_records"]

Record = tuple[str, str, bytes]
"""``(topic_short, key, value_bytes)``: what the shell writes to a file or produces."""

_ZERO_ENERGY = frozenset({"capture_zero_energy", "honest:zero_energy_no_payment"})
_METER = frozenset(
    {"meter_rollback", "meter_reset", "energy_above_capability", "anomaly:energy_inflation"}
)
_WIRE = frozenset(
    {
        "honest:meter_clock_drift",
        "honest:late_events",
        "seqno_gap",
        "offline_replay",
        "offline_unknown_token",
    }
)
_PAYMENT = frozenset(
    {
        "capture_zero_energy",
        "missing_payment",
        "duplicate_capture",
        "overcharge",
        "undercharge",
        "preauth_shortfall",
        "currency_mismatch",
        "chargeback",
        "refund_abuse",
        "honest:partial_refund",
    }
)
_SESSION_KINDS = _METER | _WIRE | _PAYMENT | _ZERO_ENERGY | {"honest:long_idle_parking"}
"""Kinds that change how the arriving session itself is built (the others add traffic)."""
_CURRENCIES = ("EUR", "USD", "GBP", "CHF")
_TOPIC_FIELD = {
    "ocpp_frames": "frames",
    "psp_payment_events": "payments",
    "sim_labels": "labels",
    "stations": "stations",
    "tariffs": "tariffs",
}


@dataclass
class Summary:
    """Counts of what a run produced; the shell adds ``elapsed_s``.

    >>> s = Summary(frames=900, payments=100, elapsed_s=2.0)
    >>> s.events, s.events_per_s
    (1000, 500.0)
    """

    sessions: int = 0
    clone_sessions: int = 0
    dropped_arrivals: int = 0
    frames: int = 0
    payments: int = 0
    labels: int = 0
    stations: int = 0
    tariffs: int = 0
    labels_by_kind: dict[str, int] = field(default_factory=dict)
    unplaced_kinds: dict[str, int] = field(default_factory=dict)
    first_event: str | None = None
    last_event: str | None = None
    elapsed_s: float = 0.0

    @property
    def events(self) -> int:
        """Frames plus payment events (the unit of the throughput figure)."""
        return self.frames + self.payments

    @property
    def events_per_s(self) -> float:
        """Events per wall-clock second (0 before the shell sets ``elapsed_s``)."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Everything, as plain JSON-able values."""
        return {
            "sessions": self.sessions,
            "clone_sessions": self.clone_sessions,
            "dropped_arrivals": self.dropped_arrivals,
            "frames": self.frames,
            "payments": self.payments,
            "events": self.events,
            "labels": self.labels,
            "stations": self.stations,
            "tariffs": self.tariffs,
            "labels_by_kind": dict(sorted(self.labels_by_kind.items())),
            "unplaced_kinds": dict(sorted(self.unplaced_kinds.items())),
            "first_event": self.first_event,
            "last_event": self.last_event,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
        }


@dataclass(slots=True)
class SessionTruth:
    """What really happened in one session (kept only with ``keep_truth=True``, for tests)."""

    session_id: str
    station_id: str
    tariff_id: str
    protocol: str
    kind: str | None
    clone: bool
    start_ms: int
    end_ms: int
    periods: list[ChargingPeriod]
    expected_minor: int
    currency: str
    true_energy_wh: int
    reported_energy_wh: int
    max_power_w: int
    method: str | None


@dataclass(slots=True)
class _Built:
    session_id: str
    transaction_id: str
    station: StationProfile
    driver: Driver
    id_tag: str
    start_ms: int
    end_ms: int
    entries: list[Entry]
    frames: Frames
    expected_minor: int
    currency: str
    payment_event_ids: list[str]
    card_fingerprint_hash: str | None
    payment_ids: list[str]
    label: tuple[str, dict[str, object], list[int], int] | None = None


class Simulation:
    """A seeded, deterministic fleet and payment world and its event stream.

    Parameters
    ----------
    config
        Settings of the run.
    hash_secret
        Secret for token and card hashes (labels name tokens and cards by these hashes,
        as ingest will).
    keep_truth
        Keep a :class:`SessionTruth` per session in :attr:`truth` (memory grows with the
        run; meant for tests).

    Notes
    -----
    :meth:`records` can be iterated once. ``summary`` fills in while it runs.
    """

    def __init__(
        self, config: SimulationConfig, *, hash_secret: bytes, keep_truth: bool = False
    ) -> None:
        if not hash_secret:
            raise ValueError("hash_secret must not be empty")
        self.config = config
        self.secret = hash_secret
        world_ss, arrival_ss, session_ss = np.random.SeedSequence(config.seed).spawn(3)
        self.world: World = build_world(
            config, hash_secret=hash_secret, rng=np.random.default_rng(world_ss)
        )
        self.rng = np.random.default_rng(session_ss)
        self.summary = Summary()
        self.truth: dict[str, SessionTruth] | None = {} if keep_truth else None
        self.keep_truth = keep_truth
        self._used = False
        self._start_ms = to_ms(config.start)
        self._arrivals, self._kinds = self._draw_arrivals(np.random.default_rng(arrival_ss))
        self.planner = Planner(self.world, self.rng)
        self._registers = [
            [int(self.rng.integers(100_000, 60_000_000)) for _ in s.evse_power_w]
            for s in self.world.stations
        ]
        self._uids = [int(self.rng.integers(1, 5000)) for _ in self.world.stations]
        self._tx16 = int(self.rng.integers(10_000, 2_000_000))
        self._label_n = 0
        w = self.world
        methods = w.drv_method
        onehot = np.zeros(len(w.stations), dtype=bool)
        onehot[w.anomaly_station] = True
        night = np.zeros(len(w.drivers), dtype=bool)
        night[list(w.night_drivers)] = True
        self._station_pools: dict[str | None, np.ndarray | None] = {
            None: None,
            "ocpp201": w.st_ocpp201,
            "zero_cost": w.st_zero_cost_idle,
            "parking": w.st_parking,
            "no_tod": w.st_no_tod,
            "anomaly": onehot,
        }
        self._driver_pools: dict[str | None, np.ndarray | None] = {
            None: None,
            "night": night,
            "non_card": methods != "card",
            "hold": methods != "roaming",
            "card_fp": (methods == "card") | (methods == "wallet"),
        }
        self._terminals = np.flatnonzero(w.st_terminal)

    # ------------------------------------------------------------------ arrivals

    @property
    def planned_sessions(self) -> int:
        """Arrivals drawn for the run (a few may find no free charger and be dropped)."""
        return len(self._arrivals)

    def _draw_arrivals(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        per_day = cfg.stations * cfg.sessions_per_station_day
        if cfg.duration_s is not None:
            duration_ms = cfg.duration_s * 1000
            n = cfg.sessions
            if n is None:
                n = int(rng.poisson(per_day * cfg.duration_s / 86_400))
        else:
            n = cfg.sessions if cfg.sessions is not None else 1000
            duration_ms = max(HOUR_MS, math.ceil(n / per_day * DAY_MS / 1000) * 1000)
        rates = cfg.effective_rates()
        p = np.array([rates[k] for k in ALL_KINDS])
        p_none = max(0.0, 1.0 - float(p.sum()))
        probs = np.concatenate([[p_none], p])
        codes = rng.choice(len(probs), size=n, p=probs / probs.sum())
        night = codes == (ALL_KINDS.index("anomaly:unusual_hours") + 1)
        times = draw_arrivals(
            rng,
            n=n,
            start_ms=self._start_ms,
            duration_ms=duration_ms,
            tz=self.world.tz,
            night=night,
        )
        order = np.argsort(times, kind="stable")
        return times[order], codes[order]

    # ------------------------------------------------------------------ the stream

    def records(self) -> Iterator[Record]:
        """The whole run as ``(topic_short, key, value_bytes)`` in event-time order."""
        if self._used:
            raise RuntimeError("Simulation.records() can be iterated only once")
        self._used = True
        summary = self.summary
        for st in self.world.stations:
            summary.stations += 1
            yield "stations", st.station_id, encode(st.record)
        for st in self.world.stations:
            summary.tariffs += 1
            yield "tariffs", st.tariff.tariff_id, encode(st.tariff)
        heap: list[tuple[int, int, int, list[Entry]]] = []
        self._heap = heap
        self._seq = 0
        counts = {"ocpp_frames": 0, "psp_payment_events": 0, "sim_labels": 0}
        heappop, heapreplace = heapq.heappop, heapq.heapreplace
        last_ms = None
        first_ms = None
        arrivals = self._arrivals.tolist()
        kinds = self._kinds.tolist()
        for a, code in zip(arrivals, kinds, strict=True):
            while heap and heap[0][0] < a:
                ms, seq, idx, lst = heap[0]
                entry = lst[idx]
                lst[idx] = None  # type: ignore[call-overload]  # free the bytes now
                idx += 1
                if idx < len(lst):
                    heapreplace(heap, (lst[idx][0], seq, idx, lst))
                else:
                    heappop(heap)
                counts[entry[1]] += 1
                yield entry[1], entry[2], entry[3]
            if first_ms is None:
                first_ms = a
            self._arrival(a, ALL_KINDS[code - 1] if code else None)
        while heap:
            ms, seq, idx, lst = heap[0]
            entry = lst[idx]
            lst[idx] = None  # type: ignore[call-overload]
            last_ms = ms
            idx += 1
            if idx < len(lst):
                heapreplace(heap, (lst[idx][0], seq, idx, lst))
            else:
                heappop(heap)
            counts[entry[1]] += 1
            yield entry[1], entry[2], entry[3]
        summary.frames = counts["ocpp_frames"]
        summary.payments = counts["psp_payment_events"]
        summary.labels = counts["sim_labels"]
        summary.first_event = iso_ms(first_ms) if first_ms is not None else None
        summary.last_event = iso_ms(last_ms) if last_ms is not None else None

    def progress(self) -> tuple[int, int]:
        """``(arrivals handled, arrivals planned)`` so far, for a progress bar."""
        s = self.summary
        return s.sessions + s.dropped_arrivals, self.planned_sessions

    def _push(self, entries: list[Entry]) -> None:
        if not entries:
            return
        entries.sort(key=_emit_ms)
        self._seq += 1
        heapq.heappush(self._heap, (entries[0][0], self._seq, 0, entries))

    # ------------------------------------------------------------------ one arrival

    def _place(
        self, at_ms: int, kind: str | None
    ) -> tuple[Driver, StationProfile, int, int] | None:
        st_pool, drv_pool = PLACEMENT.get(kind, (None, None)) if kind else (None, None)
        st_mask = self._station_pools[st_pool]
        drv_mask = self._driver_pools[drv_pool]
        for _ in range(6 if kind is None else 12):
            driver = self.planner.pick_driver(at_ms, pool=drv_pool, mask=drv_mask)
            if driver is None:
                continue
            got = self.planner.pick_station(driver, at_ms, mask=st_mask)
            if got is not None:
                return driver, got[0], got[1], got[2]
        return None

    def _arrival(self, at_ms: int, kind: str | None) -> None:
        placed = self._place(at_ms, kind)
        if placed is None and kind is not None:
            self.summary.unplaced_kinds[kind] = self.summary.unplaced_kinds.get(kind, 0) + 1
            kind = None
            placed = self._place(at_ms, None)
        if placed is None:
            self.summary.dropped_arrivals += 1
            return
        driver, station, evse, start_ms = placed
        session_kind = kind if kind in _SESSION_KINDS else None
        built = self._build(driver, station, evse, start_ms, session_kind)
        self.planner.occupy(station, evse, built.end_ms)
        self.planner.driver_done(driver, station, built.end_ms)
        self.summary.sessions += 1
        entries = built.entries
        if built.label is not None:
            label_kind, detail, uids, t = built.label
            subject_type, subject_id = self._subject(label_kind, built)
            entries.append(
                self._label(
                    label_kind,
                    at_ms=max(at_ms, t),
                    subject_type=subject_type,
                    subject_id=subject_id,
                    session_ids=[built.session_id],
                    station_id=station.station_id,
                    payment_event_ids=built.payment_event_ids if label_kind in _PAYMENT else [],
                    message_ids=[f"{station.station_id}|{u}" for u in uids],
                    detail=detail,
                )
            )
        elif kind == "anomaly:unusual_hours":
            local = to_datetime(built.start_ms).astimezone(self.world.tz)
            entries.append(
                self._label(
                    kind,
                    at_ms=built.start_ms,
                    subject_type="token",
                    subject_id=driver.token_hash,
                    session_ids=[built.session_id],
                    station_id=station.station_id,
                    detail={"local_hour": local.hour, "driver_id": driver.driver_id},
                )
            )
        elif kind in ("cloned_token_overlap", "cloned_token_impossible_travel"):
            entries.extend(self._clone(kind, built, at_ms))
        elif kind == "card_testing":
            entries.extend(self._card_testing(at_ms, station))
        elif kind == "orphan_payment":
            entries.extend(self._orphan(at_ms))
        self._push(entries)

    def _subject(self, kind: str, built: _Built) -> tuple[str, str]:
        if kind == "offline_unknown_token":
            return "token", hash_identifier(built.id_tag, self.secret)
        if kind == "refund_abuse" and built.card_fingerprint_hash:
            return "card", built.card_fingerprint_hash
        if kind == "anomaly:energy_inflation":
            return "station", built.station.station_id
        return "session", built.session_id

    def _label(
        self,
        kind: str,
        *,
        at_ms: int,
        subject_type: str,
        subject_id: str,
        session_ids: list[str],
        station_id: str | None,
        payment_event_ids: list[str] | None = None,
        message_ids: list[str] | None = None,
        detail: dict[str, object] | None = None,
    ) -> Entry:
        self._label_n += 1
        counts = self.summary.labels_by_kind
        counts[kind] = counts.get(kind, 0) + 1
        label = SimLabel(
            event_id=stable_id("sim-label", self.config.seed, self._label_n, kind),
            event_time=to_datetime(at_ms),
            source=SOURCE,
            kind=kind,
            subject_type=subject_type,  # type: ignore[arg-type]
            subject_id=subject_id,
            session_id=session_ids[0] if session_ids else None,
            session_ids=session_ids,
            station_id=station_id,
            payment_event_ids=payment_event_ids or [],
            message_ids=message_ids or [],
            honest=is_honest(kind),
            detail=detail or {},
        )
        return (at_ms, "sim_labels", subject_id, encode(label))

    # ------------------------------------------------------------------ one session

    def _transaction_id(self, station: StationProfile) -> str:
        if station.protocol == "ocpp1.6":
            self._tx16 += 1
            return str(self._tx16)
        a, b = self.rng.integers(0, 2**62, size=2).tolist()
        h = f"{a:016x}{b:016x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:32]}"

    def _build(
        self,
        driver: Driver,
        station: StationProfile,
        evse: int,
        start_ms: int,
        kind: str | None,
        *,
        clone: bool = False,
    ) -> _Built:
        rng = self.rng
        cfg = self.config
        profile = plan_charge(
            rng,
            station=station,
            evse_index=evse,
            driver=driver,
            start_ms=start_ms,
            interval_s=cfg.sample_interval_s,
            zero_energy=kind in _ZERO_ENERGY,
            long_idle=kind == "honest:long_idle_parking",
        )
        clocks = clock_boundaries(start_ms, profile.end_ms, self.world.tz, station.tod_boundaries)
        samples = build_samples(profile, clocks)
        n = len(samples.times_ms)
        meter_start = self._registers[station.index][evse]
        register = [meter_start + int(e) for e in samples.energy_wh]
        true_wh = register[-1] - register[0]
        label: tuple[str, dict[str, object], list[int], int] | None = None
        meter = None
        if kind in _METER:
            meter = apply_meter_fault(
                kind,
                rng,
                register,
                charge_end_index=samples.charge_end_index,
                duration_s=(profile.end_ms - start_ms) / 1000,
                max_power_w=profile.max_power_w,
                anomaly_factor=self.world.anomaly_factor,
            )
        self._registers[station.index][evse] = max(register[-1], 0)
        transaction_id = self._transaction_id(station)
        session_id = session_id_for(station.station_id, transaction_id)

        if profile.power_type == "DC":
            soc = samples.soc_pct or [50.0] * n
            noise = rng.normal(0.0, 1.5, size=n)
            volts = [
                driver.dc_voltage_v * (0.86 + 0.0016 * s) + float(x)
                for s, x in zip(soc, noise, strict=True)
            ]
        else:
            volts = (230.0 + rng.normal(0.0, 1.2, size=n)).tolist()
        latency = rng.integers(40, 900, size=n).tolist()
        recv = [t + d for t, d in zip(samples.times_ms, latency, strict=True)]
        r = rng.random()
        if r < 0.6:
            reason, with_token = "EVDisconnected", False
        elif r < 0.9 or driver.method != "wallet":
            reason, with_token = "Local", True
        else:
            reason, with_token = "Remote", False
        ws = WireSession(
            station=station,
            evse_id=evse + 1,
            id_tag=driver.id_tag,
            id_token_type=driver.id_token_type,
            transaction_id=transaction_id,
            times_ms=list(samples.times_ms),
            recv_ms=recv,
            contexts=samples.contexts,
            register_wh=register,
            power_w=samples.power_w,
            soc_pct=samples.soc_pct,
            voltage_v=volts,
            charge_end_index=samples.charge_end_index,
            stop_reason=reason,
            stop_with_token=with_token,
        )
        wire = None
        if kind in _WIRE:
            unknown = _hex_tag(rng)
            wire = apply_wire_fault(kind, rng, ws, unknown_tag=unknown)
        builder = ocpp16.build_frames if station.protocol == "ocpp1.6" else ocpp201.build_frames
        frames = builder(ws, first_uid=self._uids[station.index])
        self._uids[station.index] = frames.next_uid
        entries = frames.entries

        billed = csms_samples(ws.times_ms, register, samples.power_w, samples.contexts, ws.skip)
        periods = charging_periods(billed)
        rated = rate_session(
            station.tariff,
            start=to_datetime(billed[0][0]),
            end=to_datetime(max(billed[-1][0], billed[0][0] + 1000)),
            periods=periods,
        )
        expected, currency = rated.total_minor, rated.currency

        payment_event_ids: list[str] = []
        payment_ids: list[str] = []
        pay_detail = None
        method: str | None = driver.method
        if kind == "offline_unknown_token":
            method = None
        else:
            stop_recv = max(ws.recv_ms)
            if method == "roaming":
                capture_ms = stop_recv + int(rng.integers(1, 6)) * DAY_MS
                capture_ms += int(rng.integers(0, 86_400)) * 1000
                hold = None
            else:
                capture_ms = stop_recv + int(rng.integers(2, 30)) * 1000
                if method == "card":
                    hold = HOLD_MINOR["card_dc" if station.dc else "card_ac"]
                else:
                    hold = HOLD_MINOR[method]
            plan = PaymentPlan(
                nonce=session_id,
                session_id=session_id,
                station_id=station.station_id,
                transaction_id=transaction_id,
                method=method,
                currency=currency,
                card_fingerprint_hash=driver.card_fingerprint_hash,
                terminal_id=station.terminal_id if method == "card" else None,
                auth_ms=start_ms - int(rng.integers(5, 16)) * 1000,
                capture_ms=capture_ms,
                hold_minor=hold,
                capture_minor=expected or None,
                release="adjust" if method == "card" else "void",
            )
            if kind in _PAYMENT:
                other = [c for c in _CURRENCIES if c != currency]
                pay_detail = apply_payment_fault(
                    kind,
                    rng,
                    plan,
                    expected_minor=expected,
                    other_currency=other[int(rng.integers(0, len(other)))],
                )
            key = session_id
            for at, event in render(plan):
                payment_event_ids.append(event.event_id)
                if event.payment_id not in payment_ids:
                    payment_ids.append(event.payment_id)
                entries.append((at, "psp_payment_events", key, encode(event)))

        uids = frames.sample_uids
        if meter is not None:
            detail, idx = meter
            label = (kind, detail, [u for i in idx if (u := uids[i])], ws.times_ms[idx[-1]])
        elif wire is not None:
            detail, idx = wire
            if kind == "offline_replay":
                picked = frames.replay_uids
            elif kind == "honest:meter_clock_drift":
                picked = [u for u in (uids[0], uids[-1]) if u]
            else:
                picked = [u for i in idx if (u := uids[i])]
            t = ws.times_ms[idx[0]] if idx else ws.times_ms[-1]
            label = (kind, detail, picked, t)
        elif pay_detail is not None:
            label = (kind, pay_detail, [], ws.times_ms[-1])
        elif kind == "honest:zero_energy_no_payment" and expected == 0:
            label = (kind, {"expected_minor": 0, "method": method}, [], start_ms)
        elif kind == "honest:long_idle_parking":
            idle_s = (profile.end_ms - profile.charge_end_ms) // 1000
            label = (kind, {"idle_s": idle_s, "expected_minor": expected}, [], start_ms)
        if label is not None and kind in _PAYMENT:
            label[1].setdefault("method", method)

        if self.truth is not None:
            self.truth[session_id] = SessionTruth(
                session_id=session_id,
                station_id=station.station_id,
                tariff_id=station.tariff.tariff_id,
                protocol=station.protocol,
                kind=kind if label is not None else None,
                clone=clone,
                start_ms=ws.times_ms[0],
                end_ms=ws.times_ms[-1],
                periods=periods,
                expected_minor=expected,
                currency=currency,
                true_energy_wh=true_wh,
                reported_energy_wh=register[-1] - register[0],
                max_power_w=profile.max_power_w,
                method=method,
            )
        return _Built(
            session_id=session_id,
            transaction_id=transaction_id,
            station=station,
            driver=driver,
            id_tag=ws.id_tag,
            start_ms=ws.times_ms[0],
            end_ms=profile.end_ms,
            entries=entries,
            frames=frames,
            expected_minor=expected,
            currency=currency,
            payment_event_ids=payment_event_ids,
            card_fingerprint_hash=driver.card_fingerprint_hash,
            payment_ids=payment_ids,
            label=label,
        )

    # ------------------------------------------------------------------ extra traffic

    def _clone(self, kind: str, first: _Built, at_ms: int) -> list[Entry]:
        w = self.world
        rng = self.rng
        home = first.station
        dist = np.hypot(w.st_x - home.x_km, w.st_y - home.y_km)
        if kind == "cloned_token_overlap":
            # strictly inside the first session, however short it is
            span = max(2_000, first.end_ms - first.start_ms)
            t = first.start_ms + max(1_000, int(span * float(rng.uniform(0.1, 0.7))))
            weights = ((dist >= 1.0) & (dist <= 30.0)).astype(float)
        else:
            weights = (dist >= max(3.0, float(np.quantile(dist, 0.7)))).astype(float)
            t = first.end_ms
        if first.driver.method == "card":
            weights = weights * w.st_terminal
        for _ in range(8):
            total = float(weights.sum())
            if total <= 0:
                break
            i = min(
                int(np.searchsorted(np.cumsum(weights), rng.random() * total)), len(weights) - 1
            )
            weights[i] = 0.0
            if kind == "cloned_token_impossible_travel":
                speed = float(rng.uniform(400.0, 900.0))
                gap_ms = max(60_000, int(dist[i] / speed * HOUR_MS))
                t_i = t + gap_ms
            else:
                t_i = t
            got = self.planner.free_evse(i, t_i, max_wait_ms=0)
            if got is None:
                continue
            evse, start = got
            station = w.stations[i]
            second = self._build(first.driver, station, evse, start, None, clone=True)
            self.planner.occupy(station, evse, second.end_ms)
            self.summary.clone_sessions += 1
            km = km_between(home.x_km, home.y_km, station.x_km, station.y_km)
            detail: dict[str, object] = {"distance_km": round(km, 2)}
            if kind == "cloned_token_overlap":
                detail["overlap_s"] = (min(first.end_ms, second.end_ms) - second.start_ms) // 1000
            else:
                gap_s = max(1, (second.start_ms - first.end_ms) // 1000)
                detail.update(gap_s=gap_s, speed_kmh=round(km / (gap_s / 3600), 1))
            detail["stations"] = [home.station_id, station.station_id]
            uids = [
                f"{home.station_id}|{first.frames.sample_uids[0]}",
                f"{station.station_id}|{second.frames.sample_uids[0]}",
            ]
            label = self._label(
                kind,
                at_ms=second.start_ms,
                subject_type="token",
                subject_id=first.driver.token_hash,
                session_ids=[first.session_id, second.session_id],
                station_id=station.station_id,
                message_ids=uids,
                detail=detail,
            )
            return [*second.entries, label]
        self.summary.unplaced_kinds[kind] = self.summary.unplaced_kinds.get(kind, 0) + 1
        return []

    def _card_testing(self, at_ms: int, near: StationProfile) -> list[Entry]:
        if not len(self._terminals):
            self.summary.unplaced_kinds["card_testing"] = (
                self.summary.unplaced_kinds.get("card_testing", 0) + 1
            )
            return []
        rng = self.rng
        station = self.world.stations[int(self._terminals[rng.integers(0, len(self._terminals))])]
        assert station.terminal_id is not None
        nonce = stable_id("card-testing", self.config.seed, self._label_n)
        cards = [
            hash_identifier(f"fp_test_{nonce}_{k}", self.secret)
            for k in range(int(rng.integers(5, 21)))
        ]
        start = at_ms + int(rng.integers(0, 30 * 60)) * 1000
        events = card_testing_burst(
            rng,
            nonce=nonce,
            station_id=station.station_id,
            terminal_id=station.terminal_id,
            currency=station.tariff.currency,
            at_ms=start,
            fingerprints=cards,
        )
        out: list[Entry] = [(t, "psp_payment_events", e.payment_id, encode(e)) for t, e in events]
        failed = sum(1 for _, e in events if e.kind == "failed")
        out.append(
            self._label(
                "card_testing",
                at_ms=start,
                subject_type="terminal",
                subject_id=station.terminal_id,
                session_ids=[],
                station_id=station.station_id,
                payment_event_ids=[e.event_id for _, e in events],
                detail={
                    "attempts": len({e.payment_id for _, e in events}),
                    "failed": failed,
                    "cards": len(cards),
                    "window_s": (events[-1][0] - events[0][0]) // 1000,
                },
            )
        )
        return out

    def _orphan(self, at_ms: int) -> list[Entry]:
        rng = self.rng
        w = self.world
        station = w.stations[int(rng.integers(0, len(w.stations)))]
        method = ("card", "wallet", "prepaid")[int(rng.integers(0, 3))]
        if method == "card" and station.terminal_id is None:
            method = "wallet"
        if station.protocol == "ocpp1.6":
            tx = str(900_000_000 + int(rng.integers(0, 99_999_999)))
        else:
            tx = self._transaction_id(station)
        named = rng.random() < 0.5
        at = at_ms + int(rng.integers(0, 2 * 3600)) * 1000
        fingerprint = None
        if method in ("card", "wallet"):
            fingerprint = hash_identifier(f"fp_orphan_{self._label_n}", self.secret)
        events = orphan_capture(
            nonce=stable_id("orphan", self.config.seed, self._label_n),
            method=method,
            station_id=station.station_id if named else None,
            transaction_id=tx if named else None,
            session_id=session_id_for(station.station_id, tx) if named else None,
            currency=station.tariff.currency,
            amount_minor=int(rng.integers(300, 6000)),
            at_ms=at,
            card_fingerprint_hash=fingerprint,
            terminal_id=station.terminal_id if method == "card" else None,
        )
        out: list[Entry] = [
            (t, "psp_payment_events", e.session_id or e.payment_id, encode(e)) for t, e in events
        ]
        _, event = events[0]
        out.append(
            self._label(
                "orphan_payment",
                at_ms=at,
                subject_type="payment",
                subject_id=event.payment_id,
                session_ids=[event.session_id] if event.session_id else [],
                station_id=event.station_id,
                payment_event_ids=[e.event_id for _, e in events],
                detail={
                    "amount_minor": event.amount_minor,
                    "names_transaction": named,
                    "transaction_id": event.transaction_id,
                },
            )
        )
        return out


def _emit_ms(entry: Entry) -> int:
    return entry[0]


def _hex_tag(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(0, 2**32)):08X}"


def iter_records(config: SimulationConfig, *, hash_secret: bytes) -> Iterator[Record]:
    """The run's ``(topic_short, key, value_bytes)`` stream (see :class:`Simulation`).

    >>> from topics.simulation.config import SimulationConfig
    >>> cfg = SimulationConfig(seed=4, sessions=3, stations=2, sample_interval_s=900)
    >>> a = list(iter_records(cfg, hash_secret=b"k"))
    >>> a == list(iter_records(cfg, hash_secret=b"k"))
    True
    """
    return Simulation(config, hash_secret=hash_secret).records()
