"""The payment ingress against the real broker: signed Stripe and Adyen webhooks over loopback
HTTP, plus a forged one and a duplicate; both topics hold exactly the accepted events, once."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import aiohttp
import orjson
import pytest
from confluent_kafka.admin import AdminClient

from streams.admin import create_topics
from streams.commands.ingress import serve
from streams.localkafka import find_free_port
from streams.settings import Secret, Settings
from tests.fixtures.psp_payloads import (
    ADYEN_KEY,
    adyen_notification,
    signed_adyen_item,
    stripe_charge,
    stripe_event,
)
from tests.integration.helpers import read_all
from topics.adapters.psp import payment_event_id
from topics.adapters.signatures import stripe_signature_header
from topics.codec import decode
from topics.identity import session_id_for
from topics.records import PaymentEvent

pytestmark = pytest.mark.kafka

STRIPE_SECRET = "whsec_integration"


def test_ingress_produces_accepted_events_once(
    kafka_bootstrap: str, kafka_admin: AdminClient
) -> None:
    create_topics(kafka_admin)
    run = uuid.uuid4().hex[:12]
    station = f"CP-ING-{run}"
    port = find_free_port()
    settings = Settings.from_env(
        {},
        bootstrap_servers=kafka_bootstrap,
        hash_secret=Secret("integration-hash"),
        stripe_webhook_secrets=Secret(f"whsec_old,{STRIPE_SECRET}"),
        adyen_hmac_key=Secret(ADYEN_KEY),
        ingress_addr="127.0.0.1",
        ingress_port=port,
    )
    meta = {"station_id": station, "transaction_id": "77"}
    stripe_body = orjson.dumps(
        stripe_event("charge.captured", stripe_charge(metadata=meta), event_id=f"evt_ok_{run}")
    )
    forged_body = orjson.dumps(
        stripe_event("charge.captured", stripe_charge(metadata=meta), event_id=f"evt_forged_{run}")
    )
    extra = {"metadata.station_id": station, "metadata.transaction_id": "77"}
    item = signed_adyen_item(pspReference=f"psp{run}", additionalData=extra)
    adyen_body = orjson.dumps(adyen_notification(item))

    async def scenario() -> list[tuple[int, str]]:
        ready = asyncio.Event()
        server = asyncio.create_task(serve(settings, ready=ready))
        await asyncio.wait_for(ready.wait(), 30)
        base = f"http://127.0.0.1:{port}"
        now = int(time.time())
        good = {
            "Stripe-Signature": stripe_signature_header(
                stripe_body, secret=STRIPE_SECRET, timestamp=now
            )
        }
        forged = {
            "Stripe-Signature": stripe_signature_header(
                forged_body, secret="whsec_x", timestamp=now
            )
        }
        out = []
        try:
            async with aiohttp.ClientSession() as http:
                for path, body, headers in [
                    ("/webhooks/stripe", stripe_body, good),
                    ("/webhooks/stripe", forged_body, forged),
                    ("/webhooks/adyen", adyen_body, {}),
                    ("/webhooks/stripe", stripe_body, good),  # redelivery
                    ("/webhooks/adyen", adyen_body, {}),  # redelivery
                ]:
                    async with http.post(base + path, data=body, headers=headers) as resp:
                        out.append((resp.status, await resp.text()))
        finally:
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server
        return out

    replies = asyncio.run(scenario())
    assert [s for s, _ in replies] == [200, 401, 200, 200, 200]
    assert replies[2][1] == replies[4][1] == "[accepted]"
    assert orjson.loads(replies[3][1])["status"] == "duplicate"

    marker = station.encode()
    payments = [
        decode(v, PaymentEvent)
        for v in read_all(
            kafka_bootstrap, "psp_payment_events", keep=lambda v: marker in v, expect=2
        )
    ]
    assert sorted((p.psp, p.kind) for p in payments) == [
        ("adyen", "authorized"),
        ("stripe", "captured"),
    ]
    assert {p.session_id for p in payments} == {session_id_for(station, "77")}
    adyen_event = next(p for p in payments if p.psp == "adyen")
    assert adyen_event.event_id == payment_event_id("adyen", f"psp{run}:AUTHORISATION:true")

    raws = [
        orjson.loads(v)
        for v in read_all(
            kafka_bootstrap, "psp_raw_webhooks", keep=lambda v: run.encode() in v, expect=2
        )
    ]
    assert sorted(r["psp_event_ids"][0] for r in raws) == sorted(
        [f"evt_ok_{run}", f"psp{run}:AUTHORISATION:true"]
    )
    assert {r["body_sha256"] for r in raws} == {
        hashlib.sha256(stripe_body).hexdigest(),
        hashlib.sha256(adyen_body).hexdigest(),
    }
