"""The router never sends a reconciliation result older than the opposite action it already
delivered for the same result id: input read again (whatever the cause) cannot open a second
PagerDuty incident or close the open one.

The fault test saw an incident opened twice, twice, with no cause found; a stress harness
that rewound the router's input while the router kept its state produced that symptom (39
keys in one run). These tests replay such sequences on :class:`RouterStage` with a sender
that records what it would send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from streams.router import Delivery, RouterStage
from topics import alerts
from topics.catalog import CATALOG, topic
from topics.codec import encode
from topics.records import FraudAlert, ReconciliationResult

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CONFIG = """{"destinations": {"pager": {"type": "pagerduty", "routing_key": "k"}},
             "routes": [{"to": "pager"}]}"""


@dataclass
class Msg:
    """The parts of a confluent_kafka Message the router reads."""

    _value: bytes
    _offset: int
    _topic: str = topic("reconciliation_mismatches")

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"S"

    def value(self) -> bytes:
        return self._value


@dataclass
class Recorder:
    """Stands in for the HTTP sender: every delivery succeeds and is remembered."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    def send_all(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            d.status = "delivered"
            self.sent.append((d.notice.key, d.action))


def result(offset: int, outcome: str, revision: int, result_id: str = "R1") -> Msg:
    record = ReconciliationResult(
        event_id=f"{result_id}-{revision}", event_time=T0, source="t", result_id=result_id,
        session_id="S", outcome=outcome, revision=revision,
    )  # fmt: skip
    return Msg(encode(record), offset)


def router() -> tuple[RouterStage, Recorder]:
    recorder = Recorder()
    stage = RouterStage(
        alerts.parse_config(CONFIG), recorder,  # type: ignore[arg-type]
        changelog=CATALOG["alert_deliveries"],
    )  # fmt: skip
    return stage, recorder


def run(stage: RouterStage, messages: list[Msg]) -> list[tuple[bytes, bytes | None]]:
    """Each message as its own batch (the split makes a trigger and its resolve two); the
    changelog rows written."""
    changelog: list[tuple[bytes, bytes | None]] = []
    for m in messages:
        out = stage.process([m], T0)  # type: ignore[list-item]
        changelog += [(o.key, o.value) for o in out.outputs if o.topic == stage.changelog_topic]
    return changelog


STREAM = [
    result(0, "undercharged", 0),
    result(1, "undercharged", 1),  # still open: the same incident
    result(2, "matched", 2),
    result(3, "overcharged", 3),  # mismatches again: a new incident, by design
    result(4, "matched", 4),
]


def test_the_stream_pages_as_designed() -> None:
    stage, recorder = router()
    run(stage, STREAM)
    assert recorder.sent == [("R1", "trigger"), ("R1", "resolve"), ("R1", "trigger"),
                             ("R1", "resolve")]  # fmt: skip


def test_input_read_again_after_its_resolve_sends_nothing() -> None:
    stage, recorder = router()
    run(stage, STREAM[:3])  # trigger, resolve
    run(stage, STREAM[:3])  # read again from offset 0: the trigger's row is gone, not its age
    assert recorder.sent == [("R1", "trigger"), ("R1", "resolve")]
    assert stage.process([STREAM[0]], T0).counts["stale"] == 1  # type: ignore[list-item]


def test_an_old_resolve_read_again_does_not_close_the_newer_incident() -> None:
    stage, recorder = router()
    run(stage, STREAM[:4])  # trigger, resolve, trigger again (revision 3, open)
    run(stage, STREAM[2:4])  # matched (revision 2) read again, then revision 3
    assert recorder.sent == [("R1", "trigger"), ("R1", "resolve"), ("R1", "trigger")]


def test_a_restored_router_knows_the_revisions() -> None:
    first, _ = router()
    changelog = run(first, STREAM[:3])
    second, recorder = router()
    second.restore(0, changelog)
    run(second, STREAM)  # everything read again by the partition's next owner
    assert recorder.sent == [("R1", "trigger"), ("R1", "resolve")]  # revisions 3 and 4 only


def test_fraud_alerts_have_no_revision_and_page_once() -> None:
    stage, recorder = router()
    record = FraudAlert(
        event_id="A1", event_time=T0, source="t", alert_id="A1", kind="meter_rollback",
        severity="critical", score=1.0, subject_type="session", subject_id="S",
        explanation="x", detector="rule:meter_rollback",
    )  # fmt: skip
    alert = Msg(encode(record), 0, topic("fraud_alerts"))
    run(stage, [alert, alert])
    assert recorder.sent == [("A1", "trigger")]
