"""The detection stage's pure processor: the same alerts however its input is batched or
its partitions interleave, state that survives a restore, bad input to the dead-letter
topic, nothing raised twice."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from streams.detection import DetectionProcessor, InMemoryDetection, KeyedClock, KeyedFeatures
from streams.replay import Replay, partition_for
from topics.catalog import CLOCK_KEY, topic
from topics.codec import decode, encode
from topics.records import ClockTick, DeadLetter, SessionFeatures
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation

SECRET = b"detection-stage-test"
NOW = datetime(2024, 1, 1, tzinfo=UTC)


Message = tuple[str, int, bytes | None, bytes | None]


class RecordingDetection(InMemoryDetection):
    """The replay's detection, remembering its input messages in the order given."""

    def __init__(self) -> None:
        super().__init__(_processor())
        self.inputs: list[Message] = []

    def feed(self, messages, *, now):  # type: ignore[no-untyped-def]
        messages = list(messages)
        self.inputs += messages
        return super().feed(messages, now=now)


@pytest.fixture(scope="module")
def recorded() -> RecordingDetection:
    config = SimulationConfig(seed=515, sessions=700, stations=30, fault_scale=6.0)
    records = list(Simulation(config, hash_secret=SECRET).records())
    detection = RecordingDetection()
    Replay(hash_secret=SECRET, detection=detection).run(records)
    return detection


def _feed(run: InMemoryDetection, inputs: list[Message], size: int) -> None:
    for start in range(0, len(inputs), size):
        run.feed(inputs[start : start + size], now=NOW)


_msgpack = msgspec.msgpack.Encoder().encode


def _pack(state: object) -> bytes:
    to_bytes = getattr(state, "to_bytes", None)
    return to_bytes() if to_bytes is not None else _msgpack(state)


def _processor() -> DetectionProcessor:
    return DetectionProcessor(partition_for=partition_for)


def test_the_rules_fire_and_nothing_is_rejected(recorded: RecordingDetection) -> None:
    kinds = Counter(a.kind for a in recorded.alerts.values())
    assert len(recorded.alerts) >= 20, "the seed should raise a fair number of rule alerts"
    assert set(kinds) >= {"meter_rollback", "card_testing", "cloned_token_overlap"}, kinds
    assert recorded.dead_letters == []


def test_batching_does_not_change_the_alerts(recorded: RecordingDetection) -> None:
    one = InMemoryDetection(_processor())
    _feed(one, recorded.inputs, 1)
    big = InMemoryDetection(_processor())
    _feed(big, recorded.inputs, 2000)
    assert set(one.alerts) == set(big.alerts) == set(recorded.alerts)


def test_reading_partitions_unevenly_does_not_change_the_alerts(
    recorded: RecordingDetection,
) -> None:
    """A worker catching up on a backlog reads one partition far ahead of another (but
    each in order): the alerts must be the same as in time order. Card testing sees a
    terminal's attempts from every payment partition, so it decides on their clock."""
    by_partition = sorted(recorded.inputs, key=lambda m: (m[0], -m[1]))  # stable sort
    skewed = InMemoryDetection(_processor())
    _feed(skewed, by_partition, 500)
    expected = {a.alert_id: a for a in recorded.alerts.values()}
    assert set(skewed.alerts) == set(expected)
    for alert_id, alert in skewed.alerts.items():
        assert encode(alert) == encode(expected[alert_id])


def test_a_restored_processor_goes_on_where_the_last_one_stopped(
    recorded: RecordingDetection,
) -> None:
    """Stop halfway, rebuild every partition from the changelog rows written so far, go on:
    the alerts equal an uninterrupted run, and none of the first half is raised again."""
    whole = InMemoryDetection(_processor())
    _feed(whole, recorded.inputs, 50)

    first = _processor()
    changelog: dict[int, list[tuple[bytes, bytes | None]]] = {}
    real = first.process

    def capturing(messages, *, now):  # type: ignore[no-untyped-def]
        result = real(messages, now=now)
        for o in result.outputs:
            if o.topic == first.changelog_topic:
                changelog.setdefault(o.partition or 0, []).append((o.key, o.value))
        return result

    first.process = capturing  # type: ignore[method-assign]
    before = InMemoryDetection(first)
    half = len(recorded.inputs) // 2
    _feed(before, recorded.inputs[:half], 50)

    second = _processor()
    restored = sum(second.restore(p, rows) for p, rows in changelog.items())
    assert restored == sum(len(entities) for entities in first.state.values()) > 0
    for partition, entities in first.state.items():
        assert {k: _pack(v) for k, v in second.state[partition].items()} == {
            k: _pack(v) for k, v in entities.items()
        }
    after = InMemoryDetection(second)
    _feed(after, recorded.inputs[half:], 50)
    assert not set(before.alerts) & set(after.alerts), "an alert was raised twice"
    assert set(before.alerts) | set(after.alerts) == set(whole.alerts)


