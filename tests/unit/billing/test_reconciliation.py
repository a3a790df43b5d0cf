"""Every reconciliation finding, firing and not firing, with its exact delta."""

from __future__ import annotations

import pytest

from billing.reconciliation import (
    PRIORITY,
    ConfigError,
    Expected,
    PaymentRecord,
    ReconciliationConfig,
    reconcile,
    verdict_due_ms,
)

CFG = ReconciliationConfig()
DAY = 86_400_000


def pay(kind: str, amount: int, *, pid: str = "p1", cur: str = "EUR", at: int = 0, n: int = 0):
    return PaymentRecord(f"{pid}-{kind}-{n}", pid, kind, amount, cur, at, "card")


def bill(amount: int, cur: str = "EUR") -> Expected:
    return Expected("s1", amount, cur, ("bill-1", "start-1", "end-1"))


def verdict(expected: Expected | None, payments: list[PaymentRecord], wm: int = 0):
    return reconcile(expected, payments, watermark_ms=wm, config=CFG)


def test_exact_capture_is_matched_with_every_id_as_evidence() -> None:
    v = verdict(bill(1234), [pay("authorized", 3000), pay("auth_adjusted", 1234, n=1),
                             pay("captured", 1234)])  # fmt: skip
    assert v is not None
    assert (v.outcome, v.outcomes, v.delta_minor) == ("matched", ["matched"], 0)
    assert (v.expected_minor, v.authorized_minor, v.captured_minor) == (1234, 1234, 1234)
    assert v.evidence_event_ids[:3] == ["bill-1", "start-1", "end-1"]
    assert len(v.evidence_event_ids) == 6 and v.payment_ids == ["p1"]


@pytest.mark.parametrize(
    ("captured", "outcome", "delta"),
    [(1490, "overcharged", 256), (1000, "undercharged", -234), (1234, "matched", 0)],
)
def test_capture_against_the_bill(captured: int, outcome: str, delta: int) -> None:
    v = verdict(bill(1234), [pay("captured", captured)])
    assert v is not None and (v.outcome, v.delta_minor) == (outcome, delta)


def test_a_capture_for_a_free_session_is_an_overcharge() -> None:
    v = verdict(bill(0), [pay("captured", 700)])
    assert v is not None and (v.outcome, v.delta_minor) == ("overcharged", 700)


def test_nothing_captured_for_a_bill_is_a_missing_payment_but_not_for_a_free_one() -> None:
    v = verdict(bill(990), [])
    assert v is not None and (v.outcome, v.delta_minor) == ("missing_payment", -990)
    free = verdict(bill(0), [pay("authorized", 2500), pay("voided", 2500, n=1)])
    assert free is not None and free.outcome == "matched"


def test_duplicate_capture_same_or_new_payment() -> None:
    same = verdict(bill(800), [pay("captured", 800), pay("captured", 800, n=1)])
    new = verdict(bill(800), [pay("captured", 800), pay("captured", 800, pid="p2")])
    for v in (same, new):
        assert v is not None and (v.outcome, v.delta_minor) == ("duplicate_capture", 800)
        assert "overcharged" not in v.outcomes  # explained by the duplicate
    split = verdict(bill(800), [pay("captured", 400), pay("captured", 400, n=1)])
    assert split is not None and split.outcome == "matched"  # two halves are not a duplicate


def test_refunds_up_to_the_capture_are_legitimate_beyond_it_a_finding() -> None:
    partial = verdict(bill(1000), [pay("captured", 1000), pay("refunded", 300, at=DAY)])
    assert partial is not None and (partial.outcome, partial.refunded_minor) == ("matched", 300)
    abuse = verdict(
        bill(1000),
        [
            pay("captured", 1000),
            pay("refunded", 1000, at=DAY),
            pay("refunded", 450, at=2 * DAY, n=1),
        ],
    )
    assert abuse is not None
    assert (abuse.outcome, abuse.delta_minor, abuse.refunded_minor) == (
        "refund_exceeds_capture",
        -450,
        1450,
    )


def test_chargeback_delta_is_the_disputed_amount() -> None:
    v = verdict(bill(1500), [pay("captured", 1500), pay("chargeback_opened", 1500, at=DAY)])
    assert v is not None and (v.outcome, v.delta_minor) == ("chargeback", -1500)


