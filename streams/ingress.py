"""Payment ingress: the HTTP edge where PSP webhooks and trusted payment systems enter.

Endpoints (aiohttp, served by ``voltguard ingress``):

``POST /webhooks/stripe``
    ``Stripe-Signature`` verified on the raw bytes before anything parses them
    (:func:`topics.adapters.signatures.verify_stripe_header`, any of the configured secrets).
``POST /webhooks/adyen``
    Every ``NotificationRequestItem`` HMAC-verified; the reply body is ``[accepted]``.
``POST /payments``
    Wallet, prepaid and terminal events (:class:`topics.adapters.psp.GenericPayment`),
    ``Authorization: Bearer <token>`` compared in constant time.
``GET /healthz``
    200 with the request counters.

Statuses: 200 accepted, duplicate, or verified but of a type voltguard does not map
(acknowledged so the PSP stops retrying; audited; no payment event); 400 malformed body
(not JSON, not an object, a field the mapping needs is missing or wrong); 401 missing or bad
credentials or signature, *including a stale or future Stripe timestamp* (it is the
signature check failing: the signed timestamp is outside the tolerance, i.e. a possible
replay, so the same class as a bad signature; the body says ``tolerance``); 413 body larger
than ``ingress_max_body_bytes``; 503 endpoint not configured (no secret) or Kafka did not
acknowledge (the PSP retries). Nothing is produced for any non-200, and log lines name the
reason and the PSP event id, never a secret, a signature header or card data.

Output: each accepted notification produces its :class:`~topics.records.PaymentEvent` to
``psp_payment_events`` (key: session id, else payment id) and an audit record to
``psp_raw_webhooks`` (key: the PSP event id; value: JSON with ``psp``, ``psp_event_ids``,
``received_at``, the non-secret ``headers``, the ``body`` with every personal identifier
(card fingerprint, PAR, names, e-mails: :data:`topics.adapters.psp.PERSONAL_KEYS`) replaced
by its keyed hash, the JSON paths replaced (``redacted``) and ``body_sha256``, the digest of
the bytes exactly as received). The reply is sent
only after Kafka acknowledged both (idempotent producer, ``acks=all``); requests in flight
at the same time share the producer's linger batch, so there is no batching trade-off.

Idempotency, two layers: (1) a bounded in-memory LRU of recent PSP event ids
(``ingress_dedupe_ids``) answers a redelivery 200 without producing; a redelivery that
arrives while the first is still being produced waits for its outcome. (2) Downstream
safety that survives restarts and several ingress replicas: the produced event's
``event_id`` is derived from the PSP event id (:func:`topics.adapters.psp.payment_event_id`;
Stripe ``evt_...``, Adyen ``pspReference:eventCode:success``, the caller's ``event_id`` for
``/payments``), and the billing engine drops a payment whose ``event_id`` it already holds.
The audit topic may then hold a redelivery twice; that is what an audit log should show.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from streams.metrics import INGRESS_REQUESTS, INGRESS_SECONDS
from topics.adapters.psp import (
    adyen_event_id,
    map_adyen_item,
    map_generic,
    map_stripe_event,
    redact_identifiers,
    stripe_event_id,
)
from topics.adapters.signatures import DEFAULT_TOLERANCE_S, verify_adyen_item, verify_stripe_header
from topics.catalog import topic
from topics.codec import encode
from topics.exceptions import AdapterError, SignatureVerificationError, UnsupportedPspEvent
from topics.records import PaymentEvent

__all__ = ["DeliveryProducer", "IngressConfig", "KafkaDelivery", "RecentIds", "make_app"]

log = logging.getLogger(__name__)

AUDIT_HEADERS = ("content-type", "user-agent", "stripe-signature", "x-request-id")
"""Request headers kept on the audit record. ``Authorization`` and cookies never are; the
Stripe signature is an HMAC output, not a secret: with the PSP's copy of the body (matched
by ``body_sha256``) an auditor can re-verify it."""

INGRESS_KEY: web.AppKey[Any] = web.AppKey("voltguard_ingress", object)

Message = tuple[str, bytes, bytes]
"""(topic name, key, value)."""


class DeliveryProducer(Protocol):
    """What the ingress needs from Kafka: send messages and return once all are acknowledged."""

    async def send_many(self, messages: Sequence[Message]) -> None:
        """Produce the messages; raise if any was not acknowledged."""
        ...


class DeliveryError(RuntimeError):
    """Kafka reported a failed delivery."""


class KafkaDelivery:
    """:class:`DeliveryProducer` on confluent-kafka (idempotent, ``acks=all``).

    A background thread serves delivery reports (``poll``); each report resolves the asyncio
    future of its message on the event loop. Call :meth:`close` to flush and stop.
    """

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        from confluent_kafka import Producer

        self._loop = loop
        self._producer = Producer(
            {
                **config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                "compression.type": "lz4",
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="ingress-delivery", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _report(self, future: asyncio.Future[None]) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, _msg: Any) -> None:
            self._loop.call_soon_threadsafe(_resolve, future, err)

        return on_delivery

    async def send_many(self, messages: Sequence[Message]) -> None:
        futures = []
        for name, key, value in messages:
            future: asyncio.Future[None] = self._loop.create_future()
            while True:
                try:
                    self._producer.produce(name, value, key, on_delivery=self._report(future))
                    break
                except BufferError:
                    await asyncio.sleep(0.005)
            futures.append(future)
        await asyncio.gather(*futures)

    def close(self, timeout_s: float = 30.0) -> int:
        """Flush outstanding messages, stop the poll thread; returns messages left unsent."""
        self._stop.set()
        self._thread.join()
        return self._producer.flush(timeout_s)


def _resolve(future: asyncio.Future[None], err: Any) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(DeliveryError(str(err)))


class RecentIds:
    """Bounded LRU of PSP event ids already produced, plus those being produced right now.

    >>> ids = RecentIds(2)
    >>> async def produce(): pass
    >>> [asyncio.run(ids.once(k, produce)) for k in ("a", "a", "b", "c", "a")]
    [True, False, True, True, True]
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._done: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[None]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._done

    async def once(self, key: str, work: Callable[[], Awaitable[None]]) -> bool:
        """Run ``work`` unless ``key`` was done or is in flight; True when this call ran it.

        A call that finds ``key`` in flight waits for it and raises what it raised.
        """
        if key in self._done:
            self._done.move_to_end(key)
            return False
        pending = self._inflight.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            await work()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            del self._inflight[key]
        future.set_result(None)
        self._done[key] = None
        if len(self._done) > self.capacity:
            self._done.popitem(last=False)
        return True