def test_republished_features_raise_nothing_twice(recorded: RecordingDetection) -> None:
    run = InMemoryDetection(_processor())
    _feed(run, recorded.inputs, 100)
    again = [m for m in recorded.inputs if m[0] == topic("session_features")]
    assert len(again) > 100
    assert run.feed(again, now=NOW) == []


@pytest.mark.parametrize(
    ("short", "key", "value", "reason"),
    [
        ("session_features", b"s1", b"{not json", "JSON"),
        ("session_features", b"s1", b'{"event_id": "x"}', "required"),
        ("payment_events", b"s1", None, "no value"),
        ("detection_keyed", b"planet:mars", b"{}", "unknown detection key"),
        ("detection_keyed", b"token:abc", b'{"type": "nope"}', "invalid keyed record"),
    ],
)
def test_bad_input_goes_to_the_dead_letter_topic(
    short: str, key: bytes, value: bytes | None, reason: str
) -> None:
    p = _processor()
    result = p.process([(topic(short), 2, 41, key, value)], now=NOW)
    assert result.alerts == []
    [out] = result.outputs
    assert out.topic == topic("dead_letters")
    letter = decode(out.value or b"", DeadLetter)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        topic(short),
        2,
        41,
    )
    assert letter.original_value == value and letter.stage == "detection"
    assert reason in letter.reason
    assert result.counts[(short, "dead_letter")] == 1


def _clock(channel: str, at: datetime, partition: int) -> list[tuple]:  # type: ignore[type-arg]
    """``clock:<channel>/<source>`` ticks from every source partition, as they reach one
    keyed partition."""
    return [
        (topic("detection_keyed"), partition, 0, f"clock:{channel}/{s}".encode(),
         msgspec.json.encode(KeyedClock(int(at.timestamp() * 1000), channel)))
        for s in range(6)
    ]  # fmt: skip


def test_features_are_held_until_the_clock_then_rekeyed_by_token_then_station() -> None:
    f = SessionFeatures(
        event_id="f1",
        event_time=NOW,
        source="t",
        session_id="s1",
        station_id="CP9",
        token_hash="ab" * 16,
        features={"register_rollbacks": 1.0, "rollback_wh": 50.0},
    )
    p = _processor()
    first = p.process([(topic("session_features"), 3, 0, b"s1", encode(f))], now=NOW)
    [out] = first.outputs
    assert out.key == b"token:" + ("ab" * 16).encode()
    assert out.partition == partition_for(out.key, 6)
    q = out.partition
    held = p.process([(out.topic, q, 0, out.key, out.value)], now=NOW)
    assert held.counts[("detection_keyed", "held")] == 1
    assert [o.key.split(b"|")[0] for o in held.outputs] == [b"held:" + out.key]
    assert not [o for o in held.outputs if o.topic == p.keyed_topic]  # waits for the clock
    second = p.process(_clock("features", NOW, q), now=NOW)
    rekeyed = [o for o in second.outputs if o.topic == p.keyed_topic]
    assert [o.key for o in rekeyed] == [b"station:CP9"] + [f"clock:stations/{q}".encode()] * 6
    assert [o.value for o in second.outputs if o.topic == p.changelog_topic and
            o.key.startswith(b"held:")] == [None]  # fmt: skip
    keyed = msgspec.json.decode(rekeyed[0].value or b"", type=KeyedFeatures)
    assert keyed.token_features["token_new"] == 1.0 and keyed.source == q
    r = rekeyed[0].partition
    assert (
        p.process([(p.keyed_topic, r, 1, b"station:CP9", rekeyed[0].value)], now=NOW).alerts == []
    )
    third = p.process(_clock("stations", NOW, r), now=NOW)
    assert [a.kind for a in third.alerts] == ["meter_rollback"]
    states = {o.key for o in third.outputs if o.topic == p.changelog_topic and o.value}
    assert b"station:CP9" in states and b"online" in states


