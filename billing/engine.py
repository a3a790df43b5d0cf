"""The billing and reconciliation core: events in, bills and reconciliation results out.

Pure and single-threaded; the worker (:mod:`streams.billing`) runs one engine per input
partition and ``voltguard replay`` runs one for a whole file. A *case* is everything keyed
by one session id: the :class:`~billing.session_state.SessionState`, its payments, the bill
and the verdict last published. Payments that name no session are a case of their own,
keyed by payment id.

Time is event time only. The watermark comes from :meth:`BillingEngine.advance`, which the
shell calls with the clock ticks the ingest publishes (the latest minute of input seen by
the CSMS and the PSPs); nothing here reads the wall clock. When the watermark passes a
case's next due time (bill grace, verdict grace, an authorisation's expiry, the end of
sample retention, the end of retention) the case is evaluated again.

Corrections: a case is re-evaluated whenever an event changes it after its bill or verdict
was published; a bill or result is published again only when its content changed, with
``revision`` counting the publications. Content, ids (``result_id`` is a hash of the case
key) and event ids (a hash of the content) are deterministic; ``revision`` counts how many
versions this run published, which depends on how inputs interleaved.

Examples
--------
>>> from datetime import UTC, datetime
>>> from decimal import Decimal
>>> from topics.records import PaymentEvent, PriceComponent, SessionEvent, Tariff, TariffElement
>>> t = lambda m: datetime(2024, 5, 6, 10, m, tzinfo=UTC)
>>> tariff = Tariff(event_id="t", event_time=t(0), source="x", tariff_id="T1", currency="EUR",
...     elements=[TariffElement(price_components=[
...         PriceComponent(type="ENERGY", price=Decimal("0.40"), vat=Decimal(0))])])
>>> engine = BillingEngine(tariffs={"T1": tariff})
>>> ev = lambda kind, m, wh: SessionEvent(event_id=kind, event_time=t(m), source="x",
...     session_id="s1", station_id="CP1", evse_id=1, kind=kind, tariff_id="T1",
...     meter_start_wh=wh if kind == "started" else None,
...     meter_stop_wh=wh if kind == "ended" else None)
>>> _ = engine.on_session_event(ev("started", 0, 1000)), engine.on_session_event(ev("ended", 30, 6000))
>>> _ = engine.on_payment(PaymentEvent(event_id="p", event_time=t(31), source="x",
...     payment_id="pi_1", session_id="s1", psp="stripe", psp_reference="ch_1",
...     kind="captured", amount_minor=200, currency="EUR", method="wallet"))
>>> [(e.topic, e.record.total_minor) for e in engine.advance(to_ms(t(33)))]
[('session_bills', 200)]
>>> [(e.topic, e.record.outcome) for e in engine.advance(to_ms(t(59)) + 3_600_000)]
[('reconciliation', 'matched')]
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from billing.exceptions import BillingError
from billing.reconciliation import (
    Expected,
    PaymentRecord,
    ReconciliationConfig,
    Verdict,
    reconcile,
    verdict_due_ms,
)
from billing.session_state import SessionState, build_bill, to_ms
from topics.clock import InputClock, InputClockState
from topics.identity import stable_id
from topics.records import (
    ClockTick,
    MeterReading,
    PaymentEvent,
    ReconciliationResult,
    SessionBill,
    SessionEvent,
    Station,
    Tariff,
)
from topics.times import from_ms

__all__ = ["BillingEngine", "Case", "Emit", "LateInputError", "to_ms"]

_NEVER: Final = -(2**62)
_SOURCE: Final = "voltguard-billing"


class LateInputError(BillingError):
    """Input for a session whose bill is final (its samples were already dropped)."""


class BillSummary(msgspec.Struct, array_like=True, frozen=True):
    """What a case keeps of its published bill."""

    event_id: str
    total_minor: int
    currency: str
    unrated: str | None = None


class Case(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One session (or one session-less payment) and what was published about it."""

    key: str
    session: SessionState | None = None
    payments: list[PaymentRecord] = []
    bill: BillSummary | None = None
    billed_version: int = -1
    result_digest: str | None = None
    result_outcome: str | None = None
    result_currency: str | None = None
    result_delta_minor: int = 0
    """Currency and delta of the result last published (the money metrics after a restore)."""
    revision: int = -1
    featured: tuple[int, int] = (0, 0)
    """``(seq_repeats, payment events)`` when the session's features were last published."""

    last_event_ms: int = _NEVER
    next_due_ms: int | None = None

    def featured_payments(self, sample_retention_s: int) -> list[PaymentRecord]:
        """The payments a session's features include: those whose event time is within the
        sample retention after the session's end. Decided on event time, not on whether the
        samples are still held when the payment is read (that depends on how far the
        watermark got, which differs between a backlog and a live stream), so every run
        publishes the same features."""
        s = self.session
        if s is None or s.ended_ms is None:
            return self.payments
        horizon = s.ended_ms + sample_retention_s * 1000
        return [p for p in self.payments if p.at_ms <= horizon]


