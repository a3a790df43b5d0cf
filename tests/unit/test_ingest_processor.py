"""The ingest's pure message handling: outputs, dead letters, pending-call state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest

from streams.ingest import BatchResult, IngestProcessor, Output
from topics.catalog import CLOCK_KEY, SESSION_PARTITIONS, topic
from topics.codec import decode
from topics.identity import session_id_for
from topics.records import ClockTick, DeadLetter, PaymentEvent

NOW = datetime(2024, 3, 1, tzinfo=UTC)
FRAMES = topic("ocpp_frames")


def data(result: BatchResult) -> list[Output]:
    """The outputs without the clock ticks."""
    return [o for o in result.outputs if o.key != CLOCK_KEY]


def frame_msg(
    frame: list[object], offset: int, partition: int = 0
) -> tuple[str, int, int, bytes, bytes]:
    value = orjson.dumps(
        {
            "station_id": "CP-9",
            "received_at": "2024-03-01T12:00:00Z",
            "protocol": "ocpp1.6",
            "frame": frame,
        }
    )
    return (FRAMES, partition, offset, b"CP-9", value)


START = [2, "42", "StartTransaction", {"connectorId": 1, "idTag": "TAG", "meterStart": 5, "timestamp": "2024-03-01T12:00:00Z"}]  # fmt: skip
RESULT = [3, "42", {"transactionId": 1001, "idTagInfo": {"status": "Accepted"}}]


@pytest.fixture
def processor() -> IngestProcessor:
    return IngestProcessor(hash_secret=b"s")


def test_bad_input_becomes_a_dead_letter_with_original_bytes(processor: IngestProcessor) -> None:
    raw = b'{"station_id": "CP-9", "frame": [2, "x"'  # truncated JSON
    result = processor.process([(FRAMES, 3, 77, b"CP-9", raw)], now=NOW)
    [out] = data(result)
    assert out.topic == topic("dead_letters")
    letter = decode(out.value or b"", DeadLetter)
    assert letter.original_value == raw and letter.original_key == b"CP-9"
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        FRAMES,
        3,
        77,
    )
    assert letter.stage == "ingest" and letter.error_type == "RecordDecodeError"
    assert "not valid JSON" in letter.reason
    assert result.counts[("ocpp_frames", "dead_letter")] == 1


def test_envelope_validation_names_the_field(processor: IngestProcessor) -> None:
    value = orjson.dumps(
        {"station_id": "CP-9", "received_at": "yesterday", "protocol": "ocpp1.6", "frame": []}
    )
    [out] = data(processor.process([(FRAMES, 0, 1, None, value)], now=NOW))
    assert "$.received_at" in decode(out.value or b"", DeadLetter).reason


def test_null_value_is_a_dead_letter(processor: IngestProcessor) -> None:
    [out] = data(processor.process([(topic("csms_session_events"), 0, 5, b"k", None)], now=NOW))
    assert decode(out.value or b"", DeadLetter).reason == "message has no value (null)"


def test_start_transaction_state_is_written_to_the_changelog(processor: IngestProcessor) -> None:
    first = processor.process([frame_msg(START, 0, partition=2)], now=NOW)
    [put] = data(first)
    assert (put.topic, put.key, put.partition) == (topic("ocpp_pending_calls"), b"CP-9|42", 2)
    assert processor.pending[2] == {"CP-9|42": put.value}
    second = processor.process([frame_msg(RESULT, 1, partition=2)], now=NOW)
    started, tombstone = data(second)
    assert (
        started.topic == topic("session_events")
        and started.key == session_id_for("CP-9", 1001).encode()
    )
    assert (tombstone.topic, tombstone.value, tombstone.partition) == (
        topic("ocpp_pending_calls"),
        None,
        2,
    )
    assert processor.pending[2] == {}
    assert second.counts[("ocpp_frames", "accepted")] == 1


def test_restore_rebuilds_pending_calls(processor: IngestProcessor) -> None:
    [put] = data(processor.process([frame_msg(START, 0, partition=1)], now=NOW))
    fresh = IngestProcessor(hash_secret=b"s")
    assert fresh.restore(1, [(put.key, put.value), (b"CP-9|old", b"{}"), (b"CP-9|old", None)]) == 1
    [started, _] = data(fresh.process([frame_msg(RESULT, 1, partition=1)], now=NOW))
    assert started.topic == topic("session_events")


def test_ignored_frames_are_counted_not_dropped_silently(processor: IngestProcessor) -> None:
    result = processor.process([frame_msg([2, "h", "Heartbeat", {}], 0)], now=NOW)
    assert data(result) == [] and result.counts[("ocpp_frames", "ignored")] == 1


def test_payment_without_session_finds_it_from_station_and_transaction(
    processor: IngestProcessor,
) -> None:
    value = orjson.dumps(
        {
            "event_id": "p1",
            "event_time": "2024-03-01T12:00:00Z",
            "source": "stripe",
            "payment_id": "pi_1",
            "station_id": "CP-9",
            "transaction_id": "1001",
            "psp": "stripe",
            "psp_reference": "ch_1",
            "kind": "captured",
            "amount_minor": 990,
            "currency": "EUR",
            "method": "card",
        }
    )
    [out] = data(processor.process([(topic("psp_payment_events"), 0, 0, None, value)], now=NOW))
    payment = decode(out.value or b"", PaymentEvent)
    assert (
        payment.session_id == session_id_for("CP-9", 1001)
        and out.key == payment.session_id.encode()
    )


def test_canonical_session_event_with_a_raw_token_is_rejected(processor: IngestProcessor) -> None:
    value = orjson.dumps(
        {
            "event_id": "e1",
            "event_time": "2024-03-01T12:00:00Z",
            "source": "csms",
            "session_id": "s1",
            "station_id": "CP-9",
            "evse_id": 1,
            "kind": "started",
            "token_hash": "04A2B3C4D5E6F7",  # a raw RFID UID, not a hash
        }
    )
    [out] = data(processor.process([(topic("csms_session_events"), 0, 0, b"s1", value)], now=NOW))
    letter = decode(out.value or b"", DeadLetter)
    assert "$.token_hash" in letter.reason


def test_unexpected_errors_are_dead_lettered_too(
    processor: IngestProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(processor.adapter, "adapt", boom)
    [out] = data(processor.process([frame_msg(START, 0)], now=NOW))
    letter = decode(out.value or b"", DeadLetter)
    assert (letter.error_type, letter.reason) == ("ZeroDivisionError", "bug")


def test_clock_ticks_go_to_every_partition_when_the_minute_advances(
    processor: IngestProcessor,
) -> None:
    first = processor.process([frame_msg(START, 0)], now=NOW)
    ticks = [o for o in first.outputs if o.key == CLOCK_KEY]
    targets = {(o.topic, o.partition) for o in ticks}
    assert targets == {
        (topic(t), p)
        for t in ("session_events", "meter_readings", "payment_events")
        for p in range(SESSION_PARTITIONS)
    }
    tick = decode(ticks[0].value or b"", ClockTick)
    assert tick.event_time.second == 0 and tick.event_time.microsecond == 0
    # the same minute again sends nothing; a dead letter does not move the clock either
    again = processor.process([frame_msg(RESULT, 1), (FRAMES, 0, 2, None, b"{")], now=NOW)
    assert [o for o in again.outputs if o.key == CLOCK_KEY] == []


def test_input_a_day_ahead_of_now_does_not_move_the_clock(processor: IngestProcessor) -> None:
    result = processor.process([frame_msg(START, 0)], now=NOW - timedelta(days=400))
    assert [o for o in result.outputs if o.key == CLOCK_KEY] == []
    assert result.counts[("clock", "future_time_ignored")] == 1


def test_clock_waits_for_partitions_behind_and_for_assigned_ones_not_read_yet() -> None:
    p = IngestProcessor(hash_secret=b"k")
    p.assign([("frames", 0), ("frames", 1), ("payments", 0)])
    p.seen_ms = {("frames", 0): 9_000_000}
    assert p.clock_now() == -1  # frames[1] and payments[0] not read yet
    p.seen_ms[("frames", 1)] = 3_000_000
    p.mark_caught_up([("payments", 0)])  # an empty or finished partition does not hold back
    assert p.clock_now() == 3_000_000
    p.mark_caught_up([("frames", 1)])
    assert p.clock_now() == 9_000_000
    p.mark_caught_up([("frames", 0)])
    assert p.clock_now() == 9_000_000  # all read to the end: the latest time read anywhere


def _ticks(result: BatchResult, short: str, partition: int) -> list[tuple[str, int, bytes]]:
    """The clock ticks of one output partition, as a billing consumer would read them."""
    return [
        (topic(short), partition, o.value or b"")
        for o in result.outputs
        if o.key == CLOCK_KEY and o.topic == topic(short) and o.partition == partition
    ]


def test_two_ingest_workers_each_vouch_for_their_own_partitions_only() -> None:
    from streams.billing import BillingProcessor
    from streams.ingest import INPUT_TOPICS

    inputs = [(topic(t), p) for t in INPUT_TOPICS for p in range(SESSION_PARTITIONS)]
    a, b = IngestProcessor(hash_secret=b"k"), IngestProcessor(hash_secret=b"k")
    a.assign(inputs[::2])
    b.assign(inputs[1::2])
    a.mark_caught_up(inputs[2::2])  # a reads frames[0] only, at 13:00
    b.mark_caught_up(inputs[3::2])  # b reads frames[1] only, at 12:10 (behind)
    out_a = a.process([frame_msg(START, 0, partition=0)], now=NOW)
    late = [2, "7", "Heartbeat", {}]
    out_b = b.process([(FRAMES, 1, 0, b"CP-8", orjson.dumps({"station_id": "CP-8",
        "received_at": "2024-03-01T11:10:00Z", "protocol": "ocpp1.6", "frame": late}))],
        now=NOW)  # fmt: skip
    [tick_a] = [decode(v, ClockTick) for *_, v in _ticks(out_a, "session_events", 0)]
    [tick_b] = [decode(v, ClockTick) for *_, v in _ticks(out_b, "session_events", 0)]
    assert set(tick_a.covers or ()) | set(tick_a.idle) == {f"{t}/{p}" for t, p in [
        (s, p) for s in INPUT_TOPICS for p in range(SESSION_PARTITIONS)][::2]}  # fmt: skip
    assert tick_a.inputs == tick_b.inputs == len(inputs)

    billing = BillingProcessor()
    for short in ("session_events", "meter_readings", "payment_events"):
        billing.process([(t, p, 0, CLOCK_KEY, v) for t, p, v in _ticks(out_a, short, 0)], now=NOW)
    assert billing.engine(0).watermark_ms <= 0  # b has not vouched for its partitions yet
    for short in ("session_events", "meter_readings", "payment_events"):
        billing.process([(t, p, 1, CLOCK_KEY, v) for t, p, v in _ticks(out_b, short, 0)], now=NOW)
    assert billing.engine(0).watermark_ms == int(tick_b.event_time.timestamp() * 1000)
    assert tick_b.event_time < tick_a.event_time  # the slower worker holds the clock


def test_a_worker_with_only_empty_partitions_says_so_once() -> None:
    from topics.clock import InputClock

    p = IngestProcessor(hash_secret=b"k")
    mine = [(FRAMES, 3), (topic("psp_payment_events"), 3)]
    p.assign(mine)
    p.mark_caught_up(mine)
    [first, *_] = [decode(o.value or b"", ClockTick) for o in p.tick(NOW).outputs]
    assert first.covers == [] and first.idle == ["ocpp_frames/3", "psp_payment_events/3"]
    assert p.tick(NOW).outputs == []  # nothing changed: nothing more
    clock = InputClock()
    assert clock.observe(first) is None  # idle partitions alone tell no time
    other = msgspec.structs.replace(
        first, covers=[f"x/{i}" for i in range(first.inputs - 2)], idle=[]
    )
    assert clock.observe(other) == int(other.event_time.timestamp() * 1000)


def test_two_ingest_workers_give_the_clock_one_worker_would() -> None:
    """Busy partitions: the slowest holds the clock; all read to their end: the latest time
    read anywhere. The same for one worker reading everything and two splitting it (before,
    two workers at their end gave the older of their two times)."""
    from streams.ingest import INPUT_TOPICS
    from topics.clock import InputClock

    inputs = [(topic(t), p) for t in INPUT_TOPICS for p in range(SESSION_PARTITIONS)]
    busy = [(FRAMES, 0), (FRAMES, 1)]

    def heartbeat(partition: int, at: str, offset: int) -> tuple[str, int, int, bytes, bytes]:
        envelope = {"station_id": f"CP-{partition}", "received_at": at, "protocol": "ocpp1.6",
                    "frame": [2, f"hb{offset}", "Heartbeat", {}]}  # fmt: skip
        return (FRAMES, partition, offset, f"CP-{partition}".encode(), orjson.dumps(envelope))

    messages = {
        0: heartbeat(0, "2024-03-01T11:05:00Z", 0),
        1: heartbeat(1, "2024-03-01T11:40:00Z", 0),
    }

    def clock_of(workers: list[tuple[IngestProcessor, list[tuple[str, int]]]]) -> list[int | None]:
        clock = InputClock()
        seen: list[int | None] = []
        results: list[list[BatchResult]] = [[] for _ in workers]
        for i, (w, mine) in enumerate(workers):
            w.assign(mine)
            w.mark_caught_up([tp for tp in mine if tp not in busy])
            results[i].append(w.process([messages[p] for t, p in busy if (t, p) in mine], now=NOW))
        for worker_results in results:
            for *_, v in [t for r in worker_results for t in _ticks(r, "session_events", 0)]:
                now_ms = clock.observe(decode(v, ClockTick))
        seen.append(now_ms)
        for w, mine in workers:
            w.mark_caught_up(mine)
            for *_, v in _ticks(w.tick(NOW), "session_events", 0):
                now_ms = clock.observe(decode(v, ClockTick))
        seen.append(now_ms)
        return seen

    one = clock_of([(IngestProcessor(hash_secret=b"k"), inputs)])
    two = clock_of([(IngestProcessor(hash_secret=b"k"), inputs[::2]),
                    (IngestProcessor(hash_secret=b"k"), inputs[1::2])])  # fmt: skip
    assert (FRAMES, 0) in inputs[::2] and (FRAMES, 1) in inputs[1::2]
    assert one == two
    busy_ms, ended_ms = one
    assert busy_ms is not None and ended_ms is not None and busy_ms < ended_ms
    assert (ended_ms - busy_ms) // 60_000 == 35  # 11:05 while both read, 11:40 at their end


def test_a_billing_partition_taken_over_keeps_what_every_ingest_worker_vouched_for() -> None:
    """The combined clock is in billing's changelog: the new owner of a partition moves on
    the next tick of either ingest worker, without waiting for both to tick again."""
    from streams.billing import BillingProcessor
    from streams.ingest import INPUT_TOPICS

    inputs = [(topic(t), p) for t in INPUT_TOPICS for p in range(SESSION_PARTITIONS)]
    a, b = IngestProcessor(hash_secret=b"k"), IngestProcessor(hash_secret=b"k")
    a.assign(inputs[::2])
    b.assign(inputs[1::2])
    a.mark_caught_up(inputs[2::2])
    b.mark_caught_up(inputs[3::2])

    def heartbeat(partition: int, at: str, offset: int) -> tuple[str, int, int, bytes, bytes]:
        envelope = {"station_id": "CP-8", "received_at": at, "protocol": "ocpp1.6",
                    "frame": [2, f"hb{offset}", "Heartbeat", {}]}  # fmt: skip
        return (FRAMES, partition, offset, b"CP-8", orjson.dumps(envelope))

    def ticks(result: BatchResult) -> list[tuple[str, int, int, bytes, bytes]]:
        shorts = ("session_events", "meter_readings", "payment_events")
        return [(t, p, 0, CLOCK_KEY, v) for s in shorts for t, p, v in _ticks(result, s, 0)]

    first = BillingProcessor()
    out = first.process(ticks(a.process([heartbeat(0, "2024-03-01T12:00:00Z", 0)], now=NOW)),
                        now=NOW)  # fmt: skip
    out2 = first.process(ticks(b.process([heartbeat(1, "2024-03-01T11:10:00Z", 0)], now=NOW)),
                         now=NOW)  # fmt: skip
    assert first.engine(0).watermark_ms == to_ms_of("2024-03-01T11:10:00Z")
    changelog = [(o.key or b"", o.value) for o in out.outputs + out2.outputs
                 if o.topic == first.changelog_topic and o.partition == 0]  # fmt: skip

    second = BillingProcessor()  # the partition's new owner
    second.restore(0, changelog)
    second.process(ticks(b.process([heartbeat(1, "2024-03-01T11:40:00Z", 1)], now=NOW)),
                   now=NOW)  # fmt: skip
    assert second.engine(0).watermark_ms == to_ms_of("2024-03-01T11:40:00Z")  # a's is known


def to_ms_of(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _hb(partition: int, at: str, offset: int) -> tuple[str, int, int, bytes, bytes]:
    """An OCPP Heartbeat frame received at ``at``: moves the ingest's input time only."""
    envelope = {"station_id": f"CP-{partition}", "received_at": at, "protocol": "ocpp1.6",
                "frame": [2, f"hb{offset}", "Heartbeat", {}]}  # fmt: skip
    return (FRAMES, partition, offset, f"CP-{partition}".encode(), orjson.dumps(envelope))


