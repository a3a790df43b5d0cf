"""The detection stage's pure processor: same alerts as the in-memory Detector, state that
survives a restore, bad input to the dead-letter topic, nothing raised twice."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from models.detect import Detector
from streams.detection import DetectionProcessor, InMemoryDetection, KeyedFeatures
from streams.replay import Replay, partition_for
from topics.catalog import topic
from topics.codec import decode, encode
from topics.records import DeadLetter, FraudAlert, PaymentEvent, SessionFeatures
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation

SECRET = b"detection-stage-test"
NOW = datetime(2024, 1, 1, tzinfo=UTC)


class RecordingDetector(Detector):
    """The in-memory Detector, remembering what it was given in which order."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[SessionFeatures | PaymentEvent] = []

    def on_features(self, f: SessionFeatures) -> list[FraudAlert]:
        self.inputs.append(f)
        return super().on_features(f)

    def on_payment(self, p: PaymentEvent) -> list[FraudAlert]:
        self.inputs.append(p)
        return super().on_payment(p)


@pytest.fixture(scope="module")
def recorded() -> RecordingDetector:
    config = SimulationConfig(seed=515, sessions=700, stations=30, fault_scale=6.0)
    records = list(Simulation(config, hash_secret=SECRET).records())
    detector = RecordingDetector()
    Replay(hash_secret=SECRET, detector=detector).run(records)
    return detector


def _feed(run: InMemoryDetection, inputs: list[SessionFeatures | PaymentEvent], size: int) -> None:
    for start in range(0, len(inputs), size):
        chunk = inputs[start : start + size]
        run.feed(
            features=[x for x in chunk if isinstance(x, SessionFeatures)],
            payments=[x for x in chunk if isinstance(x, PaymentEvent)],
            now=NOW,
        )


_pack = msgspec.msgpack.Encoder().encode


def _processor() -> DetectionProcessor:
    return DetectionProcessor(partition_for=partition_for)


def test_same_alerts_as_the_in_memory_detector(recorded: RecordingDetector) -> None:
    run = InMemoryDetection(_processor())
    _feed(run, recorded.inputs, 1)
    expected = {a.alert_id: a for a in recorded.alerts.values()}
    assert len(expected) >= 20, "the seed should raise a fair number of rule alerts"
    assert set(run.alerts) == set(expected)
    assert {a.kind for a in run.alerts.values()} >= {
        "meter_rollback",
        "card_testing",
        "cloned_token_overlap",
    }
    for alert_id, alert in run.alerts.items():
        assert encode(alert) == encode(expected[alert_id])
    assert run.dead_letters == []


def test_batching_does_not_change_the_alerts(recorded: RecordingDetector) -> None:
    one = InMemoryDetection(_processor())
    _feed(one, recorded.inputs, 1)
    big = InMemoryDetection(_processor())
    _feed(big, recorded.inputs, 250)
    assert set(big.alerts) == set(one.alerts)


def test_a_restored_processor_goes_on_where_the_last_one_stopped(
    recorded: RecordingDetector,
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


def test_republished_features_raise_nothing_twice(recorded: RecordingDetector) -> None:
    run = InMemoryDetection(_processor())
    _feed(run, recorded.inputs, 100)
    again = [x for x in recorded.inputs if isinstance(x, SessionFeatures)]
    assert run.feed(features=again, now=NOW) == []


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


def test_features_are_rekeyed_by_token_then_station() -> None:
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
    first = p.process([(topic("session_features"), 0, 0, b"s1", encode(f))], now=NOW)
    [out] = first.outputs
    assert out.key == b"token:" + ("ab" * 16).encode()
    assert out.partition == partition_for(out.key, 6)
    second = p.process([(out.topic, out.partition, 0, out.key, out.value)], now=NOW)
    rekeyed = [o for o in second.outputs if o.topic == p.keyed_topic]
    assert [o.key for o in rekeyed] == [b"station:CP9"]
    keyed = msgspec.json.decode(rekeyed[0].value or b"", type=KeyedFeatures)
    assert keyed.token_features["token_new"] == 1.0
    third = p.process([(p.keyed_topic, 1, 0, b"station:CP9", rekeyed[0].value)], now=NOW)
    assert [a.kind for a in third.alerts] == ["meter_rollback"]
    states = [o for o in third.outputs if o.topic == p.changelog_topic]
    assert [(o.key, o.partition) for o in states] == [(b"station:CP9", 1)]
