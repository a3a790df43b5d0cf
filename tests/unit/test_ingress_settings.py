"""Ingress settings: env parsing, rotation list, tolerance bounds, start-up checks, no leaks."""

from __future__ import annotations

import pytest

from streams.commands.ingress import check_ingress_settings
from streams.ingress import IngressConfig
from streams.settings import ConfigError, Settings

ENV = {
    "VOLTGUARD_HASH_SECRET": "h",
    "VOLTGUARD_STRIPE_WEBHOOK_SECRETS": "whsec_old, whsec_new,",
    "VOLTGUARD_ADYEN_HMAC_KEY": "44782DEF547AAA06",
    "VOLTGUARD_INGRESS_API_TOKEN": "tok-secret",
    "VOLTGUARD_INGRESS_PORT": "9099",
    "VOLTGUARD_WEBHOOK_TOLERANCE_S": "120",
}


def test_from_env_and_rotation_list() -> None:
    s = Settings.from_env(ENV)
    assert s.stripe_secrets() == ["whsec_old", "whsec_new"]
    assert (s.ingress_port, s.webhook_tolerance_s, s.ingress_addr) == (9099, 120, "127.0.0.1")
    check_ingress_settings(s)
    config = IngressConfig.from_settings(s)
    assert config.stripe_secrets == ("whsec_old", "whsec_new")
    for text in (repr(s), repr(config)):
        assert "whsec" not in text and "tok-secret" not in text and "44782DEF" not in text


@pytest.mark.parametrize("value", ["0", "-5", "86400"])
def test_tolerance_cannot_be_disabled(value: str) -> None:
    with pytest.raises(ConfigError, match="VOLTGUARD_WEBHOOK_TOLERANCE_S"):
        Settings.from_env({**ENV, "VOLTGUARD_WEBHOOK_TOLERANCE_S": value})


def test_adyen_key_must_be_hex() -> None:
    s = Settings.from_env({**ENV, "VOLTGUARD_ADYEN_HMAC_KEY": "not-hex"})
    with pytest.raises(ConfigError, match="VOLTGUARD_ADYEN_HMAC_KEY"):
        check_ingress_settings(s)


def test_needs_an_endpoint_and_the_hash_secret() -> None:
    with pytest.raises(ConfigError, match="no endpoint configured"):
        check_ingress_settings(Settings.from_env({"VOLTGUARD_HASH_SECRET": "h"}))
    with pytest.raises(ConfigError, match="VOLTGUARD_HASH_SECRET"):
        check_ingress_settings(Settings.from_env({"VOLTGUARD_STRIPE_WEBHOOK_SECRETS": "w"}))
