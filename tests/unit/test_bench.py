"""The pure parts of the benchmarks: percentiles, latency pairing, fits, the summary's shape."""

from __future__ import annotations

import json
import math
import statistics
from datetime import UTC, datetime, timedelta

import pytest

from streams.bench_common import percentile, summarize_ms
from streams.bench_fleet import frames_per_session, session_profile
from streams.bench_latency import Timeline, ceil_minute
from streams.bench_pipeline import latencies, summarize
from streams.bench_recovery import clone, linear_fit, open_session_changelog
from topics.codec import encode
from topics.records import FraudAlert, ReconciliationResult, SessionBill

T0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


# --------------------------------------------------------------------------- percentiles


def test_percentile_matches_the_inclusive_method_of_statistics() -> None:
    values = [7.0, 1.0, 3.0, 9.0, 4.0, 12.0, 5.5, 2.0, 8.0, 10.0, 6.0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for q in (50, 95, 99):
        assert percentile(values, q / 100) == pytest.approx(cuts[q - 1])
    assert percentile(values, 0) == 1.0 and percentile(values, 1) == 12.0


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="quantile"):
        percentile([1.0], 1.5)


def test_summarize_ms_rounds_milliseconds() -> None:
    s = summarize_ms([0.001 * i for i in range(1, 101)])
    assert s["n"] == 100 and s["max_ms"] == 100.0
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.0, abs=0.1)


# --------------------------------------------------------------------------- latency pairs


def test_timeline_takes_the_earliest_production_at_or_after_a_moment() -> None:
    # frame at 10:01 was sent late (after the 10:02 frame): the 10:01 due time is met by
    # whichever frame at or past 10:01 was produced first
    t = Timeline.build([(ms(T0), 1000), (ms(T0) + 60_000, 3000), (ms(T0) + 120_000, 2000)])
    assert t.trigger_ms(ms(T0) + 1) == 2000
    assert t.trigger_ms(ms(T0) + 120_000) == 2000
    assert t.trigger_ms(ms(T0) + 120_001) is None
    assert ceil_minute(ms(T0) + 1) == ms(T0) + 60_000


def _bill(session: str, end: datetime) -> bytes:
    return encode(
        SessionBill(event_id=f"b-{session}", event_time=end, source="bench", session_id=session,
                    station_id="CP1", tariff_id="T1", currency="EUR", energy_wh=1000,
                    charging_s=60, idle_s=0, lines=[], total_excl_vat_minor=100,
                    total_vat_minor=19, total_minor=119)
    )  # fmt: skip


def _result(result_id: str, outcome: str, revision: int, decided: datetime) -> bytes:
    return encode(
        ReconciliationResult(event_id=f"r-{result_id}-{revision}", event_time=decided,
                             source="bench", result_id=result_id, session_id="S1",
                             outcome=outcome, revision=revision, decided_at=decided)
    )  # fmt: skip


def _alert(alert_id: str, session: str | None) -> bytes:
    return encode(
        FraudAlert(event_id=f"a-{alert_id}", event_time=T0, source="bench", alert_id=alert_id,
                   kind="meter_rollback", severity="critical", score=1.0,
                   subject_type="session", subject_id=session or "x", session_id=session,
                   explanation="register went back", detector="rule:meter_rollback")
    )  # fmt: skip


def test_latencies_pair_each_output_with_the_frame_that_made_it_due() -> None:
    # one frame per minute, frame k (event time T0 + k min) produced at epoch 1000 + k s
    timeline = Timeline.build([(ms(T0) + k * 60_000, (1000 + k) * 1000) for k in range(20)])
    end = T0 + timedelta(seconds=30)  # bill due at ceil(10:00:30 + 120 s) = 10:03 -> k=3
    records = [
        ("session_bills", _bill("S1", end), 1003.25),
        ("session_bills", _bill("S1", end), 1009.0),  # a second version: not paired again
        ("reconciliation", _result("R1", "undercharged", 1, T0 + timedelta(minutes=5)), 1005.5),
        ("reconciliation_mismatches", _result("R1", "undercharged", 1, T0 + timedelta(minutes=5)),
         1005.5),
        ("reconciliation", _result("R1", "matched", 2, T0 + timedelta(minutes=8)), 1008.1),
        ("reconciliation_mismatches", _result("R1", "matched", 2, T0 + timedelta(minutes=8)),
         1008.1),
        ("fraud_alerts", _alert("A1", "S1"), 1003.5),
        ("fraud_alerts", _alert("A2", None), 1004.0),  # about no billed session
    ]  # fmt: skip
    pages = [
        (1003.75, "A1", "trigger"),
        (1005.8, "R1", "trigger"),
        (1005.9, "R1", "trigger"),  # a repeat of the same page: first receipt counts
        (1008.4, "R1", "resolve"),  # caused by revision 2 (due 10:08 -> k=8)
    ]
    lat = latencies(records, pages, timeline, bill_grace_s=120)
    assert lat["bills"] == [pytest.approx(0.25)]
    assert sorted(lat["results"]) == [pytest.approx(0.1), pytest.approx(0.5)]
    assert lat["alerts"] == [pytest.approx(0.5)]
    assert sorted(lat["pages"]) == [pytest.approx(0.4), pytest.approx(0.75), pytest.approx(0.8)]
    assert lat["unpaired"] == [0.0, 0.0, 1.0, 0.0]
    warm = latencies(records, pages, timeline, bill_grace_s=120, after_ms=1004_000)
    assert warm["bills"] == [] and sorted(warm["results"]) == [pytest.approx(0.1),
                                                              pytest.approx(0.5)]  # fmt: skip


