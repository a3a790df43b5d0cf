"""Webhook signature verification for the payment gateways (STYLE.md section 12). Pure.

Stripe: the ``Stripe-Signature`` header is ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]``
(other schemes such as ``v0`` are ignored). The HMAC-SHA256 covers ``"{t}.{raw body}"``, so
the timestamp is bound to the body. Verification runs on the raw bytes *before* anything
parses them, accepts when any ``v1`` signature matches any active secret (secret rotation:
Stripe signs with every secret still valid, and the receiver may hold old and new), compares
with :func:`hmac.compare_digest`, and rejects ``abs(now - t) > tolerance_s`` both ways (a
replay of an old delivery and a timestamp from the future). The tolerance defaults to 300 s
and cannot be disabled (zero, negative or None is a ``ValueError``). ``now`` is an argument.

Adyen: each ``NotificationRequestItem`` carries ``additionalData.hmacSignature``, the base64
HMAC-SHA256, under the hex-encoded key from the Customer Area, of
``pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success``
(missing fields are empty strings, ``value`` is the amount in minor units).

Failures raise :class:`~topics.exceptions.SignatureVerificationError`: four distinct
messages for Stripe (in the order they are checked) and one for Adyen; the error keeps the
header, never the secret.

Examples
--------
>>> body = b'{"id":"evt_1"}'
>>> header = stripe_signature_header(body, secret="whsec_a", timestamp=1_700_000_000)
>>> verify_stripe_header(body, header, secrets=["whsec_a"], now=1_700_000_010)
1700000000
>>> verify_stripe_header(body, header, secrets=["whsec_b"], now=1_700_000_010)
Traceback (most recent call last):
...
topics.exceptions.SignatureVerificationError: No signatures found matching the expected signature for payload
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from topics.exceptions import SignatureVerificationError

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "adyen_signature",
    "stripe_signature_header",
    "verify_adyen_item",
    "verify_stripe_header",
]

DEFAULT_TOLERANCE_S = 300
"""Largest accepted ``abs(now - t)`` of a Stripe signature timestamp, seconds."""

EXPECTED_SCHEME = "v1"

MSG_UNPARSEABLE = "Unable to extract timestamp and signatures from header"
MSG_NO_SCHEME = "No signatures found with expected scheme v1"
MSG_NO_MATCH = "No signatures found matching the expected signature for payload"
MSG_TOLERANCE = "Timestamp outside the tolerance zone"
MSG_ADYEN = "Adyen notification HMAC signature does not match"
MSG_ADYEN_MISSING = "Adyen notification has no additionalData.hmacSignature"

ADYEN_SIGNED_FIELDS = (
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
    "value",
    "currency",
    "eventCode",
    "success",
)


def _as_bytes(payload: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    return bytes(payload)


def _stripe_hmac(secret: str, timestamp: str, payload: bytes) -> str:
    signed = timestamp.encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _parse_header(header: str) -> tuple[int, list[str]]:
    if not header.isascii():
        # Stripe's header is ASCII; hmac.compare_digest raises TypeError on a non-ASCII str.
        raise ValueError("not ASCII")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise ValueError(item)
        if key == "t":
            timestamp = int(value)
        elif key == EXPECTED_SCHEME:
            signatures.append(value)
    if timestamp is None:
        raise ValueError("no t=")
    return timestamp, signatures


def verify_stripe_header(
    payload: bytes | bytearray | memoryview | str,
    header: str | None,
    *,
    secrets: Iterable[str],
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> int:
    """Verify a ``Stripe-Signature`` header against the raw body; return its timestamp.

    Parameters
    ----------
    payload
        The raw request body, exactly as received (bytes, bytearray or str).
    header
        The ``Stripe-Signature`` header value.
    secrets
        The active endpoint secrets (``whsec_...``); any may match.
    now
        The current time, unix seconds (injected: this module never reads the clock).
    tolerance_s
        Largest accepted ``abs(now - t)``, seconds; must be positive (cannot be disabled).

    Raises
    ------
    SignatureVerificationError
        In this order: the header cannot be parsed; it has no ``v1`` signature; no signature
        matches any secret; the timestamp is outside the tolerance.
    ValueError
        No secret, or a tolerance that would disable the check.

    Examples
    --------
    >>> h = "t=100," + "v1=" + "0" * 64
    >>> verify_stripe_header(b"{}", h, secrets=["s"], now=100)
    Traceback (most recent call last):
    ...
    topics.exceptions.SignatureVerificationError: No signatures found matching the expected signature for payload
    """
    if tolerance_s is None or not tolerance_s > 0:
        raise ValueError("tolerance_s must be a positive number of seconds (it cannot be disabled)")
    active = [s for s in secrets if s]
    if not active:
        raise ValueError("at least one non-empty webhook secret is required")
    if not header:
        raise SignatureVerificationError(MSG_UNPARSEABLE, header=header, reason="unparseable")
    try:
        timestamp, signatures = _parse_header(header)
    except ValueError:
        raise SignatureVerificationError(
            MSG_UNPARSEABLE, header=header, reason="unparseable"
        ) from None
    if not signatures:
        raise SignatureVerificationError(MSG_NO_SCHEME, header=header, reason="no_scheme")
    body = _as_bytes(payload)
    ts_text = str(timestamp)
    matched = False
    for secret in active:
        expected = _stripe_hmac(secret, ts_text, body)
        for signature in signatures:
            # every pair is compared (no early exit on the secret), each in constant time
            matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise SignatureVerificationError(MSG_NO_MATCH, header=header, reason="no_match")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureVerificationError(MSG_TOLERANCE, header=header, reason="tolerance")
    return timestamp


def stripe_signature_header(
    payload: bytes | bytearray | str, *, secret: str, timestamp: int, extra: Iterable[str] = ()
) -> str:
    """A ``Stripe-Signature`` header as Stripe would send it (tests, load generators).

    ``extra`` are further ``v1`` values appended (as during a secret rotation).

    >>> stripe_signature_header(b"{}", secret="s", timestamp=1)[:7]
    't=1,v1='
    """
    sigs = [_stripe_hmac(secret, str(timestamp), _as_bytes(payload)), *extra]
    return f"t={timestamp}," + ",".join(f"v1={s}" for s in sigs)


def _adyen_signing_string(item: Mapping[str, Any]) -> str:
    amount = item.get("amount") or {}
    values = {
        "pspReference": item.get("pspReference"),
        "originalReference": item.get("originalReference"),
        "merchantAccountCode": item.get("merchantAccountCode"),
        "merchantReference": item.get("merchantReference"),
        "value": amount.get("value") if isinstance(amount, Mapping) else None,
        "currency": amount.get("currency") if isinstance(amount, Mapping) else None,
        "eventCode": item.get("eventCode"),
        "success": item.get("success"),
    }
    return ":".join("" if values[f] is None else str(values[f]) for f in ADYEN_SIGNED_FIELDS)


def adyen_signature(item: Mapping[str, Any], *, hmac_key_hex: str) -> str:
    """The base64 HMAC-SHA256 of a ``NotificationRequestItem``'s signed fields.

    >>> item = {"pspReference": "7914073381342284", "merchantAccountCode": "VoltMerchant",
    ...         "merchantReference": "CP-1:42", "amount": {"value": 2500, "currency": "EUR"},
    ...         "eventCode": "AUTHORISATION", "success": "true"}
    >>> _adyen_signing_string(item)
    '7914073381342284::VoltMerchant:CP-1:42:2500:EUR:AUTHORISATION:true'
    >>> len(adyen_signature(item, hmac_key_hex="44782DEF547AAA06C910C43932B1EB0C"))
    44
    """
    try:
        key = binascii.unhexlify(hmac_key_hex)
    except (binascii.Error, ValueError):
        raise ValueError("the Adyen HMAC key must be hex-encoded") from None
    if not key:
        raise ValueError("the Adyen HMAC key must not be empty")
    digest = hmac.new(key, _adyen_signing_string(item).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_adyen_item(item: Mapping[str, Any], *, hmac_key_hex: str) -> None:
    """Check a ``NotificationRequestItem``'s ``additionalData.hmacSignature`` (constant time).

    Raises
    ------
    SignatureVerificationError
        The signature is missing or does not match.

    >>> item = {"pspReference": "1", "eventCode": "CAPTURE", "success": "true"}
    >>> key = "00" * 32
    >>> item["additionalData"] = {"hmacSignature": adyen_signature(item, hmac_key_hex=key)}
    >>> verify_adyen_item(item, hmac_key_hex=key)
    """
    extra = item.get("additionalData")
    given = extra.get("hmacSignature") if isinstance(extra, Mapping) else None
    if not isinstance(given, str) or not given:
        raise SignatureVerificationError(MSG_ADYEN_MISSING, header=None, reason="missing")
    expected = adyen_signature(item, hmac_key_hex=hmac_key_hex)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureVerificationError(MSG_ADYEN, header=given, reason="no_match")
