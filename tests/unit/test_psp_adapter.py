"""Stripe, Adyen and generic payloads mapped to PaymentEvent: every kind, hashing, bad fields."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.fixtures.psp_payloads import (
    STATION,
    TRANSACTION,
    adyen_item,
    stripe_charge,
    stripe_dispute,
    stripe_event,
    stripe_payment_intent,
)
from topics.adapters.psp import (
    map_adyen_item,
    map_generic,
    map_stripe_event,
    payment_event_id,
)
from topics.exceptions import AdapterError, UnsupportedPspEvent
from topics.identity import hash_identifier, session_id_for

SECRET = b"unit-hash-secret"
SESSION = session_id_for(STATION, TRANSACTION)


def stripe(etype: str, obj: dict, **kw: str):
    return map_stripe_event(stripe_event(etype, obj, **kw), hash_secret=SECRET)


def test_stripe_authorized() -> None:
    p = stripe("payment_intent.amount_capturable_updated", stripe_payment_intent())
    assert (p.kind, p.amount_minor, p.currency, p.method) == ("authorized", 5000, "EUR", "card")
    assert p.payment_id == "pi_3OpVZb2eZvKYlo2C0uL1mB7x"
    assert p.psp_reference == "ch_3OpVZb2eZvKYlo2C0a1b2c3d"
    assert (p.session_id, p.station_id, p.transaction_id) == (SESSION, STATION, TRANSACTION)
    assert p.psp == p.source == "stripe"
    assert p.event_time == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert p.event_id == payment_event_id("stripe", "evt_1OpVZc2eZvKYlo2CkQ")


def test_stripe_captured_two_events_same_capture_same_event_id() -> None:
    pi = stripe_payment_intent(amount_received=1834, amount_capturable=0, status="succeeded")
    a = stripe("payment_intent.succeeded", pi, event_id="evt_A")
    b = stripe("charge.captured", stripe_charge(), event_id="evt_B")
    assert (a.kind, a.amount_minor) == ("captured", 1834)
    assert (b.kind, b.amount_minor) == ("captured", 1834)
    assert a.event_id == b.event_id == payment_event_id("stripe", "capture:" + b.psp_reference)


def test_stripe_charge_hashes_card_fingerprint() -> None:
    p = stripe("charge.captured", stripe_charge())
    assert p.card_fingerprint_hash == hash_identifier("Xt5EWLLDS7FJjR1c", SECRET)
    assert "Xt5EWLLDS7FJjR1c" not in repr(p)


def test_stripe_wallet_charge() -> None:
    charge = stripe_charge()
    charge["payment_method_details"]["card"]["wallet"] = {"type": "apple_pay"}
    assert stripe("charge.captured", charge).method == "wallet"


def test_stripe_refund_uses_latest_refund() -> None:
    charge = stripe_charge(
        amount_refunded=1000,
        refunds={"object": "list", "data": [{"id": "re_1", "amount": 600}, {"amount": 400}]},
    )
    p = stripe("charge.refunded", charge)
    assert (p.kind, p.amount_minor, p.payment_id) == ("refunded", 600, charge["payment_intent"])


def test_stripe_refund_without_list_uses_amount_refunded() -> None:
    p = stripe("charge.refunded", stripe_charge(amount_refunded=834, refunds=None))
    assert p.amount_minor == 834


@pytest.mark.parametrize(
    ("etype", "kind"),
    [
        ("charge.dispute.created", "chargeback_opened"),
        ("charge.dispute.closed", "chargeback_closed"),
    ],
)
def test_stripe_disputes(etype: str, kind: str) -> None:
    p = stripe(etype, stripe_dispute())
    assert (p.kind, p.amount_minor, p.psp_reference) == (kind, 1834, "dp_1OpVj22eZvKYlo2CyV7aB8cD")
    assert p.payment_id == "pi_3OpVZb2eZvKYlo2C0uL1mB7x"
    assert p.session_id is None  # disputes carry no PaymentIntent metadata: orphan candidate


@pytest.mark.parametrize(
    ("etype", "kind"),
    [("payment_intent.payment_failed", "failed"), ("payment_intent.canceled", "voided")],
)
def test_stripe_failed_and_canceled(etype: str, kind: str) -> None:
    p = stripe(etype, stripe_payment_intent(amount_capturable=0, latest_charge=None))
    assert (p.kind, p.amount_minor, p.psp_reference) == (kind, 5000, p.payment_id)


def test_stripe_without_metadata_is_an_orphan_candidate() -> None:
    p = stripe("payment_intent.canceled", stripe_payment_intent(metadata={}))
    assert p.session_id is None and p.station_id is None


def test_stripe_unsupported_type() -> None:
    with pytest.raises(UnsupportedPspEvent, match=r"customer\.created"):
        stripe("customer.created", {"id": "cus_1"})


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda e: e.pop("id"), r"\$\.id: required"),
        (lambda e: e.pop("created"), r"\$\.created: required"),
        (lambda e: e.update(created="yesterday"), r"\$\.created: expected int"),
        (lambda e: e.update(data=[]), r"\$\.data: expected dict"),
        (lambda e: e["data"]["object"].pop("amount_capturable"), r"amount_capturable: required"),
        (lambda e: e["data"]["object"].update(amount_capturable=-5), r"amount_capturable: -5"),
        (lambda e: e["data"]["object"].update(amount_capturable=True), r"expected int"),
        (lambda e: e["data"]["object"].update(currency="euro"), r"currency: 'euro' is not"),
        (lambda e: e["data"]["object"].update(metadata="x"), r"metadata: expected object"),
    ],
)
def test_stripe_bad_fields(mutate, match: str) -> None:
    event = stripe_event("payment_intent.amount_capturable_updated", stripe_payment_intent())
    mutate(event)
    with pytest.raises(AdapterError, match=match):
        map_stripe_event(event, hash_secret=SECRET)


# --------------------------------------------------------------------------- Adyen


def adyen(**overrides):
    return map_adyen_item(adyen_item(**overrides), hash_secret=SECRET)


def test_adyen_authorisation() -> None:
    p = adyen()
    assert (p.kind, p.amount_minor, p.currency, p.method) == ("authorized", 5000, "EUR", "card")
    assert p.payment_id == p.psp_reference == "7914073381342284"
    assert p.session_id == SESSION
    assert p.event_time == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert p.card_fingerprint_hash == hash_identifier("V0010013019326121174347805683", SECRET)
    assert p.event_id == payment_event_id("adyen", "7914073381342284:AUTHORISATION:true")


def test_adyen_failed_authorisation() -> None:
    assert adyen(success="false").kind == "failed"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("CAPTURE", "captured"),
        ("REFUND", "refunded"),
        ("CANCELLATION", "voided"),
        ("CHARGEBACK", "chargeback_opened"),
        ("CHARGEBACK_REVERSED", "chargeback_closed"),
        ("AUTHORISATION_ADJUSTMENT", "auth_adjusted"),
    ],
)
def test_adyen_modifications(code: str, kind: str) -> None:
    p = adyen(
        eventCode=code,
        pspReference="8825408195409505",
        originalReference="7914073381342284",
        amount={"currency": "EUR", "value": 1834},
    )
    assert (p.kind, p.amount_minor) == (kind, 1834)
    assert p.payment_id == "7914073381342284"
    assert p.psp_reference == "8825408195409505"


def test_adyen_refused_modification_is_unsupported() -> None:
    with pytest.raises(UnsupportedPspEvent, match="CAPTURE with success=false"):
        adyen(eventCode="CAPTURE", success="false")


def test_adyen_unmapped_code() -> None:
    with pytest.raises(UnsupportedPspEvent, match="REPORT_AVAILABLE"):
        adyen(eventCode="REPORT_AVAILABLE")


def test_adyen_wallet() -> None:
    assert adyen(paymentMethod="applepay").method == "wallet"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"pspReference": None}, r"pspReference: required"),
        ({"amount": None}, r"amount: required"),
        ({"amount": {"currency": "EUR"}}, r"amount\.value: required"),
        ({"amount": {"currency": "EUR", "value": "50"}}, r"amount\.value: expected int"),
        ({"amount": {"currency": "E", "value": 5}}, r"amount\.currency: 'E' is not"),
        ({"eventDate": "March 1st"}, r"eventDate: 'March 1st' is not ISO 8601"),
        ({"eventDate": "2024-03-01T10:00:00"}, r"eventDate: .* has no UTC offset"),
        ({"success": "maybe"}, r"success: 'maybe'"),
        ({"additionalData": "x"}, r"additionalData: expected object"),
    ],
)
def test_adyen_bad_fields(overrides: dict, match: str) -> None:
    with pytest.raises(AdapterError, match=match):
        adyen(**overrides)


# --------------------------------------------------------------------------- generic

GENERIC = (
    b'{"event_id":"term-77-0001","event_time":"2024-03-01T10:00:00+01:00",'
    b'"payment_id":"tp-77-0001","psp":"terminal","psp_reference":"auth-0001",'
    b'"kind":"authorized","amount_minor":5000,"currency":"EUR","method":"card",'
    b'"station_id":"CP-DE-BER-0042","transaction_id":"214988465",'
    b'"card_fingerprint":"PAR-123","terminal_id":"T-77"}'
)


def test_generic_terminal_event() -> None:
    caller_id, p = map_generic(GENERIC, hash_secret=SECRET)
    assert caller_id == "term-77-0001"
    assert p.event_id == payment_event_id("terminal", "generic:term-77-0001")
    assert (p.session_id, p.terminal_id, p.kind) == (SESSION, "T-77", "authorized")
    assert p.card_fingerprint_hash == hash_identifier("PAR-123", SECRET)
    assert p.event_time == datetime(2024, 3, 1, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (b'"kind":"authorized"', b'"kind":"stolen"', r"\$\.kind"),
        (b'"method":"card"', b'"method":"cash"', r"\$\.method"),
        (b'"amount_minor":5000', b'"amount_minor":-1', r"amount_minor"),
        (b'"currency":"EUR"', b'"currency":"eur"', r"\$\.currency"),
        (b'"card_fingerprint":', b'"card_fingerprint_hash":', r"unknown field"),
        (b'"payment_id":"tp-77-0001",', b"", r"payment_id"),
        (b"+01:00", b"", r"UTC offset"),
    ],
)
def test_generic_bad_fields(old: bytes, new: bytes, match: str) -> None:
    assert old in GENERIC
    with pytest.raises(AdapterError, match=match):
        map_generic(GENERIC.replace(old, new), hash_secret=SECRET)


def test_generic_not_json() -> None:
    with pytest.raises(AdapterError):
        map_generic(b"{not json", hash_secret=SECRET)