@dataclass(slots=True)
class Emit:
    """An output record: the topic's short name, its key and the record."""

    topic: Literal[
        "session_bills", "reconciliation", "reconciliation_mismatches", "session_features"
    ]
    key: str
    record: SessionBill | ReconciliationResult | None
    """None for ``session_features``: the shell builds the features from the case."""
    session: SessionState | None = None
    """For bills and features: the session as it was then (its samples may be dropped by
    the time the shell builds the features)."""


class _Clock(msgspec.Struct):
    watermark: int
    channels: dict[str, int] = {}
    inputs: dict[str, InputClockState] = {}
    """Per channel, what the ingest workers' ticks vouched for (:class:`InputClock`)."""


_encode_clock = msgspec.msgpack.Encoder().encode
_decode_clock = msgspec.msgpack.Decoder(_Clock).decode
_encode_case = msgspec.msgpack.Encoder().encode
_decode_case = msgspec.msgpack.Decoder(Case).decode
_encode_digest = msgspec.msgpack.Encoder(order="deterministic").encode


class BillingEngine:
    """Cases of one partition (or of a whole replay), their timers and the watermark.

    Parameters
    ----------
    config
        Grace periods and retention.
    tariffs, stations
        Reference data by id, read at evaluation time (the shell keeps them current).
    """

    def __init__(
        self,
        *,
        config: ReconciliationConfig | None = None,
        tariffs: Mapping[str, Tariff] | None = None,
        stations: Mapping[str, Station] | None = None,
    ) -> None:
        self.config = config or ReconciliationConfig()
        self.tariffs: Mapping[str, Tariff] = tariffs if tariffs is not None else {}
        self.stations: Mapping[str, Station] = stations if stations is not None else {}
        self.cases: dict[str, Case] = {}
        self.watermark_ms = _NEVER
        self._heap: list[tuple[int, str]] = []
        self._dirty: set[str] = set()
        self._watermark_dirty = False
        self.channel_ticks: dict[str, int] = {}
        """Latest clock tick per input channel (see :meth:`tick`)."""
        self.input_clocks: dict[str, InputClock] = {}
        """Per input channel, the ingest workers' ticks combined (see :meth:`on_tick`)."""

    # ------------------------------------------------------------------ input

    def on_session_event(self, event: SessionEvent) -> list[Emit]:
        case = self._case(event.session_id)
        session = case.session
        if session is None:
            session = case.session = SessionState(session_id=event.session_id)
        if session.finalized:
            raise LateInputError(
                f"session event {event.kind!r} for session {event.session_id}, whose bill is "
                f"final (samples are kept {self.config.sample_retention_s} s after the end)"
            )
        session.apply_event(event)
        return self._touched(case, to_ms(event.event_time))

    def on_reading(self, reading: MeterReading) -> list[Emit]:
        case = self._case(reading.session_id)
        session = case.session
        if session is None:
            session = case.session = SessionState(
                session_id=reading.session_id,
                station_id=reading.station_id,
                evse_id=reading.evse_id,
                connector_id=reading.connector_id,
                transaction_id=reading.transaction_id,
            )
        if session.finalized:
            raise LateInputError(
                f"meter reading for session {reading.session_id}, whose bill is final "
                f"(samples are kept {self.config.sample_retention_s} s after the end)"
            )
        session.apply_reading(reading)
        return self._touched(case, to_ms(reading.event_time))

    def on_payment(self, payment: PaymentEvent) -> list[Emit]:
        key = payment.session_id or f"payment:{payment.payment_id}"
        case = self._case(key)
        if any(p.event_id == payment.event_id for p in case.payments):
            return []  # a redelivered or replayed PSP notification
        at = to_ms(payment.event_time)
        case.payments.append(
            PaymentRecord(
                payment.event_id,
                payment.payment_id,
                payment.kind,
                payment.amount_minor,
                payment.currency,
                at,
                payment.method,
                payment.card_fingerprint_hash,
            )
        )
        return self._touched(case, at)

    def on_tick(self, channel: str, tick: ClockTick, *, channels: int) -> list[Emit]:
        """A clock tick record on one input ``channel``, from one of the ingest workers.

        Their ticks are combined per channel by an :class:`~topics.clock.InputClock`, which
        is part of the changelog too: a worker that takes this partition over knows what
        every ingest worker vouched for, and need not wait until each ticks again (at the
        end of a stream, or while the minute does not move, one may not).
        """
        clock = self.input_clocks.get(channel)
        if clock is None:
            clock = self.input_clocks[channel] = InputClock()
        at_ms = clock.observe(tick)
        if clock.changed:
            clock.changed = False
            self._watermark_dirty = True
        if at_ms is None:
            return []
        return self.tick(channel, at_ms, channels=channels)

    def tick(self, channel: str, at_ms: int, *, channels: int) -> list[Emit]:
        """A clock tick seen on one input ``channel``; the watermark is the oldest channel's.

        The latest tick per channel is part of the changelog, so a restarted worker that
        already committed one channel's last tick still knows it.
        """
        if at_ms > self.channel_ticks.get(channel, _NEVER):
            self.channel_ticks[channel] = at_ms
            self._watermark_dirty = True
        if len(self.channel_ticks) < channels:
            return []
        return self.advance(min(self.channel_ticks.values()))

    def advance(self, watermark_ms: int) -> list[Emit]:
        """Move the watermark (never back) and evaluate every case that became due."""
        if watermark_ms <= self.watermark_ms:
            return []
        self.watermark_ms = watermark_ms
        self._watermark_dirty = True
        out: list[Emit] = []
        heap = self._heap
        while heap and heap[0][0] <= watermark_ms:
            due, key = heapq.heappop(heap)
            case = self.cases.get(key)
            if case is None or case.next_due_ms != due:
                continue  # superseded timer
            case.next_due_ms = None
            out += self._evaluate(case)
        return out

    # ------------------------------------------------------------------ state

    def _case(self, key: str) -> Case:
        case = self.cases.get(key)
        if case is None:
            case = self.cases[key] = Case(key=key)
        return case

    def _touched(self, case: Case, at_ms: int) -> list[Emit]:
        if at_ms > case.last_event_ms:
            case.last_event_ms = at_ms
        self._dirty.add(case.key)
        if case.bill is not None or case.result_digest is not None or self._due_now(case):
            return self._evaluate(case)  # a correction, or an event later than its grace
        self._schedule(case)
        return []

    def _due_now(self, case: Case) -> bool:
        """Whether the watermark is already past the case's bill or verdict time."""
        wm = self.watermark_ms
        s = case.session
        grace_ms = self.config.bill_grace_s * 1000
        if s is not None and s.ended_ms is not None and wm >= s.ended_ms + grace_ms:
            return True
        due = self._verdict_due(case)
        return due is not None and wm >= due

    def _schedule(self, case: Case) -> None:
        due = self._next_due(case)
        current = case.next_due_ms
        if due is None or (current is not None and current <= due):
            return  # an earlier (or the same) timer is set: it re-evaluates and reschedules
        case.next_due_ms = due
        self._dirty.add(case.key)
        heapq.heappush(self._heap, (due, case.key))

    def _next_due(self, case: Case) -> int | None:
        cfg = self.config
        wm = self.watermark_ms
        candidates: list[int] = []
        s = case.session
        if s is not None and s.ended_ms is not None:
            if case.billed_version != s.version:
                candidates.append(s.ended_ms + cfg.bill_grace_s * 1000)
            if not s.finalized:
                candidates.append(s.ended_ms + cfg.sample_retention_s * 1000)
        due = self._verdict_due(case)
        if due is not None:
            candidates.append(due)
        for p in case.payments:
            if p.kind == "authorized":
                candidates.append(p.at_ms + cfg.auth_validity_s * 1000)
        if case.last_event_ms != _NEVER:
            candidates.append(case.last_event_ms + cfg.retention_s * 1000)
        future = [c for c in candidates if c > wm]
        return min(future) if future else None

    def _verdict_due(self, case: Case) -> int | None:
        s = case.session
        return verdict_due_ms(
            ended_ms=s.ended_ms if s else None,
            has_session=s is not None,
            first_payment_ms=min((p.at_ms for p in case.payments), default=None),
            has_payments=bool(case.payments),
            config=self.config,
        )

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, case: Case) -> list[Emit]:
        cfg = self.config
        wm = self.watermark_ms
        out: list[Emit] = []
        s = case.session
        if case.last_event_ms != _NEVER and wm >= case.last_event_ms + cfg.retention_s * 1000:
            del self.cases[case.key]
            self._dirty.add(case.key)  # written as a tombstone
            return out
        if (
            s is not None
            and s.ended_ms is not None
            and not s.finalized
            and wm >= s.ended_ms + cfg.bill_grace_s * 1000
            and case.billed_version != s.version
        ):
            out += self._bill(case, s)
        featured = (
            (s.seq_repeats, len(case.featured_payments(cfg.sample_retention_s)))
            if s is not None
            else (0, 0)
        )
        if (
            s is not None
            and case.bill is not None
            and not s.finalized
            and featured != case.featured
        ):
            # Payments or re-sent events after the bill: detection sees the session again.
            case.featured = featured
            if not any(e.topic == "session_bills" for e in out):
                out.append(Emit("session_features", case.key, None, msgspec.structs.replace(s)))
        due = self._verdict_due(case)
        if due is not None and wm >= due and (s is None or case.bill is not None):
            out += self._verdict(case)
        if (
            s is not None
            and s.ended_ms is not None
            and not s.finalized
            and wm >= s.ended_ms + cfg.sample_retention_s * 1000
            and case.billed_version == s.version
        ):
            s.finalize()
        self._dirty.add(case.key)
        self._schedule(case)
        return out

    def _tariff(self, s: SessionState) -> tuple[Tariff | None, str | None]:
        tariff_id = s.tariff_id
        if tariff_id is None and s.station_id is not None:
            station = self.stations.get(s.station_id)
            tariff_id = station.tariff_id if station is not None else None
        if tariff_id is None:
            return None, f"no tariff: station {s.station_id!r} is unknown and no tariff_id given"
        tariff = self.tariffs.get(tariff_id)
        if tariff is None:
            return None, f"tariff {tariff_id!r} is unknown"
        return tariff, None

    def _bill(self, case: Case, s: SessionState) -> list[Emit]:
        case.billed_version = s.version
        tariff, problem = self._tariff(s)
        bill: SessionBill | None = None
        if tariff is not None:
            try:
                bill = build_bill(s, tariff)
            except (BillingError, ValueError) as exc:
                problem = f"cannot rate with tariff {tariff.tariff_id!r}: {exc}"
        if bill is None:
            summary = BillSummary(stable_id("unrated", case.key, problem), 0, "XXX", problem)
            case.bill = summary  # the verdict reports it as "unrated"
            # Detection must still see the session: a station or tariff missing from the
            # reference data must not hide its meter or token from the fraud rules.
            return [Emit("session_features", case.key, None, msgspec.structs.replace(s))]
        summary = BillSummary(bill.event_id, bill.total_minor, bill.currency)
        if case.bill is not None and case.bill.event_id == bill.event_id:
            # The samples changed, the bill did not: detection still sees the new samples.
            return [Emit("session_features", case.key, None, msgspec.structs.replace(s))]
        case.bill = summary
        return [Emit("session_bills", case.key, bill, msgspec.structs.replace(s))]

    def _verdict(self, case: Case) -> list[Emit]:
        s = case.session
        expected: Expected | None = None
        if s is not None and case.bill is not None:
            ids = [case.bill.event_id] if case.bill.unrated is None else []
            ids += [i for i in (s.started_event_id, s.ended_event_id) if i]
            currency = case.bill.currency if case.bill.unrated is None else _currency_of(case)
            expected = Expected(
                s.session_id, case.bill.total_minor, currency, tuple(ids), case.bill.unrated
            )
        verdict = reconcile(
            expected, case.payments, watermark_ms=self.watermark_ms, config=self.config
        )
        if verdict is None:
            return []
        digest = stable_id("result", _encode_digest(_content(verdict)).hex())
        if digest == case.result_digest:
            return []
        previous = case.result_outcome
        case.result_digest = digest
        case.result_outcome = verdict.outcome
        case.result_currency = verdict.currency
        case.result_delta_minor = verdict.delta_minor
        case.revision += 1
        result = _result(case, s, verdict, digest, self.watermark_ms)
        out = [Emit("reconciliation", case.key, result)]
        if verdict.outcome != "matched" or (previous is not None and previous != "matched"):
            out.append(Emit("reconciliation_mismatches", case.key, result))
        return out

    # ------------------------------------------------------------------ changelog

    def take_changes(self) -> Iterator[tuple[str, bytes | None]]:
        """Changelog writes since the last call: ``(key, encoded case or None)``."""
        for key in sorted(self._dirty):
            case = self.cases.get(key)
            yield key, None if case is None else _encode_case(case)
        self._dirty.clear()
        if self._watermark_dirty:
            self._watermark_dirty = False
            inputs = {channel: clock.state() for channel, clock in self.input_clocks.items()}
            yield WATERMARK_KEY, _encode_clock({"watermark": self.watermark_ms,
                                                "channels": self.channel_ticks,
                                                "inputs": inputs})  # fmt: skip

    def restore(self, records: list[tuple[bytes, bytes | None]]) -> int:
        """Rebuild the cases and the watermark from changelog records (latest per key wins)."""
        latest: dict[bytes, bytes | None] = {}
        for key, value in records:
            latest[key] = value
        for key, value in latest.items():
            text = key.decode()
            if text == WATERMARK_KEY:
                if value is not None:
                    clock = _decode_clock(value)
                    self.watermark_ms = max(self.watermark_ms, clock.watermark)
                    self.channel_ticks = dict(clock.channels)
                    self.input_clocks = {
                        channel: InputClock.from_state(state)
                        for channel, state in clock.inputs.items()
                    }
            elif value is None:
                self.cases.pop(text, None)
            else:
                self.cases[text] = _decode_case(value)
        self._heap = [(c.next_due_ms, k) for k, c in self.cases.items() if c.next_due_ms]
        heapq.heapify(self._heap)
        self._dirty.clear()
        return len(self.cases)

    def open_sessions(self) -> int:
        """Sessions not yet ended."""
        return sum(1 for c in self.cases.values() if c.session and c.session.ended_ms is None)


