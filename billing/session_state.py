"""One session's picture, built from its session events and meter readings, and its bill.

Pure and order-tolerant: :class:`SessionState` takes events in any order and any number of
times. A reading is stored once per timestamp (a repeat is a duplicate; a different value at
the same timestamp is a conflict, counted, and the first stays); the start is the earliest
``started`` time and the end the latest ``ended`` time seen, so the state after a set of
events does not depend on the order they came in (conflicts aside).

Samples are packed 21 bytes each (time, register, power, flags) in one ``bytes`` value, so
an open session with an hour of one-minute samples weighs about 1.3 KB plus its ids.

Examples
--------
>>> from datetime import UTC, datetime
>>> from topics.records import MeterReading, SessionEvent
>>> t = lambda m: datetime(2024, 5, 6, 10, m, tzinfo=UTC)
>>> s = SessionState(session_id="s1")
>>> s.apply_event(SessionEvent(event_id="a", event_time=t(0), source="x", session_id="s1",
...     station_id="CP1", evse_id=1, kind="started", meter_start_wh=1000))
True
>>> s.apply_reading(MeterReading(event_id="b", event_time=t(30), source="x", session_id="s1",
...     station_id="CP1", evse_id=1, energy_wh=4000, power_w=7000.0))
True
>>> s.apply_reading(MeterReading(event_id="b", event_time=t(30), source="x", session_id="s1",
...     station_id="CP1", evse_id=1, energy_wh=4000, power_w=7000.0))
False
>>> [(ms // 60_000 % 60, wh) for ms, wh, _, _ in s.samples()], s.duplicates
([(0, 1000), (30, 4000)], 1)
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from typing import Final

import msgspec

from billing.periods import MeterAnomaly, Sample, charging_periods, register_anomalies
from billing.rating import rate_session
from topics.identity import stable_id
from topics.records import MeterReading, SessionBill, SessionEvent, Tariff
from topics.times import from_ms, to_ms

__all__ = ["SessionState", "build_bill", "to_ms"]  # to_ms: topics.times, re-exported

_PACK: Final = struct.Struct("<qqiB")
_SIZE: Final = _PACK.size
_NO_POWER: Final = -(2**31)
_CLOCK: Final = 1
_CLOCK_CONTEXTS: Final = frozenset({"Sample.Clock"})


class SessionState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is known of one session; mutable, serialised whole into the billing changelog.

    ``version`` increases whenever something the bill depends on changes.
    """

    session_id: str
    station_id: str | None = None
    evse_id: int | None = None
    connector_id: int | None = None
    transaction_id: str | None = None
    tariff_id: str | None = None
    token_hash: str | None = None
    token_type: str | None = None
    auth_status: str | None = None
    offline: bool = False
    started_offline: bool = False
    stop_reason: str | None = None
    started_ms: int | None = None
    ended_ms: int | None = None
    started_event_id: str | None = None
    ended_event_id: str | None = None
    packed: bytes = b""
    readings: int = 0
    duplicates: int = 0
    conflicts: int = 0
    last_seq_no: int | None = None
    seq_bits: bytes = b""
    """OCPP 2.0.1 seqNo values seen (bit n set: seqNo n arrived); gaps are unset bits."""
    seq_repeats: int = 0
    """Messages whose seqNo had been seen already (re-sent or replayed events)."""
    max_power_w: float = 0.0
    version: int = 0
    finalized: bool = False
    """Samples were dropped after the bill became final; nothing can change the bill now."""

    # ------------------------------------------------------------------ input

    def apply_event(self, event: SessionEvent) -> bool:
        """Merge a session event; True when something the bill depends on changed."""
        at = to_ms(event.event_time)
        changed = False
        for name in ("station_id", "evse_id", "connector_id", "transaction_id", "tariff_id"):
            if getattr(self, name) is None and getattr(event, name) is not None:
                setattr(self, name, getattr(event, name))
                changed = changed or name == "tariff_id"
        for name in ("token_hash", "token_type", "auth_status", "stop_reason"):
            if getattr(self, name) is None and getattr(event, name) is not None:
                setattr(self, name, getattr(event, name))
        if event.offline:
            self.offline = True
        repeat = self._seq(event.seq_no)
        if event.kind == "started":
            if event.offline and not repeat:  # a replayed start says nothing of the first one
                self.started_offline = True
            if self.started_ms is None or at < self.started_ms:
                self.started_ms, self.started_event_id = at, event.event_id
                changed = True
            if event.meter_start_wh is not None:
                changed = self._add(at, event.meter_start_wh, None, False) or changed
        elif event.kind == "ended":
            if self.ended_ms is None or at > self.ended_ms:
                self.ended_ms, self.ended_event_id = at, event.event_id
                changed = True
            if event.meter_stop_wh is not None:
                changed = self._add(at, event.meter_stop_wh, None, False) or changed
        if changed:
            self.version += 1
        return changed

    def apply_reading(self, reading: MeterReading) -> bool:
        """Merge a meter reading; True when the samples changed.

        A reading without an energy register is counted but not stored (the register is
        what is billed).
        """
        self.readings += 1
        if reading.power_w is not None and reading.power_w > self.max_power_w:
            self.max_power_w = reading.power_w
        if reading.energy_wh is None:
            return False
        changed = self._add(
            to_ms(reading.event_time),
            reading.energy_wh,
            reading.power_w,
            reading.context in _CLOCK_CONTEXTS,
        )
        if changed:
            self.version += 1
        return changed

    def _seq(self, seq_no: int | None) -> bool:
        """Record a 2.0.1 TransactionEvent seqNo; True when it had been seen already."""
        if seq_no is None or seq_no > 100_000:
            return False
        if self.last_seq_no is None or seq_no > self.last_seq_no:
            self.last_seq_no = seq_no
        byte, bit = divmod(seq_no, 8)
        bits = self.seq_bits
        if byte >= len(bits):
            bits = bits + bytes(byte + 1 - len(bits))
        if bits[byte] & (1 << bit):
            self.seq_repeats += 1
            return True
        self.seq_bits = bits[:byte] + bytes([bits[byte] | (1 << bit)]) + bits[byte + 1 :]
        return False

    def seq_gaps(self) -> list[int]:
        """seqNo values below the highest seen that never arrived."""
        if self.last_seq_no is None:
            return []
        bits = self.seq_bits
        return [n for n in range(self.last_seq_no) if not bits[n // 8] & (1 << (n % 8))]

    def _add(self, at: int, register: int, power: float | None, clock: bool) -> bool:
        packed = self.packed
        n = len(packed) // _SIZE
        p = _NO_POWER if power is None else max(-(2**31) + 1, min(2**31 - 1, round(power)))
        flags = _CLOCK if clock else 0
        if n == 0 or at > _PACK.unpack_from(packed, (n - 1) * _SIZE)[0]:
            self.packed = packed + _PACK.pack(at, register, p, flags)
            return True
        times = [_PACK.unpack_from(packed, k * _SIZE)[0] for k in range(n)]
        k = bisect_left(times, at)
        if k < n and times[k] == at:
            t0, r0, p0, f0 = _PACK.unpack_from(packed, k * _SIZE)
            if r0 != register:
                self.conflicts += 1
            else:
                self.duplicates += 1
            merged_p = p0 if p0 != _NO_POWER else p
            if (f0 | flags) == f0 and merged_p == p0:
                return False
            row = _PACK.pack(t0, r0, merged_p, f0 | flags)
            self.packed = packed[: k * _SIZE] + row + packed[(k + 1) * _SIZE :]
            return True
        row = _PACK.pack(at, register, p, flags)
        self.packed = packed[: k * _SIZE] + row + packed[k * _SIZE :]
        return True

    # ------------------------------------------------------------------ views

    def samples(self) -> list[Sample]:
        """The stored samples, time-ordered, as ``(time_ms, register_wh, power_w, clock)``."""
        out: list[Sample] = []
        for at, reg, p, flags in _PACK.iter_unpack(self.packed):
            out.append((at, reg, None if p == _NO_POWER else float(p), bool(flags & _CLOCK)))
        return out

    @property
    def sample_count(self) -> int:
        return len(self.packed) // _SIZE

    def anomalies(self) -> list[MeterAnomaly]:
        """Resets and rollbacks of the register, for the fraud rules."""
        return register_anomalies(self.samples())

    def span_ms(self) -> tuple[int, int] | None:
        """``(start, end)`` of the session: start/end events widened to the samples."""
        samples = self.samples()
        starts = [t for t in (self.started_ms, samples[0][0] if samples else None) if t is not None]
        ends = [t for t in (self.ended_ms, samples[-1][0] if samples else None) if t is not None]
        if not starts or not ends:
            return None
        start, end = min(starts), max(ends)
        return start, max(end, start + 1000)

    def finalize(self) -> None:
        """Drop the samples once the bill can no longer change (keeps the state small)."""
        self.packed = b""
        self.finalized = True


def build_bill(state: SessionState, tariff: Tariff) -> SessionBill:
    """Rate ``state`` against ``tariff``; the bill's ``event_id`` is a hash of what it says.

    Raises :class:`billing.exceptions.BillingError` subclasses when the tariff or the session
    cannot be rated.
    """
    span = state.span_ms()
    if span is None:
        raise ValueError(f"session {state.session_id} has neither a start nor samples")
    start_ms, end_ms = span
    samples = state.samples()
    periods = charging_periods(samples)
    start = from_ms(start_ms)
    end = from_ms(end_ms)
    rated = rate_session(tariff, start=start, end=end, periods=periods)
    ids = [i for i in (state.started_event_id, state.ended_event_id) if i]
    # What the bill says, nothing else: a late sample that changes no line (an offline
    # station's queue arriving after the bill) must not make a new bill, nor a new
    # reconciliation revision citing it.
    event_id = stable_id(
        "session-bill",
        state.session_id,
        tariff.tariff_id,
        tariff.event_id,
        start_ms,
        end_ms,
        rated.total_minor,
        rated.total_vat_minor,
        rated.energy_wh,
        rated.charging_s,
        rated.idle_s,
        *(
            (ln.component, ln.volume, ln.unit_price, ln.vat_pct, ln.amount_excl_vat_minor)
            for ln in rated.lines
        ),
    )
    return SessionBill(
        event_id=event_id,
        event_time=end,
        source="voltguard-billing",
        session_id=state.session_id,
        station_id=state.station_id or "unknown",
        tariff_id=tariff.tariff_id,
        currency=rated.currency,
        energy_wh=rated.energy_wh,
        charging_s=rated.charging_s,
        idle_s=rated.idle_s,
        lines=list(rated.lines),
        total_excl_vat_minor=rated.total_excl_vat_minor,
        total_vat_minor=rated.total_vat_minor,
        total_minor=rated.total_minor,
        input_event_ids=ids,
    )