@dataclass(frozen=True)
class IngressConfig:
    """What the ingress needs, taken from :class:`streams.settings.Settings`."""

    hash_secret: bytes
    stripe_secrets: tuple[str, ...] = ()
    adyen_hmac_key: str = ""
    api_token: str = ""
    tolerance_s: int = DEFAULT_TOLERANCE_S
    max_body_bytes: int = 256 * 1024
    dedupe_ids: int = 100_000

    @classmethod
    def from_settings(cls, settings: Any) -> IngressConfig:
        return cls(
            hash_secret=settings.require_hash_secret(),
            stripe_secrets=tuple(settings.stripe_secrets()),
            adyen_hmac_key=settings.adyen_hmac_key.get(),
            api_token=settings.ingress_api_token.get(),
            tolerance_s=settings.webhook_tolerance_s,
            max_body_bytes=settings.ingress_max_body_bytes,
            dedupe_ids=settings.ingress_dedupe_ids,
        )

    def __repr__(self) -> str:  # never show the secrets
        return (
            f"IngressConfig(stripe_secrets={len(self.stripe_secrets)}, "
            f"adyen={'set' if self.adyen_hmac_key else 'unset'}, "
            f"api_token={'set' if self.api_token else 'unset'}, tolerance_s={self.tolerance_s})"
        )


def _reply(code: int, /, **body: Any) -> web.Response:
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")


