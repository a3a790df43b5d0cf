"""The router commits a trigger and the resolve of the same notice in separate transactions,
so that a batch redone after a crash cannot open a second PagerDuty incident."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from streams.router import RouterStage
from topics import alerts
from topics.catalog import CATALOG, topic
from topics.codec import encode
from topics.records import FraudAlert, ReconciliationResult

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class Msg:
    """What the split reads of a confluent_kafka Message."""

    _topic: str
    _value: bytes | None

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes | None:
        return self._value


def mismatch(result_id: str, outcome: str, revision: int) -> Msg:
    record = ReconciliationResult(
        event_id=f"{result_id}-{revision}", event_time=T0, source="t", result_id=result_id,
        session_id="S", outcome=outcome, revision=revision,
    )  # fmt: skip
    return Msg(topic("reconciliation_mismatches"), encode(record))


def alert(alert_id: str) -> Msg:
    record = FraudAlert(
        event_id=alert_id, event_time=T0, source="t", alert_id=alert_id, kind="meter_rollback",
        severity="critical", score=1.0, subject_type="session", subject_id="S",
        explanation="x", detector="rule:meter_rollback",
    )  # fmt: skip
    return Msg(topic("fraud_alerts"), encode(record))


def stage() -> RouterStage:
    config = alerts.parse_config('{"destinations": {}, "routes": []}')
    return RouterStage(config, None, changelog=CATALOG["alert_deliveries"])  # type: ignore[arg-type]


def test_a_trigger_and_its_resolve_go_to_separate_transactions() -> None:
    batch = [mismatch("R1", "undercharged", 0), alert("A1"), mismatch("R2", "overcharged", 0),
             mismatch("R1", "matched", 1), mismatch("R2", "matched", 1), alert("A2")]  # fmt: skip
    parts = stage().split(batch)  # type: ignore[arg-type]
    assert [len(p) for p in parts] == [3, 3]
    assert [m for p in parts for m in p] == batch  # consecutive, nothing lost or reordered


def test_a_trigger_after_a_resolve_of_the_same_notice_is_cut_off_too() -> None:
    batch = [mismatch("R1", "undercharged", 0), mismatch("R1", "matched", 1),
             mismatch("R1", "overcharged", 2)]  # fmt: skip
    assert [len(p) for p in stage().split(batch)] == [1, 1, 1]  # type: ignore[arg-type]


def test_a_batch_without_a_resolve_of_its_own_trigger_stays_whole() -> None:
    batch = [mismatch("R1", "matched", 1), mismatch("R2", "undercharged", 0), alert("A1"),
             Msg(topic("fraud_alerts"), b"not json"), Msg(topic("fraud_alerts"), None)]  # fmt: skip
    assert stage().split(batch) == [batch]  # type: ignore[arg-type]
