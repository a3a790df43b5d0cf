"""Every rule fires on its case and stays quiet on the honest neighbour of that case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models.rules import (
    CardHistory,
    RuleConfig,
    TerminalWindow,
    TokenHistory,
    km_between,
    session_alerts,
)
from topics.records import PaymentEvent, SessionFeatures

T0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
CFG = RuleConfig()
CLEAN = {
    "energy_kwh": 20.0, "duration_min": 60.0, "connector_max_kw": 22.0,
    "energy_over_capability": 0.9, "register_rollbacks": 0.0, "register_resets": 0.0,
    "meter_stop_below_start": 0.0, "seq_gaps": 0.0, "seq_repeats": 0.0,
    "captured_minor": 800.0, "price_minor": 800.0, "offline": 0.0, "offline_start": 0.0,
}  # fmt: skip


def features(sid: str = "s1", station: str = "CP1", start_min: int = 0, minutes: int = 60,
             lat: float = 52.52, lon: float = 13.40, **overrides: float) -> SessionFeatures:  # fmt: skip
    return SessionFeatures(
        event_id=f"f-{sid}",
        event_time=T0 + timedelta(minutes=start_min + minutes),
        source="test",
        session_id=sid,
        station_id=station,
        features={**CLEAN, **overrides},
        token_hash="ab" * 16,
        started_at=T0 + timedelta(minutes=start_min),
        lat=lat,
        lon=lon,
        evidence_event_ids=[f"{sid}-start", f"{sid}-end"],
        seq_gaps=[3, 4] if overrides.get("seq_gaps") else [],
    )


def kinds(f: SessionFeatures) -> list[str]:
    return [a.kind for a in session_alerts(f, CFG)]


def test_clean_session_raises_nothing() -> None:
    assert kinds(features()) == []


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({"register_rollbacks": 1.0, "rollback_wh": 300.0}, "meter_rollback"),
        ({"register_resets": 1.0, "meter_stop_below_start": 1.0}, "meter_reset"),
        ({"meter_stop_below_start": 1.0}, "meter_stop_below_start"),
        ({"energy_over_capability": 1.5}, "energy_above_capability"),
        ({"seq_gaps": 2.0}, "seqno_gap"),
        ({"seq_repeats": 4.0}, "offline_replay"),
        ({"energy_kwh": 0.0, "price_minor": 0.0, "captured_minor": 900.0}, "capture_zero_energy"),
    ],
)
def test_session_rule_fires_with_evidence(overrides: dict[str, float], kind: str) -> None:
    [alert] = session_alerts(features(**overrides), CFG)
    assert alert.kind == kind and alert.subject_id == "s1" and alert.explanation
    assert alert.evidence_event_ids == ["s1-start", "s1-end"]
    assert alert.alert_id == session_alerts(features(**overrides), CFG)[0].alert_id


@pytest.mark.parametrize(
    "overrides",
    [
        {"energy_over_capability": CFG.capability_tolerance},  # at the tolerance: not above
        {"energy_kwh": 0.0, "price_minor": 250.0, "captured_minor": 250.0},  # a flat fee
        {"energy_kwh": 0.0, "price_minor": 0.0, "captured_minor": 0.0},  # free and unpaid
    ],
)
def test_session_rule_stays_quiet_on_honest_neighbours(overrides: dict[str, float]) -> None:
    assert kinds(features(**overrides)) == []


def test_overlapping_sessions_of_one_token_at_two_stations_whatever_the_order() -> None:
    first = features("s1", "CP1", 0, 120)
    clone = features("s2", "CP9", 30, 40, lat=52.60, lon=13.50)
    for order in ([first, clone], [clone, first]):
        history = TokenHistory(token_hash="ab" * 16)
        alerts = [a for f in order for a in history.observe(f, CFG)[0]]
        assert [a.kind for a in alerts] == ["cloned_token_overlap"]
        assert alerts[0].evidence["sessions"] == ["s1", "s2"]
    ids = set()
    for order in ([first, clone], [clone, first]):
        history = TokenHistory(token_hash="ab" * 16)
        ids |= {a.alert_id for f in order for a in history.observe(f, CFG)[0]}
    assert len(ids) == 1  # the same alert id whichever session came first


def test_same_station_back_to_back_is_not_a_clone() -> None:
    history = TokenHistory(token_hash="ab" * 16)
    history.observe(features("s1", "CP1", 0, 60), CFG)
    alerts, token = history.observe(features("s2", "CP1", 61, 30), CFG)
    assert alerts == [] and token["token_sessions_before"] == 1.0 and token["token_new"] == 0.0


def test_impossible_travel_and_its_honest_neighbour() -> None:
    berlin, munich = (52.52, 13.405), (48.137, 11.575)
    assert 500 < km_between(*berlin, *munich) < 510
    history = TokenHistory(token_hash="ab" * 16)
    history.observe(features("s1", "CP1", 0, 60, *berlin), CFG)
    alerts, token = history.observe(features("s2", "CP2", 120, 30, *munich), CFG)  # 1 h later
    assert [a.kind for a in alerts] == ["cloned_token_impossible_travel"]
    assert alerts[0].evidence["kmh"] > CFG.travel_kmh and token["token_kmh_from_prev"] > 400
    history = TokenHistory(token_hash="ab" * 16)
    history.observe(features("s1", "CP1", 0, 60, *berlin), CFG)
    alerts, _ = history.observe(features("s2", "CP2", 60 + 6 * 60, 30, *munich), CFG)  # 6 h
    assert alerts == []


def test_offline_start_with_a_token_never_seen() -> None:
    history = TokenHistory(token_hash="cd" * 16)
    alerts, _ = history.observe(features(offline=1.0, offline_start=1.0), CFG)
    assert [a.kind for a in alerts] == ["offline_unknown_token"]
    known = TokenHistory(token_hash="cd" * 16)
    known.observe(features("s0", start_min=-600), CFG)
    alerts, _ = known.observe(features(offline=1.0, offline_start=1.0), CFG)
    assert alerts == []


def attempt(
    n: int, second: int, kind: str, amount: int = 100, terminal: str = "T1"
) -> PaymentEvent:
    return PaymentEvent(
        event_id=f"a{n}", event_time=T0 + timedelta(seconds=second), source="adyen",
        payment_id=f"p{n}", psp="adyen", psp_reference=f"r{n}", kind=kind,  # type: ignore[arg-type]
        amount_minor=amount, currency="EUR", method="card", terminal_id=terminal,
    )  # fmt: skip


def _ms(second: int) -> int:
    return int((T0 + timedelta(seconds=second)).timestamp() * 1000)


def test_card_testing_burst_alerts_once() -> None:
    window = TerminalWindow(terminal_id="T1")
    alerts = []
    for n in range(20):
        alerts += window.observe(attempt(n, n * 20, "failed" if n % 3 else "authorized"), CFG)
        alerts += window.advance(_ms(n * 20 - 60), CFG)
    alerts += window.advance(_ms(3600), CFG)
    assert [a.kind for a in alerts] == ["card_testing"]
    assert alerts[0].subject_id == "T1" and alerts[0].evidence["attempts"] == 8
    assert alerts[0].evidence_event_ids == [f"a{n}" for n in range(8)]


def test_card_testing_does_not_depend_on_arrival_order() -> None:
    """Attempts come from several partitions: shuffled, they give the same alert, and
    nothing is decided before the watermark passes the burst."""
    kinds = ["failed" if n % 3 else "authorized" for n in range(20)]
    in_order = TerminalWindow(terminal_id="T1")
    shuffled = TerminalWindow(terminal_id="T1")
    for n in range(20):
        in_order.observe(attempt(n, n * 20, kinds[n]), CFG)
    for n in [7, 3, 19, 0, 12, 5, 1, 18, 9, 2, 15, 4, 11, 6, 17, 8, 13, 10, 16, 14]:
        shuffled.observe(attempt(n, n * 20, kinds[n]), CFG)
    assert shuffled.advance(_ms(7 * 20), CFG) == []  # the 8th attempt is not below it yet
    a = in_order.advance(_ms(3600), CFG)
    b = shuffled.advance(_ms(3600), CFG)
    assert [x.alert_id for x in a] == [x.alert_id for x in b] and len(a) == 1
    assert shuffled.attempts == []


def test_honest_terminal_traffic_is_not_card_testing() -> None:
    window = TerminalWindow(terminal_id="T1")
    alerts = []
    for n in range(20):  # a busy terminal: normal holds, a few declines, spread out
        kind = "failed" if n % 5 == 0 else "authorized"
        alerts += window.observe(attempt(n, n * 20, kind, amount=3000), CFG)
    for n in range(20, 30):  # small amounts, but mostly accepted
        alerts += window.observe(attempt(n, 600 + n * 10, "authorized", amount=100), CFG)
    alerts += window.advance(_ms(7200), CFG)
    assert alerts == []


def money(n: int, minute: int, kind: str, amount: int, payment: str = "p1") -> PaymentEvent:
    return PaymentEvent(
        event_id=f"m{n}", event_time=T0 + timedelta(minutes=minute), source="stripe",
        payment_id=payment, psp="stripe", psp_reference=f"r{n}", kind=kind,  # type: ignore[arg-type]
        amount_minor=amount, currency="EUR", method="card", session_id="s1",
        card_fingerprint_hash="cd" * 16,
    )  # fmt: skip


def test_refunds_above_the_capture_are_refund_abuse_once_the_clock_passes() -> None:
    card = CardHistory(card_hash="cd" * 16)
    for event in (money(1, 0, "captured", 2000), money(2, 60, "refunded", 1500),
                  money(3, 90, "refunded", 900)):  # fmt: skip
        assert card.observe(event, CFG) == []
    assert card.pending
    assert card.advance(_ms(89 * 60), CFG) == []  # the second refund is not below it yet
    [alert] = card.advance(_ms(91 * 60), CFG)
    assert (alert.kind, alert.subject_type, alert.session_id) == ("refund_abuse", "card", "s1")
    assert alert.evidence["refunded_minor"] == 2400 and alert.evidence["captured_minor"] == 2000
    assert "+400" in alert.explanation and not card.pending
    assert card.advance(_ms(200 * 60), CFG) == []  # once


def test_partial_refunds_and_a_capture_reported_after_its_refund_are_not_abuse() -> None:
    card = CardHistory(card_hash="cd" * 16)
    card.observe(money(1, 0, "captured", 2000), CFG)
    card.observe(money(2, 30, "refunded", 500), CFG)  # an honest partial refund
    card.observe(money(3, 10, "refunded", 1200, payment="p2"), CFG)  # PSP: refund first ...
    card.observe(money(4, 9, "captured", 1200, payment="p2"), CFG)  # ... capture arrives late
    assert card.advance(_ms(600 * 60), CFG) == []