WATERMARK_KEY: Final = "\x00watermark"
"""Changelog key of the engine's watermark."""


def encoded_size(case: Case) -> int:
    """Bytes of a case in the changelog."""
    return len(_encode_case(case))


def _named_session(key: str) -> str | None:
    """The session a session-less case's payments named (None for payment-keyed cases)."""
    return None if key.startswith("payment:") else key


def _currency_of(case: Case) -> str:
    return case.payments[0].currency if case.payments else "XXX"


def _content(v: Verdict) -> tuple[object, ...]:
    return (
        v.outcome,
        v.outcomes,
        v.currency,
        v.expected_minor,
        v.authorized_minor,
        v.captured_minor,
        v.refunded_minor,
        v.delta_minor,
        v.payment_ids,
        v.evidence_event_ids,
    )


def _result(
    case: Case, s: SessionState | None, v: Verdict, digest: str, decided_ms: int
) -> ReconciliationResult:
    times = [p.at_ms for p in case.payments]
    if s is not None and s.ended_ms is not None:
        times.append(s.ended_ms)
    at = max(times) if times else 0
    return ReconciliationResult(
        event_id=digest,
        event_time=from_ms(at),
        source=_SOURCE,
        result_id=stable_id("reconciliation", case.key),
        session_id=s.session_id if s is not None else _named_session(case.key),
        payment_ids=v.payment_ids,
        outcome=v.outcome,  # type: ignore[arg-type]
        outcomes=v.outcomes,  # type: ignore[arg-type]
        currency=v.currency if v.currency != "XXX" else None,
        expected_minor=v.expected_minor,
        authorized_minor=v.authorized_minor,
        captured_minor=v.captured_minor,
        refunded_minor=v.refunded_minor,
        delta_minor=v.delta_minor,
        revision=case.revision,
        evidence_event_ids=v.evidence_event_ids,
        detail=v.detail,
        decided_at=from_ms(decided_ms) if decided_ms > _NEVER else None,
    )