class _Ingress:
    def __init__(
        self, config: IngressConfig, producer: DeliveryProducer, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.producer = producer
        self.clock = clock
        self.recent = RecentIds(config.dedupe_ids)
        self.counts: dict[str, int] = {}
        self.payments_topic = topic("psp_payment_events")
        self.raw_topic = topic("psp_raw_webhooks")

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        endpoint, _, what = outcome.partition("_")
        INGRESS_REQUESTS.labels(endpoint=endpoint, outcome=what).inc()

    def _reject(self, status: int, psp: str, reason: str, detail: str = "") -> web.Response:
        self._count(f"{psp}_{reason}")
        log.warning("%s webhook rejected (%d %s) %s", psp, status, reason, detail)
        return _reply(status, error=reason, detail=detail)

    async def _read(self, request: web.Request) -> bytes:
        if (request.content_length or 0) > self.config.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.config.max_body_bytes, actual_size=request.content_length or 0
            )
        return await request.read()  # aiohttp raises 413 past client_max_size too

    def _audit(
        self, request: web.Request, psp: str, ids: list[str], body: str | bytes, received: float
    ) -> Message:
        headers = {h: request.headers[h] for h in AUDIT_HEADERS if h in request.headers}
        raw = body.encode() if isinstance(body, str) else body
        # Personal identifiers (card fingerprints, PAR, names, e-mails) are replaced by
        # their keyed hash before the payload is kept; the digest of the bytes as received
        # lets an auditor match the PSP's own copy (the signature covers those bytes).
        redacted, paths = redact_identifiers(orjson.loads(raw), hash_secret=self.config.hash_secret)
        value = orjson.dumps(
            {
                "psp": psp,
                "psp_event_ids": ids,
                "received_at": datetime.fromtimestamp(received, UTC).isoformat(),
                "headers": headers,
                "body": orjson.dumps(redacted).decode(),
                "body_sha256": hashlib.sha256(raw).hexdigest(),
                "redacted": paths,
            }
        )
        return self.raw_topic, ids[0].encode(), value

    def _payment(self, event: PaymentEvent) -> Message:
        key = event.session_id or event.payment_id
        return self.payments_topic, key.encode(), encode(event)

    async def _deliver(self, psp: str, key: str, messages: list[Message]) -> web.Response:
        async def work() -> None:
            await self.producer.send_many(messages)

        try:
            produced = await self.recent.once(key, work)
        except Exception as exc:  # Kafka did not acknowledge: let the PSP retry
            self._count(f"{psp}_kafka_error")
            log.error("%s event %s not acknowledged by Kafka: %s", psp, key, exc)
            return _reply(503, error="kafka_unavailable")
        outcome = "accepted" if produced else "duplicate"
        self._count(f"{psp}_{outcome}")
        return _reply(200, status=outcome, events=len(messages) - 1 if produced else 0)

    # ------------------------------------------------------------------ handlers

    async def stripe(self, request: web.Request) -> web.Response:
        if not self.config.stripe_secrets:
            return self._reject(503, "stripe", "not_configured")
        received = self.clock()
        body = await self._read(request)
        try:
            verify_stripe_header(
                body,
                request.headers.get("Stripe-Signature"),
                secrets=self.config.stripe_secrets,
                now=received,
                tolerance_s=self.config.tolerance_s,
            )
        except SignatureVerificationError as exc:
            return self._reject(401, "stripe", exc.reason, str(exc))
        try:
            event = orjson.loads(body)
            if not isinstance(event, dict):
                raise AdapterError("$: expected a JSON object")
            event_id = stripe_event_id(event)
        except (orjson.JSONDecodeError, AdapterError) as exc:
            return self._reject(400, "stripe", "malformed", str(exc))
        if event_id in self.recent:
            return await self._deliver("stripe", event_id, [])
        messages = [self._audit(request, "stripe", [event_id], body, received)]
        try:
            messages.append(
                self._payment(map_stripe_event(event, hash_secret=self.config.hash_secret))
            )
        except UnsupportedPspEvent as exc:
            self._count("stripe_ignored")
            log.info("stripe event %s acknowledged, not mapped: %s", event_id, exc)
        except AdapterError as exc:
            return self._reject(400, "stripe", "malformed", f"event {event_id}: {exc}")
        return await self._deliver("stripe", event_id, messages)

    async def adyen(self, request: web.Request) -> web.Response:
        if not self.config.adyen_hmac_key:
            return self._reject(503, "adyen", "not_configured")
        received = self.clock()
        body = await self._read(request)
        try:
            notification = orjson.loads(body)
            raw_items = notification["notificationItems"]
            items = [entry["NotificationRequestItem"] for entry in raw_items]
            if not items or not all(isinstance(i, dict) for i in items):
                raise AdapterError("$.notificationItems: expected a non-empty list of objects")
        except (orjson.JSONDecodeError, AdapterError, KeyError, TypeError) as exc:
            return self._reject(400, "adyen", "malformed", f"{type(exc).__name__}: {exc}")
        try:
            for item in items:
                verify_adyen_item(item, hmac_key_hex=self.config.adyen_hmac_key)
        except SignatureVerificationError as exc:
            return self._reject(401, "adyen", exc.reason, str(exc))
        messages: list[Message] = []
        try:
            ids = [adyen_event_id(item) for item in items]
            for item in items:
                try:
                    event = map_adyen_item(item, hash_secret=self.config.hash_secret)
                except UnsupportedPspEvent as exc:
                    self._count("adyen_ignored")
                    log.info("adyen item acknowledged, not mapped: %s", exc)
                    continue
                messages.append(self._payment(event))
        except AdapterError as exc:
            return self._reject(400, "adyen", "malformed", str(exc))
        key = "|".join(ids)
        if key not in self.recent:
            messages.insert(0, self._audit(request, "adyen", ids, body, received))
        response = await self._deliver("adyen", key, messages)
        if response.status != 200:
            return response
        return web.Response(text="[accepted]")

    async def payments(self, request: web.Request) -> web.Response:
        if not self.config.api_token:
            return self._reject(503, "generic", "not_configured")
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.config.api_token.encode()
        ):
            return self._reject(401, "generic", "unauthorized")
        received = self.clock()
        body = await self._read(request)
        try:
            caller_id, event = map_generic(body, hash_secret=self.config.hash_secret)
        except AdapterError as exc:
            return self._reject(400, "generic", "malformed", str(exc))
        if event.event_id in self.recent:
            return await self._deliver("generic", event.event_id, [])
        audited = orjson.loads(body)
        if audited.get("card_fingerprint"):
            audited["card_fingerprint_hash"] = event.card_fingerprint_hash
            del audited["card_fingerprint"]
        messages = [
            self._audit(request, event.psp, [caller_id], orjson.dumps(audited), received),
            self._payment(event),
        ]
        return await self._deliver("generic", event.event_id, messages)

    async def healthz(self, _request: web.Request) -> web.Response:
        return _reply(200, status="ok", counts=self.counts)