def _observe(clock: object, *results: BatchResult) -> int | None:
    """Feed the ticks of ``results`` (session_events[0]) to an InputClock; its last answer."""
    now_ms = None
    for r in results:
        for *_, v in _ticks(r, "session_events", 0):
            now_ms = clock.observe(decode(v, ClockTick))  # type: ignore[attr-defined]
    return now_ms


def test_a_worker_at_its_end_renews_its_claim_while_another_moves_on() -> None:
    from topics.clock import IDLE_HEARTBEAT_MS

    p = IngestProcessor(hash_secret=b"k")
    mine = [(FRAMES, 1)]
    p.assign(mine)
    p.process([_hb(1, "2024-03-01T11:00:00Z", 0)], now=NOW)
    p.mark_caught_up(mine)
    [claim] = [decode(v, ClockTick) for *_, v in _ticks(p.tick(NOW), "session_events", 0)]
    assert claim.idle == ["ocpp_frames/1"] and claim.sent_ms == int(NOW.timestamp() * 1000)
    later = NOW + timedelta(milliseconds=IDLE_HEARTBEAT_MS)
    assert p.tick(later).outputs == []  # nobody else moved: nothing to renew

    other = msgspec.structs.replace(claim, covers=["ocpp_frames/0"], idle=[], sent_ms=5)
    p.others.append(other)  # another worker, still reading ocpp_frames/0
    soon = NOW + timedelta(milliseconds=IDLE_HEARTBEAT_MS - 1)
    assert p.tick(soon).outputs == []  # a heartbeat after the last tick at most
    [renewal] = [decode(v, ClockTick) for *_, v in _ticks(p.tick(later), "session_events", 0)]
    assert renewal.idle == claim.idle and renewal.event_time == claim.event_time
    assert renewal.sent_ms == claim.sent_ms + IDLE_HEARTBEAT_MS  # type: ignore[operator]
    assert p.tick(later + timedelta(seconds=1)).outputs == []  # renewed for that one already

    # The other's renewals (all idle, the same minute) do not count, or idle workers would
    # renew each other's claims forever; its newer minute does.
    idle_other = msgspec.structs.replace(other, idle=["ocpp_frames/0"], sent_ms=6)
    p.others.append(idle_other)
    p.others.append(msgspec.structs.replace(idle_other, sent_ms=7))
    assert p.tick(later + timedelta(seconds=2)).outputs == []
    moved = msgspec.structs.replace(
        idle_other, event_time=claim.event_time + timedelta(minutes=1), sent_ms=8
    )
    p.others.append(moved)
    assert p.tick(later + timedelta(seconds=3)).outputs != []
    p.others.append(claim)  # its own ticks, read back, do not count either
    assert p.tick(later + timedelta(seconds=4)).outputs == []