def test_capture_above_the_hold_without_adjustment() -> None:
    short = verdict(bill(2205), [pay("authorized", 771), pay("captured", 2205)])
    assert short is not None
    assert (short.outcome, short.delta_minor, short.authorized_minor) == (
        "capture_exceeds_authorization",
        1434,
        771,
    )
    adjusted = verdict(
        bill(2205), [pay("authorized", 771), pay("auth_adjusted", 2205, n=1), pay("captured", 2205)]
    )
    assert adjusted is not None and adjusted.outcome == "matched"


def test_currency_mismatch_compares_no_amounts() -> None:
    v = verdict(bill(1631, "EUR"), [pay("captured", 1631, cur="USD")])
    assert v is not None and (v.outcome, v.outcomes, v.delta_minor) == (
        "currency_mismatch",
        ["currency_mismatch"],
        -1631,
    )
    failed_elsewhere = verdict(bill(500), [pay("failed", 500, cur="USD"), pay("captured", 500)])
    assert failed_elsewhere is not None and failed_elsewhere.outcome == "matched"


def test_an_uncaptured_hold_expires_on_the_watermark_only() -> None:
    payments = [pay("authorized", 3000, at=0)]
    before = verdict(bill(1200), payments, wm=7 * DAY - 1)
    after = verdict(bill(1200), payments, wm=7 * DAY)
    assert before is not None and before.outcome == "missing_payment"
    assert after is not None and (after.outcome, after.delta_minor) == (
        "authorization_expired",
        -1200,
    )
    released = verdict(bill(0), [pay("authorized", 3000), pay("voided", 3000, n=1)], wm=9 * DAY)
    assert released is not None and released.outcome == "matched"


def test_orphans_only_when_money_was_captured() -> None:
    orphan = verdict(None, [pay("captured", 865), pay("refunded", 65, n=1)])
    assert orphan is not None and (orphan.outcome, orphan.delta_minor, orphan.currency) == (
        "orphan_payment",
        800,
        "EUR",
    )
    assert verdict(None, [pay("failed", 100)]) is None  # card testing: not a money mismatch
    assert verdict(None, [pay("authorized", 100), pay("voided", 100, n=1)]) is None


def test_unrated_sessions_are_reported_not_compared() -> None:
    v = verdict(
        Expected("s1", 0, "XXX", (), unrated="tariff 'T9' is unknown"), [pay("captured", 5)]
    )
    assert v is not None and v.outcome == "unrated" and "T9" in v.detail


def test_several_findings_keep_the_most_serious_first() -> None:
    v = verdict(
        bill(1000),
        [pay("authorized", 500), pay("captured", 1000), pay("chargeback_opened", 1000, at=DAY)],
    )
    assert v is not None
    assert v.outcomes == ["chargeback", "capture_exceeds_authorization"]
    assert v.outcome == "chargeback" and "also: capture_exceeds_authorization" in v.detail
    assert list(PRIORITY).index("chargeback") < list(PRIORITY).index("matched")


def test_verdict_due_times() -> None:
    paid = verdict_due_ms(
        ended_ms=0, has_session=True, first_payment_ms=0, has_payments=True, config=CFG
    )
    unpaid = verdict_due_ms(
        ended_ms=0, has_session=True, first_payment_ms=None, has_payments=False, config=CFG
    )
    open_ = verdict_due_ms(
        ended_ms=None, has_session=True, first_payment_ms=0, has_payments=True, config=CFG
    )
    assert (paid, unpaid, open_) == (1_800_000, 7 * DAY, None)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="bill_grace_s"):
        ReconciliationConfig(bill_grace_s=4000, payment_grace_s=100)
    with pytest.raises(ConfigError, match="orphan_grace_s"):
        ReconciliationConfig(orphan_grace_s=-1)


def test_currency_mismatch_reports_amounts_in_the_bill_currency_only() -> None:
    v = verdict(
        bill(1631, "EUR"), [pay("authorized", 2500, cur="USD"), pay("captured", 1631, cur="USD")]
    )
    assert v is not None and (v.captured_minor, v.authorized_minor) == (0, 0)
    assert "captured 1631 USD" in v.detail
