"""The ingress aiohttp app through aiohttp's test client, with a fake producer (unit only)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.ingress import IngressConfig, make_app
from tests.fixtures.psp_payloads import (
    ADYEN_KEY,
    CREATED,
    adyen_notification,
    signed_adyen_item,
    stripe_charge,
    stripe_event,
)
from topics.adapters.psp import payment_event_id
from topics.adapters.signatures import stripe_signature_header
from topics.catalog import topic
from topics.codec import decode
from topics.records import PaymentEvent

STRIPE_SECRET = "whsec_unit_current"
TOKEN = "unit-bearer-token-0123456789"
HASH = b"unit-hash-secret"


class FakeProducer:
    """Same interface as streams.ingress.KafkaDelivery: records what would be produced."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail

    async def send_many(self, messages: Sequence[tuple[str, bytes, bytes]]) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("broker down")
        self.sent.extend(messages)

    def of(self, short: str) -> list[tuple[bytes, bytes]]:
        return [(k, v) for t, k, v in self.sent if t == topic(short)]


CONFIG = IngressConfig(
    hash_secret=HASH,
    stripe_secrets=("whsec_unit_old", STRIPE_SECRET),
    adyen_hmac_key=ADYEN_KEY,
    api_token=TOKEN,
    max_body_bytes=64 * 1024,
    dedupe_ids=100,
)


def call(
    producer: FakeProducer, requests, config: IngressConfig = CONFIG, now: float = CREATED + 5
):
    """Run ``requests(client)`` (an async function) against a fresh app; return its result."""

    async def main():
        app = make_app(config, producer, clock=lambda: now)
        async with TestClient(TestServer(app)) as client:
            return await requests(client)

    return asyncio.run(main())


def stripe_body(event_id: str = "evt_unit_1") -> bytes:
    return orjson.dumps(stripe_event("charge.captured", stripe_charge(), event_id=event_id))


def stripe_headers(body: bytes, secret: str = STRIPE_SECRET, timestamp: int = CREATED) -> dict:
    sig = stripe_signature_header(body, secret=secret, timestamp=timestamp)
    return {"Stripe-Signature": sig, "Content-Type": "application/json"}


async def post(client, path: str, body: bytes, headers: dict | None = None):
    resp = await client.post(path, data=body, headers=headers or {})
    return resp.status, await resp.text()


def test_stripe_accepted_produces_event_and_audit() -> None:
    producer = FakeProducer()
    body = stripe_body()
    status, text = call(producer, lambda c: post(c, "/webhooks/stripe", body, stripe_headers(body)))
    assert status == 200 and orjson.loads(text)["status"] == "accepted"
    [(key, value)] = producer.of("psp_payment_events")
    event = decode(value, PaymentEvent)
    assert key == event.session_id.encode()
    assert event.kind == "captured" and event.amount_minor == 1834
    [(raw_key, raw)] = producer.of("psp_raw_webhooks")
    audit = orjson.loads(raw)
    assert raw_key == b"evt_unit_1"
    assert audit["body_sha256"] == hashlib.sha256(body).hexdigest()  # the bytes received
    assert audit["redacted"] == ["$.data.object.payment_method_details.card.fingerprint"]
    assert b"Xt5EWLLDS7FJjR1c" not in raw  # no raw card fingerprint is kept
    kept = orjson.loads(audit["body"])
    assert kept["id"] == "evt_unit_1"
    assert kept["data"]["object"]["payment_method_details"]["card"]["fingerprint"].startswith(
        "hmac:"
    )
    assert audit["psp"] == "stripe" and audit["psp_event_ids"] == ["evt_unit_1"]
    assert "stripe-signature" in audit["headers"]


def test_stripe_old_secret_still_accepted_during_rotation() -> None:
    producer = FakeProducer()
    body = stripe_body()
    headers = stripe_headers(body, secret="whsec_unit_old")
    status, _ = call(producer, lambda c: post(c, "/webhooks/stripe", body, headers))
    assert status == 200 and len(producer.sent) == 2


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "unparseable"),
        ({"Stripe-Signature": "t=1"}, "no_scheme"),
        ({"Stripe-Signature": f"t={CREATED},v1=" + "0" * 64}, "no_match"),
    ],
)
def test_stripe_bad_signature_401_nothing_produced(headers: dict, reason: str) -> None:
    producer = FakeProducer()
    status, text = call(producer, lambda c: post(c, "/webhooks/stripe", stripe_body(), headers))
    assert (status, orjson.loads(text)["error"]) == (401, reason)
    assert producer.sent == []