def test_a_session_published_after_its_partition_clock_waits_for_the_next_tick() -> None:
    """Late features are ordered by their own partition's next tick, not by how far the
    other partitions got: the same order however the partitions interleave."""
    p = _processor()
    late = SessionFeatures(event_id="late", event_time=NOW, source="t", session_id="s-late",
                           station_id="CP1", features={})  # fmt: skip
    key = b"session:s-late"
    q = partition_for(key, 6)
    keyed = msgspec.json.encode(KeyedFeatures(late, source=2))
    later = NOW + timedelta(minutes=5)
    p.process(_clock("features", NOW, q), now=NOW)  # partition 2 (and all) passed NOW
    p.process([(p.keyed_topic, q, 7, key, keyed)], now=NOW)
    [item] = p.held[q].values()
    assert (item.at_ms, item.after_tick_of) == (-1, 2)
    out = p.process([_clock("features", later, q)[2]], now=NOW)  # partition 2's next tick
    [item] = p.held[q].values()
    assert item.at_ms == int(later.timestamp() * 1000)
    assert not [o for o in out.outputs if o.key == b"station:CP1"]  # the others lag
    out = p.process(_clock("features", later, q), now=NOW)
    station = [o for o in out.outputs if o.key == b"station:CP1"]
    assert len(station) == 1 and p.held[q] == {}
    assert msgspec.json.decode(station[0].value, type=KeyedFeatures).order_ms == item.at_ms


