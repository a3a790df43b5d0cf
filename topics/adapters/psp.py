"""Adapter from payment gateway notifications (Stripe, Adyen, generic) to PaymentEvent. Pure.

Input is the already *verified* and parsed JSON (see :mod:`topics.adapters.signatures`).

Stripe (``event.type`` -> kind, amount in minor units):

===================================================  ==================  =======================
``payment_intent.amount_capturable_updated``         authorized          ``amount_capturable``
``payment_intent.succeeded``                         captured            ``amount_received``
``charge.captured``                                  captured            ``amount_captured``
``charge.refunded``                                  refunded            latest refund, else
                                                                         ``amount_refunded``
``charge.dispute.created`` / ``.closed``             chargeback_opened   ``amount``
                                                     / _closed
``payment_intent.payment_failed``                    failed              ``amount``
``payment_intent.canceled``                          voided              ``amount``
===================================================  ==================  =======================

``payment_id`` is the PaymentIntent id (``pi_...``); ``psp_reference`` is the charge (or
dispute) id. Adyen ``NotificationRequestItem`` (``eventCode`` -> kind): AUTHORISATION
(``success=false``: failed), AUTHORISATION_ADJUSTMENT, CAPTURE, REFUND, CANCELLATION,
CANCEL_OR_REFUND (voided), CHARGEBACK, SECOND_CHARGEBACK, CHARGEBACK_REVERSED, CAPTURE_FAILED
and REFUND_FAILED (failed); ``payment_id`` is the original payment's pspReference. A
modification with ``success=false`` (the PSP refused it: no money moved) and every other
type raise :class:`~topics.exceptions.UnsupportedPspEvent`.

The session: the CSMS puts ``station_id`` and ``transaction_id`` in the payment's metadata
(Stripe ``metadata``; Adyen ``additionalData["metadata.station_id"]``), and the session id
is :func:`topics.identity.session_id_for` of them; without both it is None (an orphan
candidate, as DESIGN.md allows). Card fingerprints (Stripe
``payment_method_details.card.fingerprint``, Adyen ``additionalData.paymentAccountReference``)
are replaced by :func:`topics.identity.hash_identifier`; nothing raw is returned.

Idempotency: ``event_id`` is :func:`payment_event_id` of the PSP and the PSP's event id
(Stripe ``evt_...``; Adyen has none, so ``pspReference:eventCode:success``, the triple Adyen
documents for deduplication), so a redelivery yields the same ``event_id`` and billing
drops it. One exception: Stripe sends both ``payment_intent.succeeded`` and
``charge.captured`` for one manual capture, so a capture's id is derived from the charge
id instead (``capture:ch_...``; the PaymentIntent names it in ``latest_charge``, API
versions since 2022-11-15), and the second is dropped downstream as a duplicate.

Anything unmappable raises :class:`~topics.exceptions.AdapterError` naming the field.

Examples
--------
>>> event = {"id": "evt_1", "type": "payment_intent.canceled", "created": 1709287200,
...          "data": {"object": {"id": "pi_1", "object": "payment_intent", "amount": 5000,
...          "currency": "eur", "metadata": {"station_id": "CP-1", "transaction_id": "42"}}}}
>>> p = map_stripe_event(event, hash_secret=b"k")
>>> p.kind, p.amount_minor, p.currency, p.session_id == session_id_for("CP-1", "42")
('voided', 5000, 'EUR', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from topics.codec import decode
from topics.exceptions import AdapterError, RecordDecodeError, UnsupportedPspEvent
from topics.identity import hash_identifier, session_id_for, stable_id
from topics.records import Currency, Id, PaymentEvent, PaymentKind

__all__ = [
    "ADYEN_KINDS",
    "STRIPE_KINDS",
    "GenericPayment",
    "adyen_event_id",
    "map_adyen_item",
    "map_generic",
    "map_stripe_event",
    "payment_event_id",
    "redact_identifiers",
    "stripe_event_id",
]

PERSONAL_KEYS: frozenset[str] = frozenset(
    {
        "fingerprint",  # Stripe card fingerprint
        "paymentAccountReference",  # Adyen PAR
        "card_fingerprint",  # the generic endpoint's raw fingerprint
        "email",
        "name",
        "phone",
        "shopperEmail",
        "shopperReference",
        "cardHolderName",
        "shopperIP",
        "ip",
    }
)
"""Keys of PSP payloads whose string values identify a person: replaced by their keyed hash
before a payload is kept (DESIGN.md: no raw identifier leaves ingest)."""

STRIPE_KINDS: dict[str, str] = {
    "payment_intent.amount_capturable_updated": "authorized",
    "payment_intent.succeeded": "captured",
    "charge.captured": "captured",
    "charge.refunded": "refunded",
    "charge.dispute.created": "chargeback_opened",
    "charge.dispute.closed": "chargeback_closed",
    "payment_intent.payment_failed": "failed",
    "payment_intent.canceled": "voided",
}
"""Stripe event types voltguard maps, and their kind."""

ADYEN_KINDS: dict[str, str] = {
    "AUTHORISATION": "authorized",
    "AUTHORISATION_ADJUSTMENT": "auth_adjusted",
    "CAPTURE": "captured",
    "REFUND": "refunded",
    "CANCELLATION": "voided",
    "CANCEL_OR_REFUND": "voided",
    "TECHNICAL_CANCEL": "voided",
    "CHARGEBACK": "chargeback_opened",
    "SECOND_CHARGEBACK": "chargeback_opened",
    "CHARGEBACK_REVERSED": "chargeback_closed",
    "CAPTURE_FAILED": "failed",
    "REFUND_FAILED": "failed",
}
"""Adyen eventCodes voltguard maps, and their kind."""

_WALLETS = {"applepay", "googlepay", "paywithgoogle", "samsungpay", "paypal", "amazonpay"}


def _is_wallet(value: Any) -> bool:
    """A wallet payment method name (a list or an object there is not one, nor a crash)."""
    return isinstance(value, str) and value in _WALLETS


def redact_identifiers(doc: Any, *, hash_secret: bytes, path: str = "$") -> tuple[Any, list[str]]:
    """``doc`` with the string values of :data:`PERSONAL_KEYS` (at any depth) replaced by
    their keyed hash, and the JSON paths that were replaced.

    >>> redact_identifiers({"card": {"fingerprint": "Xt5E", "last4": "4242"}}, hash_secret=b"k")
    ({'card': {'fingerprint': 'hmac:...', 'last4': '4242'}}, ['$.card.fingerprint'])
    """
    paths: list[str] = []
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            where = f"{path}.{key}"
            if key in PERSONAL_KEYS and isinstance(value, str) and value:
                out[key] = "hmac:" + hash_identifier(value, hash_secret)
                paths.append(where)
            else:
                out[key], inner = redact_identifiers(value, hash_secret=hash_secret, path=where)
                paths += inner
        return out, paths
    if isinstance(doc, list):
        items = []
        for i, value in enumerate(doc):
            item, inner = redact_identifiers(value, hash_secret=hash_secret, path=f"{path}[{i}]")
            items.append(item)
            paths += inner
        return items, paths
    return doc, paths


def payment_event_id(psp: str, psp_event_id: str) -> str:
    """The canonical ``event_id`` of a PSP notification (deterministic, so redeliveries dedupe).

    >>> payment_event_id("stripe", "evt_1") == payment_event_id("stripe", "evt_1")
    True
    """
    return stable_id("psp-event", psp, psp_event_id)


def _field(obj: Mapping[str, Any], name: str, path: str, kind: type | tuple = str) -> Any:
    value = obj.get(name) if isinstance(obj, Mapping) else None
    if value is None:
        raise AdapterError(f"{path}.{name}: required", path=f"{path}.{name}")
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise AdapterError(
            f"{path}.{name}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}",
            path=f"{path}.{name}",
        )
    if isinstance(value, str) and not value:
        raise AdapterError(f"{path}.{name}: empty", path=f"{path}.{name}")
    return value


def _amount(obj: Mapping[str, Any], name: str, path: str) -> int:
    value = _field(obj, name, path, int)
    if value < 0 or value > 10**12:
        raise AdapterError(f"{path}.{name}: {value} is out of range", path=f"{path}.{name}")
    return value


def _currency(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise AdapterError(f"{path}: {value!r} is not an ISO 4217 code", path=path)
    return value.upper()


def _session(
    station: Any, transaction: Any, path: str
) -> tuple[str | None, str | None, str | None]:
    if station is None or transaction is None or station == "" or transaction == "":
        return None, None, None
    if not isinstance(station, str) or not isinstance(transaction, str | int):
        raise AdapterError(f"{path}: station_id/transaction_id must be strings", path=path)
    return session_id_for(station, transaction), station, str(transaction)


def _build(path: str, **fields: Any) -> PaymentEvent:
    try:
        return msgspec.convert(fields, PaymentEvent)
    except msgspec.ValidationError as exc:
        raise AdapterError(f"{path}: {exc}", path=path) from None


# --------------------------------------------------------------------------- Stripe


def stripe_event_id(event: Mapping[str, Any]) -> str:
    """The Stripe event id (``evt_...``), checked."""
    return _field(event, "id", "$")


def map_stripe_event(event: Mapping[str, Any], *, hash_secret: bytes) -> PaymentEvent:
    """Map one verified Stripe event (parsed JSON) to a :class:`PaymentEvent`.

    Raises
    ------
    UnsupportedPspEvent
        The event type is not one voltguard maps.
    AdapterError
        A field needed for the mapping is missing or malformed (the message names it).
    """
    event_id = stripe_event_id(event)
    etype = _field(event, "type", "$")
    kind = STRIPE_KINDS.get(etype)
    if kind is None:
        raise UnsupportedPspEvent(f"Stripe event type {etype!r} is not mapped")
    created = _field(event, "created", "$", int)
    data = _field(event, "data", "$", dict)
    obj = _field(data, "object", "$.data", dict)
    path = "$.data.object"
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise AdapterError(f"{path}.metadata: expected object", path=f"{path}.metadata")
    fingerprint = None
    method = "card"
    dedupe = event_id
    if etype.startswith("payment_intent."):
        payment_id = _field(obj, "id", path)
        charge = obj.get("latest_charge")
        charge_obj = charge if isinstance(charge, Mapping) else None
        charge_id = charge_obj.get("id") if charge_obj else charge
        reference = charge_id if isinstance(charge_id, str) and charge_id else payment_id
        amount_field = {
            "authorized": "amount_capturable",
            "captured": "amount_received",
        }.get(kind, "amount")
        amount = _amount(obj, amount_field, path)
        if kind == "captured" and isinstance(charge_id, str) and charge_id:
            dedupe = f"capture:{charge_id}"
        types = obj.get("payment_method_types") or ["card"]
        if charge_obj:
            fingerprint, method = _stripe_card(charge_obj, f"{path}.latest_charge")
        elif isinstance(types, list) and types and _is_wallet(types[0]):
            method = "wallet"
    elif etype.startswith("charge.dispute."):
        reference = _field(obj, "id", path)
        intent = obj.get("payment_intent")
        payment_id = intent if isinstance(intent, str) and intent else _field(obj, "charge", path)
        amount = _amount(obj, "amount", path)
    else:  # charge.*
        reference = _field(obj, "id", path)
        intent = obj.get("payment_intent")
        payment_id = intent if isinstance(intent, str) and intent else reference
        fingerprint, method = _stripe_card(obj, path)
        if kind == "captured":
            amount = _amount(obj, "amount_captured", path)
            dedupe = f"capture:{reference}"
        else:
            amount = _stripe_refund_amount(obj, path)
    session_id, station, transaction = _session(
        metadata.get("station_id"), metadata.get("transaction_id"), f"{path}.metadata"
    )
    return _build(
        path,
        event_id=payment_event_id("stripe", dedupe),
        event_time=datetime.fromtimestamp(created, UTC),
        source="stripe",
        payment_id=payment_id,
        session_id=session_id,
        station_id=station,
        transaction_id=transaction,
        psp="stripe",
        psp_reference=reference,
        kind=kind,
        amount_minor=amount,
        currency=_currency(obj.get("currency"), f"{path}.currency"),
        method=method,
        card_fingerprint_hash=hash_identifier(fingerprint, hash_secret) if fingerprint else None,
        terminal_id=metadata.get("terminal_id") or None,
    )


def _stripe_card(charge: Mapping[str, Any], path: str) -> tuple[str | None, str]:
    details = charge.get("payment_method_details") or {}
    if not isinstance(details, Mapping):
        raise AdapterError(f"{path}.payment_method_details: expected object", path=path)
    card = details.get("card") or details.get("card_present") or {}
    fingerprint = card.get("fingerprint") if isinstance(card, Mapping) else None
    wallet = card.get("wallet") if isinstance(card, Mapping) else None
    method = "wallet" if wallet or _is_wallet(details.get("type")) else "card"
    return (fingerprint if isinstance(fingerprint, str) and fingerprint else None), method


def _stripe_refund_amount(charge: Mapping[str, Any], path: str) -> int:
    refunds = charge.get("refunds")
    items = refunds.get("data") if isinstance(refunds, Mapping) else None
    if isinstance(items, list) and items and isinstance(items[0], Mapping):
        return _amount(items[0], "amount", f"{path}.refunds.data[0]")
    return _amount(charge, "amount_refunded", path)


# --------------------------------------------------------------------------- Adyen


def adyen_event_id(item: Mapping[str, Any]) -> str:
    """Adyen's deduplication key of a notification item: ``pspReference:eventCode:success``."""
    path = "$.NotificationRequestItem"
    psp_ref = _field(item, "pspReference", path)
    code = _field(item, "eventCode", path)
    success = _field(item, "success", path)
    return f"{psp_ref}:{code}:{success}"