def test_stripe_wrong_secret_401() -> None:
    producer = FakeProducer()
    body = stripe_body()
    headers = stripe_headers(body, secret="whsec_attacker")
    status, _ = call(producer, lambda c: post(c, "/webhooks/stripe", body, headers))
    assert status == 401 and producer.sent == []


def test_stripe_stale_timestamp_401(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer()
    body = stripe_body()
    with caplog.at_level(logging.INFO):
        status, text = call(
            producer,
            lambda c: post(c, "/webhooks/stripe", body, stripe_headers(body)),
            now=CREATED + 301,
        )
    assert (status, orjson.loads(text)["error"]) == (401, "tolerance")
    assert producer.sent == []
    assert "tolerance" in caplog.text
    assert STRIPE_SECRET not in caplog.text and "whsec_unit_old" not in caplog.text


def test_stripe_malformed_but_signed_400() -> None:
    producer = FakeProducer()
    for body in (b"{not json", b"[1,2]", b'{"type":"charge.captured"}'):
        status, _ = call(
            producer, lambda c, b=body: post(c, "/webhooks/stripe", b, stripe_headers(b))
        )
        assert status == 400
    bad = orjson.loads(stripe_body())
    bad["data"]["object"]["currency"] = "euro"
    raw = orjson.dumps(bad)
    status, text = call(producer, lambda c: post(c, "/webhooks/stripe", raw, stripe_headers(raw)))
    assert status == 400 and "currency" in orjson.loads(text)["detail"]
    assert producer.sent == []


def test_stripe_unmapped_type_acknowledged_and_audited_only() -> None:
    producer = FakeProducer()
    body = orjson.dumps(stripe_event("customer.created", {"id": "cus_1"}, event_id="evt_cus"))
    status, _ = call(producer, lambda c: post(c, "/webhooks/stripe", body, stripe_headers(body)))
    assert status == 200
    assert producer.of("psp_payment_events") == [] and len(producer.of("psp_raw_webhooks")) == 1


def test_stripe_duplicate_produces_once() -> None:
    producer = FakeProducer()
    body = stripe_body()

    async def twice(client):
        first = await post(client, "/webhooks/stripe", body, stripe_headers(body))
        second = await post(client, "/webhooks/stripe", body, stripe_headers(body))
        return first, second

    first, second = call(producer, twice)
    assert first[0] == second[0] == 200
    assert orjson.loads(second[1])["status"] == "duplicate"
    assert len(producer.of("psp_payment_events")) == 1 and len(producer.of("psp_raw_webhooks")) == 1


def test_concurrent_duplicates_produce_once() -> None:
    producer = FakeProducer()
    body = stripe_body()

    async def burst(client):
        return await asyncio.gather(
            *[post(client, "/webhooks/stripe", body, stripe_headers(body)) for _ in range(5)]
        )

    results = call(producer, burst)
    assert [s for s, _ in results] == [200] * 5
    assert len(producer.of("psp_payment_events")) == 1


def test_kafka_failure_503_and_retry_allowed() -> None:
    producer = FakeProducer(fail=True)
    body = stripe_body()
    status, _ = call(producer, lambda c: post(c, "/webhooks/stripe", body, stripe_headers(body)))
    assert status == 503


def test_oversized_body_413() -> None:
    producer = FakeProducer()
    body = b'{"pad":"' + b"x" * (70 * 1024) + b'"}'
    status, _ = call(producer, lambda c: post(c, "/webhooks/stripe", body, stripe_headers(body)))
    assert status == 413 and producer.sent == []


def test_stripe_not_configured_503() -> None:
    producer = FakeProducer()
    config = IngressConfig(hash_secret=HASH)
    body = stripe_body()
    status, _ = call(
        producer, lambda c: post(c, "/webhooks/stripe", body, stripe_headers(body)), config
    )
    assert status == 503


# --------------------------------------------------------------------------- Adyen


def test_adyen_accepted_reply_and_events() -> None:
    producer = FakeProducer()
    capture = signed_adyen_item(
        eventCode="CAPTURE", pspReference="8825408195409505", originalReference="7914073381342284"
    )
    body = orjson.dumps(adyen_notification(signed_adyen_item(), capture))
    status, text = call(producer, lambda c: post(c, "/webhooks/adyen", body))
    assert (status, text) == (200, "[accepted]")
    events = [decode(v, PaymentEvent) for _, v in producer.of("psp_payment_events")]
    assert [e.kind for e in events] == ["authorized", "captured"]
    assert events[0].event_id == payment_event_id("adyen", "7914073381342284:AUTHORISATION:true")
    [(key, raw)] = producer.of("psp_raw_webhooks")
    assert key == b"7914073381342284:AUTHORISATION:true"
    audit = orjson.loads(raw)
    assert audit["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert audit["redacted"] == [
        f"$.notificationItems[{i}].NotificationRequestItem.additionalData.paymentAccountReference"
        for i in (0, 1)
    ]
    assert b"V0010013019326121174347805683" not in raw  # the PAR is kept only as its hash


def test_adyen_bad_hmac_401_nothing_produced() -> None:
    producer = FakeProducer()
    good = signed_adyen_item()
    forged = signed_adyen_item(key="00" * 32, pspReference="999")
    body = orjson.dumps(adyen_notification(good, forged))
    status, text = call(producer, lambda c: post(c, "/webhooks/adyen", body))
    assert status == 401 and "[accepted]" not in text and producer.sent == []


@pytest.mark.parametrize(
    "body",
    [b"nope", b"{}", b'{"notificationItems":[]}', b'{"notificationItems":[{"x":1}]}'],
)
def test_adyen_malformed_400(body: bytes) -> None:
    producer = FakeProducer()
    status, _ = call(producer, lambda c: post(c, "/webhooks/adyen", body))
    assert status == 400 and producer.sent == []


def test_adyen_signed_but_unmappable_400() -> None:
    producer = FakeProducer()
    body = orjson.dumps(adyen_notification(signed_adyen_item(eventDate="yesterday")))
    status, text = call(producer, lambda c: post(c, "/webhooks/adyen", body))
    assert status == 400 and "eventDate" in text and producer.sent == []


def test_adyen_duplicate() -> None:
    producer = FakeProducer()
    body = orjson.dumps(adyen_notification(signed_adyen_item()))

    async def twice(client):
        return [await post(client, "/webhooks/adyen", body) for _ in range(2)]

    assert call(producer, twice) == [(200, "[accepted]")] * 2
    assert len(producer.sent) == 2  # one event + one audit record


# --------------------------------------------------------------------------- generic

GENERIC = (
    b'{"event_id":"wallet-0001","event_time":"2024-03-01T10:00:00Z","payment_id":"w-9",'
    b'"psp":"wallet","psp_reference":"w-9","kind":"captured","amount_minor":700,'
    b'"currency":"EUR","method":"wallet","station_id":"CP-1","transaction_id":"7",'
    b'"card_fingerprint":"RAW-CARD-FP-123"}'
)


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def test_generic_accepted_and_no_raw_card_data_on_audit() -> None:
    producer = FakeProducer()
    status, _ = call(producer, lambda c: post(c, "/payments", GENERIC, auth()))
    assert status == 200
    [(_, value)] = producer.of("psp_payment_events")
    assert decode(value, PaymentEvent).method == "wallet"
    [(key, raw)] = producer.of("psp_raw_webhooks")
    assert key == b"wallet-0001"
    assert b"RAW-CARD-FP-123" not in raw and b"RAW-CARD-FP-123" not in value


@pytest.mark.parametrize(
    "headers", [{}, auth("wrong"), {"Authorization": TOKEN}, {"Authorization": "Basic x"}]
)
def test_generic_bad_auth_401(headers: dict) -> None:
    producer = FakeProducer()
    status, _ = call(producer, lambda c: post(c, "/payments", GENERIC, headers))
    assert status == 401 and producer.sent == []


def test_generic_malformed_400() -> None:
    producer = FakeProducer()
    body = GENERIC.replace(b'"kind":"captured"', b'"kind":"gift"')
    status, text = call(producer, lambda c: post(c, "/payments", body, auth()))
    assert status == 400 and "kind" in text and producer.sent == []


def test_healthz() -> None:
    async def get(client):
        resp = await client.get("/healthz")
        return resp.status, await resp.json()

    status, body = call(FakeProducer(), get)
    assert status == 200 and body["status"] == "ok"
