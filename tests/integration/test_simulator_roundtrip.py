"""Simulator -> real Kafka -> ingest worker: every simulated session comes out whole."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.commands.simulate import produce_to_kafka
from streams.ingest import IngestLoop
from streams.settings import Settings
from tests.integration.helpers import read_all
from topics.codec import decode
from topics.records import DeadLetter, PaymentEvent, SessionEvent
from topics.simulation.config import SimulationConfig
from topics.simulation.engine import Simulation

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_simulated_traffic_round_trips_through_ingest(
    kafka_bootstrap: str, kafka_admin: AdminClient
) -> None:
    create_topics(kafka_admin)
    # No faults: an honest fleet must come through whole, without a single dead letter.
    config = SimulationConfig(seed=4242, sessions=120, stations=15, fault_scale=0.0)
    secret = f"roundtrip-{uuid.uuid4().hex}"
    summary = produce_to_kafka(
        config, hash_secret=secret.encode(), bootstrap_servers=kafka_bootstrap
    )
    assert summary.sessions == 120 and summary.frames > 0 and summary.payments > 0

    settings = Settings.from_env(
        {}, bootstrap_servers=kafka_bootstrap, hash_secret=secret,
        ingest_group_id=f"roundtrip-{uuid.uuid4().hex[:8]}", instance_id="roundtrip",
    )  # fmt: skip
    counts: Counter[tuple[str, str]] = Counter()
    loop = IngestLoop(settings, on_batch=lambda r: counts.update(r.counts))
    thread = threading.Thread(target=loop.run, kwargs={"max_idle_s": 5.0})
    thread.start()
    thread.join(240)
    assert not thread.is_alive()

    # The new group read every input topic from the start, other tests' input included:
    # compare only what this run produced (its payment ids, regenerated from the same seed).
    sim = Simulation(config, hash_secret=secret.encode())
    payment_event_ids = {
        decode(value, PaymentEvent).event_id
        for short, _key, value in sim.records()
        if short == "psp_payment_events"
    }
    payments = [
        decode(v, PaymentEvent)
        for v in read_all(kafka_bootstrap, "payment_events", expect=len(payment_event_ids))
    ]
    ours = [p for p in payments if p.event_id in payment_event_ids]
    assert sorted(p.event_id for p in ours) == sorted(payment_event_ids), "each payment event once"
    assert all(p.session_id for p in ours if p.station_id and p.transaction_id)
    paid_sessions = {p.session_id for p in ours}

    events = [decode(v, SessionEvent) for v in read_all(kafka_bootstrap, "session_events")]
    by_session = Counter(
        (e.session_id, e.kind)
        for e in events
        if e.session_id in paid_sessions and e.kind != "updated"
    )
    started = {sid for sid, kind in by_session if kind == "started"}
    ended = {sid for sid, kind in by_session if kind == "ended"}
    assert paid_sessions == started == ended, "every paid simulated session starts and ends"
    assert set(by_session.values()) == {1}, "no session starts or ends twice"

    letters = [decode(v, DeadLetter) for v in read_all(kafka_bootstrap, "dead_letters")]
    from_sim = [dl for dl in letters if dl.original_value and b'"VG-' in dl.original_value]
    assert from_sim == [], [dl.reason for dl in from_sim[:3]]
    assert counts[("ocpp_frames", "accepted")] > 0