def map_adyen_item(item: Mapping[str, Any], *, hash_secret: bytes) -> PaymentEvent:
    """Map one verified Adyen ``NotificationRequestItem`` to a :class:`PaymentEvent`.

    Raises
    ------
    UnsupportedPspEvent
        An eventCode voltguard does not map, or a refused modification (``success=false``).
    AdapterError
        A field needed for the mapping is missing or malformed (the message names it).
    """
    path = "$.NotificationRequestItem"
    dedupe = adyen_event_id(item)
    code = item["eventCode"]
    success = item["success"]
    if success not in ("true", "false"):
        raise AdapterError(f"{path}.success: {success!r} is not 'true' or 'false'", path=path)
    kind = ADYEN_KINDS.get(code)
    if kind is None:
        raise UnsupportedPspEvent(f"Adyen eventCode {code!r} is not mapped")
    if success == "false":
        if code != "AUTHORISATION":
            raise UnsupportedPspEvent(f"Adyen {code} with success=false moved no money")
        kind = "failed"
    reference = item["pspReference"]
    original = item.get("originalReference")
    payment_id = original if isinstance(original, str) and original else reference
    amount_obj = _field(item, "amount", path, dict)
    amount = _amount(amount_obj, "value", f"{path}.amount")
    currency = _currency(amount_obj.get("currency"), f"{path}.amount.currency")
    when = _field(item, "eventDate", path)
    try:
        event_time = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        raise AdapterError(f"{path}.eventDate: {when!r} is not ISO 8601", path=path) from None
    if event_time.tzinfo is None:
        raise AdapterError(f"{path}.eventDate: {when!r} has no UTC offset", path=path)
    extra = item.get("additionalData") or {}
    if not isinstance(extra, Mapping):
        raise AdapterError(f"{path}.additionalData: expected object", path=path)
    session_id, station, transaction = _session(
        extra.get("metadata.station_id"),
        extra.get("metadata.transaction_id"),
        f"{path}.additionalData",
    )
    par = extra.get("paymentAccountReference")
    method_name = str(item.get("paymentMethod") or "")
    return _build(
        path,
        event_id=payment_event_id("adyen", dedupe),
        event_time=event_time.astimezone(UTC),
        source="adyen",
        payment_id=payment_id,
        session_id=session_id,
        station_id=station,
        transaction_id=transaction,
        psp="adyen",
        psp_reference=reference,
        kind=kind,
        amount_minor=amount,
        currency=currency,
        method="wallet" if method_name.lower() in _WALLETS else "card",
        card_fingerprint_hash=hash_identifier(par, hash_secret)
        if isinstance(par, str) and par
        else None,
        terminal_id=extra.get("terminalId") or None,
    )


