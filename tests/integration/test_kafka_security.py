"""The managed-Kafka settings against a real broker with TLS and SASL listeners.

A broker of its own gets three more listeners besides the PLAINTEXT one the fixtures use:

- ``SSL`` that requires a client certificate (mutual TLS, as Aiven offers);
- ``SASL_SSL`` with ``PLAIN`` (Confluent Cloud's API keys) and ``SCRAM-SHA-512`` (Amazon
  MSK, Aiven, Redpanda Cloud).

The certificates are made here with ``cryptography`` (a CA, the broker's certificate for
127.0.0.1 and a client certificate); the passwords are random per run. For each setting the
real ``voltguard`` CLI creates the topics and runs an ingest worker (consumer group,
transactions, dead letters) over the secured listener only, with the settings given as
``VOLTGUARD_KAFKA_*`` variables as an operator would; the test reads the worker's output
back through the same settings. Hostname verification stays on (librdkafka's default), so
the broker's certificate is checked against the address dialled.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streams.localkafka import LocalKafka, find_free_port
from streams.settings import KafkaSettings, Settings
from topics import samples
from topics.catalog import CLOCK_KEY, topic
from topics.codec import decode
from topics.records import MeterReading

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


# ---------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path
    broker: Path  # key, certificate and CA, one PEM file (Kafka's PEM keystore)
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A throw-away CA, a broker certificate for 127.0.0.1 and a client certificate."""
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("voltguard test CA", ca_key, ca_key, issuer="voltguard test CA", ca=True)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = _issue(HOST, broker_key, ca_key, issuer="voltguard test CA", server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("voltguard-worker", client_key, ca_key, issuer="voltguard test CA")
    pki = Pki(
        ca=directory / "ca.pem",
        broker=directory / "broker.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.broker.write_bytes(
        _pem_key(broker_key) + broker_cert.public_bytes(pem) + ca_cert.public_bytes(pem)
    )
    pki.client_cert.write_bytes(client_cert.public_bytes(pem))
    pki.client_key.write_bytes(_pem_key(client_key))
    return pki


# ---------------------------------------------------------------- the broker


@dataclass(frozen=True)
class SecureBroker:
    plaintext: str
    ssl: str
    sasl_ssl: str
    pki: Pki
    plain_user: str
    plain_password: str
    scram_user: str
    scram_password: str


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    if os.environ.get("VOLTGUARD_TEST_BOOTSTRAP"):
        pytest.skip("needs a private local broker with TLS listeners (VOLTGUARD_TEST_BOOTSTRAP)")
    data_dir = tmp_path_factory.mktemp("kafka-secure", numbered=True)
    pki = make_pki(data_dir)
    port, controller, ssl_port, sasl_port = (find_free_port() for _ in range(4))
    while len({port, controller, ssl_port, sasl_port}) < 4:
        ssl_port, sasl_port = find_free_port(), find_free_port()
    plain_password = secrets.token_urlsafe(18)
    extra = {
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller},"
        f"SSL://{HOST}:{ssl_port},SASL_SSL://{HOST}:{sasl_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port},SSL://{HOST}:{ssl_port},"
        f"SASL_SSL://{HOST}:{sasl_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
        "SSL:SSL,SASL_SSL:SASL_SSL",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.broker),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki.ca),
        "listener.name.ssl.ssl.client.auth": "required",
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_vgplain="{plain_password}";'
        ),
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
    }
    kafka = LocalKafka(
        data_dir, port=port, controller_port=controller, heap="384m",
        exit_with_parent=True, extra_config=extra,
    )  # fmt: skip
    kafka.start(timeout_s=90)
    try:
        scram_password = secrets.token_urlsafe(18)
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        upsert = UserScramCredentialUpsertion(
            "vgscram",
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
            scram_password.encode(),
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=30)
        yield SecureBroker(
            plaintext=kafka.bootstrap,
            ssl=f"{HOST}:{ssl_port}",
            sasl_ssl=f"{HOST}:{sasl_port}",
            pki=pki,
            plain_user="vgplain",
            plain_password=plain_password,
            scram_user="vgscram",
            scram_password=scram_password,
        )
    finally:
        kafka.stop(timeout_s=20)
        shutil.rmtree(data_dir, ignore_errors=True)


def security_env(broker: SecureBroker, kind: str) -> dict[str, str]:
    """The ``VOLTGUARD_*`` variables an operator would set for each kind of cluster."""
    if kind == "ssl-client-certificate":
        return {
            "VOLTGUARD_BOOTSTRAP_SERVERS": broker.ssl,
            "VOLTGUARD_KAFKA_SECURITY_PROTOCOL": "SSL",
            "VOLTGUARD_KAFKA_SSL_CA_LOCATION": str(broker.pki.ca),
            "VOLTGUARD_KAFKA_SSL_CERTIFICATE_LOCATION": str(broker.pki.client_cert),
            "VOLTGUARD_KAFKA_SSL_KEY_LOCATION": str(broker.pki.client_key),
        }
    user, password, mechanism = {
        "sasl-ssl-plain": (broker.plain_user, broker.plain_password, "PLAIN"),
        "sasl-ssl-scram-sha-512": (broker.scram_user, broker.scram_password, "SCRAM-SHA-512"),
    }[kind]
    return {
        "VOLTGUARD_BOOTSTRAP_SERVERS": broker.sasl_ssl,
        "VOLTGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "VOLTGUARD_KAFKA_SASL_MECHANISM": mechanism,
        "VOLTGUARD_KAFKA_SASL_USERNAME": user,
        "VOLTGUARD_KAFKA_SASL_PASSWORD": password,
        "VOLTGUARD_KAFKA_SSL_CA_LOCATION": str(broker.pki.ca),
    }


