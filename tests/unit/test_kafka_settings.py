"""KafkaSettings: what reaches librdkafka, and the combinations refused before a connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import ConfigError, KafkaSettings, Secret, Settings


def test_sasl_ssl_settings_from_the_environment_become_librdkafka_keys(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    settings = Settings.from_env({
        "VOLTGUARD_BOOTSTRAP_SERVERS": "kafka-1:9093,kafka-2:9093",
        "VOLTGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "VOLTGUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "VOLTGUARD_KAFKA_SASL_USERNAME": "voltguard",
        "VOLTGUARD_KAFKA_SASL_PASSWORD": "s3cret-value",
        "VOLTGUARD_KAFKA_SSL_CA_LOCATION": str(ca),
    })  # fmt: skip
    assert settings.kafka.client_config() == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "voltguard",
        "sasl.password": "s3cret-value",
        "ssl.ca.location": str(ca),
    }
    assert "s3cret-value" not in repr(settings)


def test_a_client_certificate_and_its_key_become_librdkafka_keys(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("c")
    key.write_text("k")
    kafka = KafkaSettings(
        security_protocol="SSL", ssl_certificate_location=str(cert),
        ssl_key_location=str(key), ssl_key_password=Secret("key-pass"),
    )  # fmt: skip
    kafka.check()
    config = kafka.client_config()
    assert config["ssl.certificate.location"] == str(cert)
    assert config["ssl.key.location"] == str(key)
    assert config["ssl.key.password"] == "key-pass"
    assert "key-pass" not in repr(kafka)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u",
          "sasl_password": Secret("p")}, "sasl_mechanism"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u",
          "sasl_password": Secret("p")}, "sasl_mechanism"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
         "sasl_password"),
        ({"security_protocol": "SSL", "sasl_mechanism": "PLAIN"}, "security_protocol"),
        ({"security_protocol": "SSL", "ssl_certificate_location": "__FILE__"},
         "ssl_key_location"),
        ({"security_protocol": "SSL", "ssl_ca_location": "/no/such/ca.pem"}, "no such file"),
    ],
    ids=["unknown-protocol", "sasl-without-mechanism", "unsupported-mechanism",
         "sasl-without-password", "sasl-with-ssl", "certificate-without-key", "missing-ca"],
)  # fmt: skip
def test_settings_that_cannot_work_are_refused_naming_the_setting(
    fields: dict[str, object], named: str, tmp_path: Path
) -> None:
    if fields.get("ssl_certificate_location") == "__FILE__":
        cert = tmp_path / "c.pem"
        cert.write_text("c")
        fields = {**fields, "ssl_certificate_location": str(cert)}
    with pytest.raises(ConfigError, match=named):
        KafkaSettings(**fields).check()  # type: ignore[arg-type]


def test_plaintext_defaults_pass() -> None:
    KafkaSettings().check()
    assert Settings.from_env({}).kafka.client_config()["security.protocol"] == "PLAINTEXT"