# --------------------------------------------------------------------------- generic


class GenericPayment(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /payments``: a wallet, prepaid or terminal event from a trusted system.

    Like :class:`PaymentEvent` with two differences: ``event_id`` is the caller's id (the
    canonical one is derived from it and ``psp``), and the card fingerprint, if any, is
    raw (``card_fingerprint``) and hashed here; ``card_fingerprint_hash`` is not accepted.
    """

    event_id: Id
    event_time: datetime
    payment_id: Id
    psp: Id
    psp_reference: Id
    kind: PaymentKind
    amount_minor: int
    currency: Currency
    method: str
    session_id: Id | None = None
    station_id: str | None = None
    transaction_id: str | int | None = None
    card_fingerprint: str | None = None
    terminal_id: str | None = None


def map_generic(raw: bytes, *, hash_secret: bytes) -> tuple[str, PaymentEvent]:
    """Decode and map a ``POST /payments`` body; return (the caller's event id, the event).

    >>> body = (b'{"event_id":"w-1","event_time":"2024-03-01T10:00:00Z","payment_id":"w-9",'
    ...         b'"psp":"wallet","psp_reference":"w-9","kind":"captured","amount_minor":700,'
    ...         b'"currency":"EUR","method":"prepaid","station_id":"CP-1","transaction_id":7}')
    >>> caller_id, p = map_generic(body, hash_secret=b"k")
    >>> caller_id, p.method, p.session_id == session_id_for("CP-1", 7)
    ('w-1', 'prepaid', True)
    """
    try:
        body = decode(raw, GenericPayment)
    except RecordDecodeError as exc:
        raise AdapterError(str(exc), path=exc.path) from None
    if body.event_time.tzinfo is None:
        raise AdapterError("$.event_time: must carry a UTC offset", path="$.event_time")
    session_id = body.session_id
    station, transaction = body.station_id, body.transaction_id
    if session_id is None:
        session_id, station, transaction = _session(station, transaction, "$")
    event = _build(
        "$",
        event_id=payment_event_id(body.psp, f"generic:{body.event_id}"),
        event_time=body.event_time.astimezone(UTC),
        source=body.psp,
        payment_id=body.payment_id,
        session_id=session_id,
        station_id=station,
        transaction_id=None if transaction is None else str(transaction),
        psp=body.psp,
        psp_reference=body.psp_reference,
        kind=body.kind,
        amount_minor=body.amount_minor,
        currency=body.currency,
        method=body.method,
        card_fingerprint_hash=hash_identifier(body.card_fingerprint, hash_secret)
        if body.card_fingerprint
        else None,
        terminal_id=body.terminal_id,
    )
    return body.event_id, event