def kafka_settings(env: dict[str, str]) -> KafkaSettings:
    return Settings.from_env(env).kafka


def voltguard(
    args: list[str], env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with only the given Kafka variables (no local broker is adopted)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOLTGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=ROOT, env={**clean, "VOLTGUARD_HASH_SECRET": "security-test", **env},
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


def produce(settings: KafkaSettings, short: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({**settings.client_config(), "linger.ms": 5})
    errors: list[object] = []
    for key, value in values:
        producer.produce(topic(short), value, key, on_delivery=lambda e, m: e and errors.append(e))
    assert producer.flush(30) == 0
    assert not errors, errors


def read_station(settings: KafkaSettings, short: str, station: str, expect: int) -> list[bytes]:
    """Committed values of ``short`` about ``station``, read through ``settings``."""
    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": f"test-secure-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    name = topic(short)
    marker = f'"station_id":"{station}"'.encode()
    partitions = consumer.list_topics(name, timeout=20).topics[name].partitions
    consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
    found: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and len(found) < expect:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None and msg.key() != CLOCK_KEY and marker in msg.value():
                    found.append(msg.value())
        time.sleep(1.0)  # a duplicate would come right after
        for msg in consumer.consume(500, 0.5):
            if msg.error() is None and msg.key() != CLOCK_KEY and marker in msg.value():
                found.append(msg.value())
    finally:
        consumer.close()
    return found


def session_frames(station: str, readings: int) -> list[tuple[bytes, bytes]]:
    frames = [
        samples.start_transaction(
            station_id=station, unique_id="s1", id_tag="RFID-SEC", meter_start_wh=0
        ),
        samples.start_transaction_result(station_id=station, unique_id="s1", transaction_id=7),
        *(
            samples.meter_values(station_id=station, transaction_id=7, seq=i, energy_wh=i * 150)
            for i in range(1, readings + 1)
        ),
    ]
    return [(station.encode(), frame) for frame in frames]


KINDS = ["ssl-client-certificate", "sasl-ssl-plain", "sasl-ssl-scram-sha-512"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_ingest_worker_runs_over_each_secured_listener(
    secure_broker: SecureBroker, kind: str
) -> None:
    env = security_env(secure_broker, kind)
    settings = kafka_settings(env)
    created = voltguard(["topics", "create"], env)
    assert created.returncode == 0, created.stdout + created.stderr
    assert secure_broker.sasl_ssl in created.stdout or secure_broker.ssl in created.stdout

    station = f"SEC-{uuid.uuid4().hex[:8]}"
    produce(settings, "ocpp_frames", session_frames(station, readings=12))
    worker = voltguard(
        ["worker", "--stage", "ingest", "--instance-id", f"secure-{kind}",
         "--exit-when-idle", "4"],
        env,
    )  # fmt: skip
    output = worker.stdout + worker.stderr
    assert worker.returncode == 0, output
    for secret in (secure_broker.plain_password, secure_broker.scram_password):
        assert secret not in output, "a Kafka password reached the worker's log"

    values = read_station(settings, "meter_readings", station, 12)
    readings = [decode(v, MeterReading) for v in values]
    assert sorted(r.energy_wh or 0 for r in readings) == [i * 150 for i in range(1, 13)]


@pytest.mark.parametrize(
    ("kind", "change", "reported"),
    [
        ("sasl-ssl-scram-sha-512", {"VOLTGUARD_KAFKA_SASL_PASSWORD": "not-the-password"},
         "invalid credentials with SASL mechanism SCRAM-SHA-512"),
        ("ssl-client-certificate", {"VOLTGUARD_KAFKA_SSL_CA_LOCATION": "OTHER_CA"},
         "certificate verify failed"),
    ],
    ids=["wrong-password", "broker-certificate-not-trusted"],
)  # fmt: skip
def test_a_refused_connection_stops_the_worker_with_the_reason(
    secure_broker: SecureBroker, tmp_path: Path, kind: str, change: dict[str, str], reported: str
) -> None:
    """No traceback after 30 s of retries: exit 1 with one line that names the cause."""
    if change.get("VOLTGUARD_KAFKA_SSL_CA_LOCATION") == "OTHER_CA":
        change = {"VOLTGUARD_KAFKA_SSL_CA_LOCATION": str(make_pki(tmp_path).ca)}
    env = {**security_env(secure_broker, kind), **change}
    started = time.monotonic()
    worker = voltguard(
        ["worker", "--stage", "ingest", "--instance-id", f"refused-{kind}",
         "--exit-when-idle", "4"],
        env, timeout_s=180,
    )  # fmt: skip
    took = time.monotonic() - started
    ours = [ln for ln in (worker.stdout + worker.stderr).splitlines() if not ln.startswith("%")]
    print(f"exit {worker.returncode} after {took:.1f} s:", *ours[-4:], sep="\n")
    assert worker.returncode == 1
    assert "Traceback" not in worker.stderr
    [error] = [ln for ln in ours if "could not start Kafka transactions" in ln]
    assert secure_broker.sasl_ssl in error or secure_broker.ssl in error
    assert reported in error
    assert "not-the-password" not in worker.stdout + worker.stderr
