"""Stripe and Adyen webhook signatures: every failure mode, rotation, input types, tolerance."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from topics.adapters.signatures import (
    adyen_signature,
    stripe_signature_header,
    verify_adyen_item,
    verify_stripe_header,
)
from topics.exceptions import SignatureVerificationError

BODY = b'{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"charge.captured"}'
SECRET = "whsec_test_secret"
T = 1_700_000_000


def generate_header(**overrides: object) -> str:
    """A Stripe-Signature header; override ``timestamp``, ``secret``, ``body``, ``scheme``,
    ``signature`` or pass ``header`` whole."""
    if "header" in overrides:
        return str(overrides["header"])
    timestamp = overrides.get("timestamp", T)
    body = overrides.get("body", BODY)
    secret = str(overrides.get("secret", SECRET))
    scheme = overrides.get("scheme", "v1")
    signature = overrides.get("signature")
    if signature is None:
        signed = f"{timestamp}.".encode() + bytes(body)  # type: ignore[arg-type]
        signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},{scheme}={signature}"


def verify(header: str, body: bytes | bytearray | str = BODY, **kw: object) -> int:
    kw.setdefault("secrets", [SECRET])
    kw.setdefault("now", T + 10)
    return verify_stripe_header(body, header, **kw)  # type: ignore[arg-type]


def test_valid_header_returns_timestamp() -> None:
    assert verify(generate_header()) == T


def test_bytearray_and_str_payloads() -> None:
    assert verify(generate_header(), bytearray(BODY)) == T
    assert verify(generate_header(), BODY.decode()) == T
    assert verify(generate_header(), memoryview(BODY)) == T  # type: ignore[arg-type]


def test_helper_matches_independent_hmac() -> None:
    assert stripe_signature_header(BODY, secret=SECRET, timestamp=T) == generate_header()


def test_unparseable_header() -> None:
    with pytest.raises(SignatureVerificationError, match="Unable to extract timestamp") as info:
        verify("i'm not even a real signature header")
    assert info.value.header == "i'm not even a real signature header"
    assert info.value.reason == "unparseable"


@pytest.mark.parametrize("header", ["", "v1=abc", "t=notanumber,v1=abc", "t=1,garbage"])
def test_unparseable_variants(header: str) -> None:
    with pytest.raises(SignatureVerificationError, match="Unable to extract timestamp"):
        verify(header)


def test_missing_header() -> None:
    with pytest.raises(SignatureVerificationError, match="Unable to extract timestamp"):
        verify_stripe_header(BODY, None, secrets=[SECRET], now=T)


def test_no_signature_with_expected_scheme() -> None:
    with pytest.raises(SignatureVerificationError, match="expected scheme v1"):
        verify(generate_header(scheme="v0"))


def test_no_match() -> None:
    with pytest.raises(SignatureVerificationError, match="No signatures found matching"):
        verify(generate_header(signature="bad_signature"))


def test_body_changed_does_not_match() -> None:
    with pytest.raises(SignatureVerificationError, match="No signatures found matching"):
        verify(generate_header(), BODY + b" ")


def test_timestamp_is_bound_to_the_signature() -> None:
    header = generate_header().replace(f"t={T}", f"t={T + 1}")
    with pytest.raises(SignatureVerificationError, match="No signatures found matching"):
        verify(header, now=T + 1)


def test_stale_timestamp() -> None:
    with pytest.raises(SignatureVerificationError, match="outside the tolerance") as info:
        verify(generate_header(), now=T + 301)
    assert info.value.reason == "tolerance"


def test_future_timestamp_rejected_too() -> None:
    with pytest.raises(SignatureVerificationError, match="outside the tolerance"):
        verify(generate_header(), now=T - 301)


def test_tolerance_edge_and_custom() -> None:
    assert verify(generate_header(), now=T + 300) == T
    assert verify(generate_header(), now=T + 30, tolerance_s=60) == T
    with pytest.raises(SignatureVerificationError, match="outside the tolerance"):
        verify(generate_header(), now=T + 61, tolerance_s=60)


@pytest.mark.parametrize("tolerance", [0, -1, None])
def test_tolerance_cannot_be_disabled(tolerance: object) -> None:
    with pytest.raises(ValueError, match="cannot be disabled"):
        verify(generate_header(), tolerance_s=tolerance)


def test_no_secret_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="secret"):
        verify(generate_header(), secrets=[])
    with pytest.raises(ValueError, match="secret"):
        verify(generate_header(), secrets=[""])


def test_good_signature_next_to_a_bad_one() -> None:
    good = generate_header().split(",")[1]
    assert verify(f"t={T},v1=deadbeef,{good}") == T
    assert verify(f"t={T},{good},v1=deadbeef,v0=whatever") == T


def test_rotation_any_active_secret() -> None:
    header = generate_header(secret="whsec_new")
    assert verify(header, secrets=["whsec_old", "whsec_new"]) == T
    with pytest.raises(SignatureVerificationError, match="No signatures found matching"):
        verify(header, secrets=["whsec_old"])


def test_rotation_header_with_two_signatures() -> None:
    old = generate_header(secret="whsec_old").split(",")[1]
    header = stripe_signature_header(BODY, secret="whsec_new", timestamp=T, extra=[old[3:]])
    assert header.count("v1=") == 2
    assert verify(header, secrets=["whsec_old"]) == T
    assert verify(header, secrets=["whsec_new"]) == T


def test_error_never_carries_the_secret() -> None:
    for header, now in [
        ("garbage", T),
        (generate_header(scheme="v0"), T),
        (generate_header(secret="other"), T),
        (generate_header(), T + 1000),
    ]:
        with pytest.raises(SignatureVerificationError) as info:
            verify(header, now=now)
        text = str(info.value) + repr(info.value) + str(vars(info.value))
        assert SECRET not in text
        assert info.value.header == header


# --------------------------------------------------------------------------- Adyen

ADYEN_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"


def adyen_item(**overrides: object) -> dict:
    item = {
        "amount": {"currency": "EUR", "value": 2500},
        "eventCode": "AUTHORISATION",
        "eventDate": "2024-03-01T10:00:00+01:00",
        "merchantAccountCode": "VoltGuardCPO",
        "merchantReference": "CP-1-42",
        "pspReference": "7914073381342284",
        "paymentMethod": "visa",
        "success": "true",
        "additionalData": {},
    }
    item.update(overrides)
    return item


def test_adyen_signature_independent_computation() -> None:
    import base64

    item = adyen_item()
    signing = b"7914073381342284::VoltGuardCPO:CP-1-42:2500:EUR:AUTHORISATION:true"
    expected = base64.b64encode(
        hmac.new(bytes.fromhex(ADYEN_KEY), signing, hashlib.sha256).digest()
    ).decode()
    assert adyen_signature(item, hmac_key_hex=ADYEN_KEY) == expected


def test_adyen_valid_and_tampered() -> None:
    item = adyen_item()
    item["additionalData"] = {"hmacSignature": adyen_signature(item, hmac_key_hex=ADYEN_KEY)}
    verify_adyen_item(item, hmac_key_hex=ADYEN_KEY)
    tampered = dict(item, amount={"currency": "EUR", "value": 250})
    with pytest.raises(SignatureVerificationError, match="HMAC signature does not match"):
        verify_adyen_item(tampered, hmac_key_hex=ADYEN_KEY)


def test_adyen_wrong_key() -> None:
    item = adyen_item()
    item["additionalData"] = {"hmacSignature": adyen_signature(item, hmac_key_hex="00" * 32)}
    with pytest.raises(SignatureVerificationError, match="does not match") as info:
        verify_adyen_item(item, hmac_key_hex=ADYEN_KEY)
    assert ADYEN_KEY not in str(vars(info.value)) + str(info.value)


def test_adyen_missing_signature() -> None:
    with pytest.raises(SignatureVerificationError, match=r"no additionalData\.hmacSignature"):
        verify_adyen_item(adyen_item(), hmac_key_hex=ADYEN_KEY)
    with pytest.raises(SignatureVerificationError, match=r"no additionalData\.hmacSignature"):
        verify_adyen_item(adyen_item(additionalData=None), hmac_key_hex=ADYEN_KEY)


def test_adyen_key_must_be_hex() -> None:
    with pytest.raises(ValueError, match="hex"):
        adyen_signature(adyen_item(), hmac_key_hex="not-hex")