_ENDPOINTS = {
    "/webhooks/stripe": "stripe",
    "/webhooks/adyen": "adyen",
    "/payments": "generic",
    "/healthz": "healthz",
}


@web.middleware
async def _timed(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Handling time per endpoint and status class (INGRESS_SECONDS)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        INGRESS_SECONDS.labels(
            endpoint=_ENDPOINTS.get(request.path, "other"), status=f"{status // 100}xx"
        ).observe(time.perf_counter() - started)


def make_app(
    config: IngressConfig,
    producer: DeliveryProducer,
    *,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The ingress aiohttp application (routes above); ``clock`` gives unix seconds."""
    ingress = _Ingress(config, producer, clock)
    # Series exist from the first scrape on, so rate() sees the first requests too.
    for endpoint in _ENDPOINTS.values():
        for status in ("2xx", "4xx", "5xx"):
            INGRESS_SECONDS.labels(endpoint=endpoint, status=status)
        if endpoint != "healthz":
            for outcome in ("accepted", "duplicate"):
                INGRESS_REQUESTS.labels(endpoint=endpoint, outcome=outcome)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_timed])
    app[INGRESS_KEY] = ingress
    app.router.add_post("/webhooks/stripe", ingress.stripe)
    app.router.add_post("/webhooks/adyen", ingress.adyen)
    app.router.add_post("/payments", ingress.payments)
    app.router.add_get("/healthz", ingress.healthz)
    return app