def test_a_dead_workers_claim_lapses_and_holds_the_clock_until_its_partitions_are_taken_over() -> (
    None
):
    """Two ingest workers; b reads frames[1] to its end (11:00) and is SIGKILLed. Records
    reach frames[1] (11:05) while a, reading the rest, moves on to 13:00. Once b's claim is
    not renewed for the lease, frames[1] holds the clock at 11:00 again, so billing does not
    take 13:00 for the time of records still unread there (a fault test saw a session billed
    and closed before its readings, on a clock weeks ahead). A live b keeps the clock moving.
    """
    from streams.ingest import INPUT_TOPICS
    from topics.clock import IDLE_HEARTBEAT_MS, IDLE_LEASE_MS, InputClock

    inputs = [(topic(t), p) for t in INPUT_TOPICS for p in range(SESSION_PARTITIONS)]
    b_owns = [tp for tp in inputs if tp[1] % 2 == 1]
    a_owns = [tp for tp in inputs if tp not in b_owns]

    def start() -> tuple[IngestProcessor, IngestProcessor, InputClock]:
        a, b = IngestProcessor(hash_secret=b"k"), IngestProcessor(hash_secret=b"k")
        a.assign(a_owns)
        b.assign(b_owns)
        a.mark_caught_up([tp for tp in a_owns if tp != (FRAMES, 0)])
        b.mark_caught_up([tp for tp in b_owns if tp != (FRAMES, 1)])
        clock = InputClock()
        _observe(clock, a.process([_hb(0, "2024-03-01T10:30:00Z", 0)], now=NOW))
        _observe(clock, b.process([_hb(1, "2024-03-01T11:00:00Z", 0)], now=NOW))
        b.mark_caught_up([(FRAMES, 1)])
        _observe(clock, b.tick(NOW))  # b at its end: frames[1] no longer holds the clock
        return a, b, clock

    def ms(text: str) -> int:
        return to_ms_of(text) - to_ms_of(text) % 60_000

    step = timedelta(milliseconds=IDLE_HEARTBEAT_MS)
    lapse = NOW + timedelta(milliseconds=IDLE_LEASE_MS) + step

    # b lives: a moves on after b's claim lapsed, which holds the clock until b, seeing a's
    # tick, renews its claim; then a's progress is the clock.
    a, b, clock = start()
    moved = a.process([_hb(0, "2024-03-01T13:00:00Z", 1)], now=lapse)
    assert _observe(clock, moved) == ms("2024-03-01T11:00:00Z")
    b.others.extend(decode(v, ClockTick) for *_, v in _ticks(moved, "payment_events", 0))
    assert _observe(clock, b.tick(lapse + step)) == ms("2024-03-01T13:00:00Z")

    # b dies at its end: its claim lapses and frames[1] holds the clock at 11:00.
    a, b, clock = start()
    _observe(clock, a.process([_hb(0, "2024-03-01T13:00:00Z", 1)], now=lapse))
    a.mark_caught_up([(FRAMES, 0)])
    assert _observe(clock, a.tick(lapse + step)) == ms("2024-03-01T11:00:00Z")

    # a takes b's partitions over and reads the record that reached frames[1] meanwhile:
    # its tick vouches for 11:05 (not its own 13:00), and once at its end the clock moves on.
    a.assign(b_owns)
    a.mark_caught_up([tp for tp in b_owns if tp != (FRAMES, 1)])
    taken = a.process([_hb(1, "2024-03-01T11:05:00Z", 1)], now=lapse + 2 * step)
    assert _observe(clock, taken) == ms("2024-03-01T11:05:00Z")
    a.mark_caught_up([(FRAMES, 1)])
    assert _observe(clock, a.tick(lapse + 3 * step)) == ms("2024-03-01T13:00:00Z")
