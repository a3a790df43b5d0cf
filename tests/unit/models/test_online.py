"""The online scorer: score-then-learn, republished sessions, checkpoints, partitions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from models.online import OnlineConfig, OnlineScorer
from topics.records import SessionFeatures

T0 = datetime(2024, 5, 6, tzinfo=UTC)


def _sessions(n: int, *, stations: int = 12, seed: int = 3, inflating: str = "CP3"):
    rng = random.Random(seed)
    for i in range(n):
        station = f"CP{rng.randrange(stations)}"
        hour = rng.uniform(6, 23)
        ratio = 1.0 + rng.gauss(0, 0.003)
        if station == inflating and i > n // 2 and rng.random() < 0.3:
            ratio *= 1.15
        f = SessionFeatures(
            event_id=f"e{i}",
            event_time=T0 + timedelta(minutes=7 * i),
            source="test",
            session_id=f"s{i}",
            station_id=station,
            features={
                "energy_over_power_integral": ratio,
                "hour_of_day": hour,
                "hours_from_0300": abs((hour - 3 + 12) % 24 - 12),
                "energy_kwh": rng.uniform(5, 60),
            },
            token_hash=f"{rng.randrange(40):032x}",
        )
        yield f, {"token_night_share": 0.0, "token_night_sessions": 0.0}


def _config() -> OnlineConfig:
    return OnlineConfig(warm_up=60, window_size=32)


def test_an_inflating_meter_is_alerted_and_explained() -> None:
    scorer = OnlineScorer(_config())
    alerts = []
    for f, t in _sessions(600):
        alerts += scorer.observe(f, t)[1]
    meter = [a for a in alerts if a.detector == "station-baseline"]
    assert meter and {a.station_id for a in meter} == {"CP3"}
    a = meter[0]
    assert a.kind == "anomaly" and a.subject_type == "session" and a.model_version
    assert "CP3's meter is 1.1" in a.explanation and "fleet 1.00" in a.explanation
    top = a.evidence["top_features"][0]
    assert top["feature"] == "energy_over_power_integral" and top["fleet_median"] == pytest.approx(
        1.0, abs=0.01
    )
    assert a.evidence["threshold"] >= 0.55 and a.evidence["quantile"] == 0.998


def test_a_checkpoint_restores_the_same_scorer_mid_stream() -> None:
    stream = list(_sessions(400))
    scorer = OnlineScorer(_config())
    for f, t in stream[:250]:
        scorer.observe(f, t)
    blob = scorer.to_bytes()
    restored = OnlineScorer.from_bytes(blob)
    assert restored.to_bytes() == blob
    for f, t in stream[250:]:
        assert restored.observe(f, t) == scorer.observe(f, t)


def test_a_republished_session_is_scored_again_but_not_learnt_twice() -> None:
    stream = list(_sessions(120))
    scorer = OnlineScorer(_config())
    for f, t in stream:
        scorer.observe(f, t)
    before = scorer.to_bytes()
    f, t = stream[-1]
    score = scorer.observe(f, t)[0]
    assert scorer.sessions_seen == 120
    assert score == scorer.observe(f, t)[0]
    assert scorer.to_bytes() == before


def test_the_checkpoint_stays_small_with_many_stations() -> None:
    scorer = OnlineScorer()
    for f, t in _sessions(3000, stations=200):
        scorer.observe(f, t)
    assert len(scorer.stations) == 200
    assert len(scorer.to_bytes()) < 200_000


def test_from_bytes_refuses_other_bytes() -> None:
    import pickle

    with pytest.raises(ValueError, match="not an OnlineScorer checkpoint"):
        OnlineScorer.from_bytes(pickle.dumps((99, "x")))


def test_the_detection_stage_keeps_one_scorer_per_station_partition() -> None:
    """Each keyed partition's scorer sees the stations whose ``station:<id>`` key falls in
    it, and only those; the stage's changelog holds it whole."""
    from streams.detection import DetectionProcessor, InMemoryDetection
    from streams.replay import partition_for, station_partition
    from topics.catalog import CLOCK_KEY, topic
    from topics.codec import encode
    from topics.records import ClockTick

    processor = DetectionProcessor(partition_for=partition_for)
    run = InMemoryDetection(processor)
    sessions = [f for f, _ in _sessions(300, stations=30)]
    end = max(f.event_time for f in sessions)
    ticks = [(topic("session_features"), n, CLOCK_KEY,
              encode(ClockTick(event_id=f"t{n}", event_time=end, source="t")))
             for n in range(6)]  # fmt: skip
    run.feed([(topic("session_features"), 0, f.session_id.encode(), encode(f)) for f in sessions]
             + ticks, now=T0)  # fmt: skip
    scorers = {p: e[b"online"] for p, e in processor.state.items() if b"online" in e}
    assert len(scorers) >= 4
    for partition, scorer in scorers.items():
        assert scorer.stations, partition
        assert {station_partition(s) for s in scorer.stations} == {partition}
    assert sum(s.sessions_seen for s in scorers.values()) == 300 == len(run.scores)
    off = DetectionProcessor(partition_for=partition_for, online=None)
    InMemoryDetection(off).feed(
        [(topic("session_features"), 0, f.session_id.encode(), encode(f)) for f in sessions]
        + ticks,
        now=T0,
    )
    assert not any(b"online" in e for e in off.state.values())


def test_token_night_features_count_the_deep_night_sessions() -> None:
    from models.rules import RuleConfig, TokenHistory

    history = TokenHistory(token_hash="t" * 32)
    out = []
    for i, hour in enumerate((2.5, 14.0, 3.75, 0.5)):
        start = T0 + timedelta(days=i, hours=hour)
        f = SessionFeatures(
            event_id=f"n{i}", event_time=start + timedelta(minutes=40), source="test",
            session_id=f"n{i}", station_id="CP1", started_at=start,
            features={"hour_of_day": hour},
        )  # fmt: skip
        out.append(history.observe(f, RuleConfig())[1])
    assert [o["token_night_sessions"] for o in out] == [1.0, 1.0, 2.0, 2.0]
    assert [round(o["token_night_share"], 3) for o in out] == [1.0, 0.5, 0.667, 0.5]