def test_the_model_in_service_scores_new_sessions_once_per_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Offline model: one score_many call per batch over the batch's new sessions, its
    alerts published once (republished features are not scored again), and a version
    swapped in between batches is used from the next batch on."""
    from models.offline import SessionModel
    from streams.model_follower import LoadedModel, ModelHolder
    from streams.registry import ModelRegistry
    from tests.retrain_data import synthetic_sessions

    sessions, _ = synthetic_sessions(600, seed=3, fraud_share=0.05)
    registry = ModelRegistry(tmp_path)
    update = registry.publish(
        SessionModel(seed=1).fit_many([f.features for f in sessions[:400]]),
        model_name="session-anomaly", metrics={}, now=NOW,
    )  # fmt: skip
    loaded = LoadedModel(model=registry.load(update), update=update)
    calls: list[int] = []
    real = loaded.score_batch

    class Counting:
        version = loaded.version

        def score_batch(self, batch):  # type: ignore[no-untyped-def]
            calls.append(len(batch))
            return real(batch)

    holder = ModelHolder()
    processor = DetectionProcessor(partition_for=partition_for, model=lambda: holder.current())
    run = InMemoryDetection(processor)
    sample = [(topic("session_features"), 0, f.session_id.encode(), encode(f)) for f in sessions]
    end = max(f.event_time for f in sessions) + timedelta(minutes=1)
    ticks = [(topic("session_features"), n, CLOCK_KEY, encode(ClockTick(event_id=f"t{n}",
              event_time=end, source="t"))) for n in range(6)]  # fmt: skip
    run.feed(sample[:100] + ticks, now=NOW)
    assert calls == []  # no model in service yet: rules only
    assert not any(a.detector.startswith("sklearn") for a in run.alerts.values())
    holder.swap(Counting())  # type: ignore[arg-type]
    later = [(t, n, k, encode(ClockTick(event_id=f"u{n}", event_time=end + timedelta(minutes=1),
              source="t"))) for t, n, k, _ in ticks]  # fmt: skip
    run.feed(sample[100:] + later, now=NOW)
    anomalies = [a for a in run.alerts.values() if a.detector.startswith("sklearn")]
    assert anomalies and all(a.model_version == "v0001" for a in anomalies)
    assert sum(calls) == 500 and len(calls) == 1  # the feed's station round: one call
    again = [(t, n, k, encode(ClockTick(event_id=f"v{n}", event_time=end + timedelta(minutes=2),
              source="t"))) for t, n, k, _ in ticks]  # fmt: skip
    assert run.feed(sample + again, now=NOW) == []  # seen before: not scored, not alerted
    assert sum(calls) == 500


def test_a_held_session_that_fails_goes_to_the_dead_letters_and_the_rest_go_on() -> None:
    p = _processor()
    sessions = [
        SessionFeatures(event_id=f"e{n}", event_time=NOW, source="t", session_id=f"s{n}",
                        station_id="CP1", features={"register_rollbacks": 1.0})
        for n in range(3)
    ]  # fmt: skip
    real = p._station

    def failing(batch, changed, partition, memory, keyed):  # type: ignore[no-untyped-def]
        if keyed.features.session_id == "s1":
            raise ValueError("boom")
        return real(batch, changed, partition, memory, keyed)

    p._station = failing  # type: ignore[method-assign]
    run = InMemoryDetection(p)
    ticks = [(topic("session_features"), n, CLOCK_KEY, encode(ClockTick(
        event_id=f"t{n}", event_time=NOW + timedelta(minutes=1), source="t"))) for n in range(6)]  # fmt: skip
    run.feed([(topic("session_features"), 0, f.session_id.encode(), encode(f)) for f in sessions]
             + ticks, now=NOW)  # fmt: skip
    assert sorted(a.session_id for a in run.alerts.values()) == ["s0", "s2"]
    [letter] = [decode(o.value or b"", DeadLetter) for o in run.dead_letters]
    assert letter.reason == "boom" and letter.original_key == b"station:CP1"
    assert letter.original_offset < 0 and b'"s1"' in (letter.original_value or b"")


def test_the_stage_records_alerts_scores_and_model_versions_as_metrics(
    recorded: RecordingDetection,
) -> None:
    from prometheus_client import REGISTRY

    from streams.detection import DetectionBatch, DetectionStage
    from topics.catalog import CATALOG

    stage = DetectionStage(
        _processor(), changelog=CATALOG["detection_state"], keyed=CATALOG["detection_keyed"]
    )
    scores = list(recorded.scores.values())[:40]
    alert = next(iter(recorded.alerts.values()))

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("voltguard_detection_online_score_count")
    alerts_before = value("voltguard_fraud_alerts_total", kind=alert.kind, severity=alert.severity)
    stage.record_metrics(DetectionBatch(alerts=[alert], scores=scores))
    assert value("voltguard_detection_online_score_count") == before + 40
    assert value("voltguard_fraud_alerts_total", kind=alert.kind,
                 severity=alert.severity) == alerts_before + 1  # fmt: skip
    version = scores[-1].model_version
    assert value("voltguard_detection_model_info", detector="online", version=version) == 1


def test_a_payment_partition_taken_over_keeps_what_every_ingest_worker_vouched_for() -> None:
    """With two ingest workers, the combined payments clock of an input partition is in the
    changelog: the partition's next owner forwards the clock on the next tick of either."""
    payments = topic("payment_events")

    def tick(minute: int, covers: list[str], n: int) -> tuple[str, int, int, bytes, bytes]:
        record = ClockTick(event_id=f"c{n}", event_time=NOW + timedelta(minutes=minute),
                           source="ingest", covers=covers, idle=[], inputs=4)  # fmt: skip
        return (payments, 0, n, CLOCK_KEY, encode(record))

    def forwarded(batch: object) -> list[int]:
        return sorted({msgspec.json.decode(o.value, type=KeyedClock).at_ms  # type: ignore[attr-defined]
                       for o in batch.outputs if o.key == b"clock:payments/0"})  # type: ignore[attr-defined]  # fmt: skip

    first = _processor()
    a = first.process([tick(30, ["ocpp_frames/0", "ocpp_frames/1"], 0)], now=NOW)
    b = first.process([tick(10, ["ocpp_frames/2", "ocpp_frames/3"], 1)], now=NOW)
    assert forwarded(a) == [] and len(forwarded(b)) == 1  # known once both have ticked
    rows = [(o.key, o.value) for o in a.outputs + b.outputs
            if o.topic == first.changelog_topic and o.partition == 0]  # fmt: skip

    second = _processor()  # the partition's next owner
    second.restore(0, rows)
    later = second.process([tick(20, ["ocpp_frames/2", "ocpp_frames/3"], 2)], now=NOW)
    assert forwarded(later) == [int((NOW + timedelta(minutes=20)).timestamp() * 1000)]