def test_a_bill_whose_session_ended_late_is_timed_from_its_end_frame() -> None:
    # An offline station: the session ended at 10:00:30 by its own clock, but the frame
    # saying so was produced at epoch 1015 s, long after the 10:03 frame (1003 s).
    timeline = Timeline.build([(ms(T0) + k * 60_000, (1000 + k) * 1000) for k in range(20)])
    end = T0 + timedelta(seconds=30)
    timeline.ends[("CP1", ms(end))] = 1015_000
    records = [("session_bills", _bill("S1", end), 1015.4),
               ("fraud_alerts", _alert("A1", "S1"), 1015.9)]  # fmt: skip
    lat = latencies(records, [(1016.0, "A1", "trigger")], timeline, bill_grace_s=120)
    assert lat["bills"] == [pytest.approx(0.4)]  # not 12.4 s from the 10:03 frame
    assert lat["alerts"] == [pytest.approx(0.9)] and lat["pages"] == [pytest.approx(1.0)]


# --------------------------------------------------------------------------- summary


def _phase(workers: int, mode: str, per_s: int, cpu: float, outputs: dict) -> dict:
    return {
        "workers_per_stage": workers,
        "mode": mode,
        "pipeline_events_per_s": per_s,
        "workers": [{"cpu_share_of_one_core": cpu}] * 4,
        "broker_cpu_share_of_one_core": 0.5,
        "bench_process_cpu_share_of_one_core": 0.02,
        "outputs": outputs,
        "output_digests": {k: f"{v}:digest" for k, v in outputs.items()},
        "achieved_rate_events_per_s": 2001,
        "latency": {k: summarize_ms([0.2, 0.3, 0.9]) for k in ("pages", "alerts", "all_outputs")},
    }


def test_summary_gives_ratios_and_the_reason_when_two_workers_fall_short() -> None:
    phases = [
        {**_phase(1, "flat_out", 99_999, 0.1, {}), "warmup": True},
        _phase(1, "flat_out", 20_000, 0.3, {"session_bills": 10}),
        _phase(2, "flat_out", 12_000, 0.15, {"session_bills": 40}),
        _phase(1, "paced", 2_000, 0.1, {}),
    ]
    s = summarize(phases, {"state_bytes_per_open_session_changelog": 1600}, cores=2)
    assert s["one_worker_events_per_s"] == 20_000  # not the warm-up's
    assert s["one_worker_vs_target_5000"] == 4.0
    assert s["two_vs_one_ratio"] == 0.6 and s["two_workers_within_10pct_of_2x"] is False
    assert s["one_worker_phase_cpu_cores_used"] == pytest.approx(1.72)
    assert "1.72 of 2 cores" in s["reason"]
    assert s["p99_pages_ms"] == pytest.approx(888.0) and s["p99_pages_vs_target_1000ms"] == 0.888
    assert s["outputs_one_vs_two_workers"]["two"] == {"session_bills": 40}
    assert s["outputs_one_vs_two_workers"]["differing"] == ["session_bills"]
    assert s["outputs_identical_one_vs_two_workers"] is False
    assert s["state_bytes_per_open_session_changelog"] == 1600
    json.dumps(s)  # the JSON file takes it as it is


def test_summary_says_when_both_worker_counts_published_the_same() -> None:
    one = _phase(1, "flat_out", 20_000, 0.3, {"session_bills": 10})
    phases = [one, {**one, "workers_per_stage": 2}, _phase(1, "paced", 2_000, 0.1, {})]
    s = summarize(phases, {}, cores=2)
    assert s["outputs_identical_one_vs_two_workers"] is True
    assert "outputs_one_vs_two_workers" not in s and "outputs_note" not in s


# --------------------------------------------------------------------------- recovery, fleet


def test_linear_fit_recovers_fixed_cost_and_slope() -> None:
    fixed, slope = linear_fit([(20_000, 5.0 + 20_000 * 4e-5), (300_000, 5.0 + 300_000 * 4e-5)])
    assert fixed == pytest.approx(5.0) and slope == pytest.approx(4e-5)
    with pytest.raises(ValueError):
        linear_fit([(1, 1.0), (1, 2.0)])


def test_cloned_changelog_rows_restore_as_distinct_open_sessions() -> None:
    from billing.engine import BillingEngine

    rows = open_session_changelog(3, 5)
    assert len(rows) == 3
    clones = [clone(rows[i % 3], i % 3, i) for i in range(10)]
    engine = BillingEngine()
    assert engine.restore(clones) == 10
    assert engine.open_sessions() == 10
    assert {len(v) for _, v in clones} == {len(v) for _, v in rows}


def test_session_profile_counts_station_days_and_durations() -> None:
    rows = [
        {"stationID": "A", "connectionTime": "Mon, 25 Mar 2019 16:00:00 GMT",
         "disconnectTime": "Mon, 25 Mar 2019 18:00:00 GMT"},
        {"stationID": "B", "connectionTime": "Tue, 26 Mar 2019 08:00:00 GMT",
         "disconnectTime": "Tue, 26 Mar 2019 09:00:00 GMT"},
        {"stationID": "B", "connectionTime": "bad", "disconnectTime": None},
    ]  # fmt: skip
    p = session_profile(rows)
    assert (p["sessions"], p["stations"], p["span_days"]) == (2, 2, 2)
    assert p["sessions_per_station_active_day"] == 1.0
    assert p["sessions_per_station_calendar_day"] == 0.5
    assert p["duration_min_mean"] == 90.0
    assert frames_per_session(1800, 60) == 64.0
