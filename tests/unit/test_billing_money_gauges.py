"""The leakage and unreconciled gauges survive a restart: rebuilt from the changelog."""

from __future__ import annotations

from billing.engine import BillingEngine
from streams.billing import BillingProcessor, BillingStage
from tests.unit.billing.test_engine import CFG, EVENTS, STATION, TARIFF, feed, ms, payment
from topics.catalog import CATALOG
from topics.records import PaymentEvent


def stage() -> BillingStage:
    processor = BillingProcessor(config=CFG, tariffs={"T1": TARIFF}, stations={"CP1": STATION})
    return BillingStage(processor, changelog=CATALOG["billing_state"])


def test_restore_rebuilds_the_money_gauges_and_a_revoke_removes_them() -> None:
    engine = BillingEngine(config=CFG, tariffs={"T1": TARIFF}, stations={"CP1": STATION})
    unpaid = [ev for ev in EVENTS if not isinstance(ev, PaymentEvent)]

    feed(engine, [*unpaid, payment("captured", 300, 40.5)])  # 2.00 EUR short of the bill
    [result] = [e.record for e in engine.advance(ms(200)) if e.topic == "reconciliation"]
    assert (result.outcome, result.delta_minor) == ("undercharged", -200)
    records = [(k.encode(), v) for k, v in engine.take_changes()]

    live, restarted = stage(), stage()
    live.money.publish(0, result)
    restarted.restore(0, records)
    assert restarted.money.totals == live.money.totals == {"EUR": (200, 200)}
    restarted.forget(0)
    assert restarted.money.totals == {"EUR": (0, 0)}
