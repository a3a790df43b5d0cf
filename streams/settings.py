"""The one frozen :class:`Settings`, read once from the environment by the CLI.

Every field is typed, defaulted and documented with its unit and environment variable
(prefix ``VOLTGUARD_``). Secrets are :class:`Secret` so they never show in ``repr`` or logs.
Libraries never read the environment: the CLI builds a ``Settings`` and passes it down.
A bad setting fails at start-up with a message naming the option and its variable.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from billing.reconciliation import ReconciliationConfig

__all__ = ["ConfigError", "KafkaSettings", "Secret", "Settings"]


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the option and its env variable."""


class Secret:
    """A secret value that prints as ``'**********'``.

    >>> s = Secret("hunter2")
    >>> s, str(s), s.get()
    (Secret('**********'), '**********', 'hunter2')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Connection to Kafka; rendered to librdkafka keys by :meth:`client_config`.

    Managed clusters: set ``security_protocol`` (``SSL``/``SASL_SSL``), ``sasl_mechanism``,
    ``sasl_username``/``sasl_password`` and ``ssl_ca_location``; clusters that authenticate
    clients by certificate take ``ssl_certificate_location``/``ssl_key_location`` instead
    of SASL. docs/operations.md has the combinations tested against a broker.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list. Env: VOLTGUARD_BOOTSTRAP_SERVERS."""
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. Env: VOLTGUARD_KAFKA_SECURITY_PROTOCOL."""
    sasl_mechanism: str | None = None
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. Env: VOLTGUARD_KAFKA_SASL_MECHANISM."""
    sasl_username: str | None = None
    """Env: VOLTGUARD_KAFKA_SASL_USERNAME."""
    sasl_password: Secret | None = None
    """Env: VOLTGUARD_KAFKA_SASL_PASSWORD."""
    ssl_ca_location: str | None = None
    """CA bundle (PEM) that signed the brokers' certificates; the system's CAs if unset.
    Env: VOLTGUARD_KAFKA_SSL_CA_LOCATION."""
    ssl_certificate_location: str | None = None
    """Client certificate (PEM) for clusters that authenticate clients by TLS (mTLS).
    Env: VOLTGUARD_KAFKA_SSL_CERTIFICATE_LOCATION."""
    ssl_key_location: str | None = None
    """Private key (PEM) of the client certificate. Env: VOLTGUARD_KAFKA_SSL_KEY_LOCATION."""
    ssl_key_password: Secret | None = None
    """Password of an encrypted client key. Env: VOLTGUARD_KAFKA_SSL_KEY_PASSWORD."""

    def client_config(self) -> dict[str, str]:
        """librdkafka configuration common to producers, consumers and admin clients."""
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        if self.ssl_certificate_location:
            config["ssl.certificate.location"] = self.ssl_certificate_location
        if self.ssl_key_location:
            config["ssl.key.location"] = self.ssl_key_location
        if self.ssl_key_password:
            config["ssl.key.password"] = self.ssl_key_password.get()
        return config

    def check(self) -> None:
        """Refuse combinations librdkafka would only report as a connection failure later."""
        protocols = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
        if self.security_protocol not in protocols:
            raise ConfigError(
                f"security_protocol (env VOLTGUARD_KAFKA_SECURITY_PROTOCOL): "
                f"{self.security_protocol!r} is not one of {', '.join(protocols)}"
            )
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"sasl_mechanism (env VOLTGUARD_KAFKA_SASL_MECHANISM): {self.security_protocol} "
                f"needs one of {', '.join(SASL_MECHANISMS)}, got {self.sasl_mechanism!r}"
            )
        if sasl and not (self.sasl_username and self.sasl_password):
            raise ConfigError(
                "sasl_username and sasl_password (env VOLTGUARD_KAFKA_SASL_USERNAME, "
                f"VOLTGUARD_KAFKA_SASL_PASSWORD): both are needed with {self.security_protocol}"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ConfigError(
                "sasl_* settings are set but security_protocol (env "
                f"VOLTGUARD_KAFKA_SECURITY_PROTOCOL) is {self.security_protocol}: use SASL_SSL"
            )
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            raise ConfigError(
                "ssl_certificate_location and ssl_key_location (env "
                "VOLTGUARD_KAFKA_SSL_CERTIFICATE_LOCATION, VOLTGUARD_KAFKA_SSL_KEY_LOCATION): "
                "a client certificate needs its key, and the key its certificate"
            )
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(
                    f"{name} (env VOLTGUARD_KAFKA_{name.upper()}): no such file: {path}"
                )


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""The SASL mechanisms the settings accept (what managed Kafka services offer with a
username and password)."""

DEFAULT_INGEST_GROUP = "voltguard-ingest"
DEFAULT_BILLING_GROUP = "voltguard-billing"
DEFAULT_DETECTION_GROUP = "voltguard-detection"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable in a voltguard process."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    hash_secret: Secret = field(default_factory=lambda: Secret(""))
    """Key of the HMAC that hashes idTags and card fingerprints at ingest. Required by the
    ingest. Env: VOLTGUARD_HASH_SECRET."""
    ingest_group_id: str = DEFAULT_INGEST_GROUP
    """Consumer group of the ingest loops. Env: VOLTGUARD_INGEST_GROUP_ID."""
    instance_id: str = field(default_factory=socket.gethostname)
    """Stable name of this worker instance; with the group id it forms the transactional id,
    so a restarted instance fences its predecessor. Env: VOLTGUARD_INSTANCE_ID."""
    ingest_batch_max: int = 5000
    """Most input messages per ingest transaction. Env: VOLTGUARD_INGEST_BATCH_MAX."""
    ingest_batch_timeout_s: float = 0.05
    """Longest wait for a batch to fill, seconds. Env: VOLTGUARD_INGEST_BATCH_TIMEOUT_S."""
    transaction_timeout_ms: int = 15000
    """Kafka transaction timeout; a crashed worker's open transaction is aborted after it at
    the latest. Env: VOLTGUARD_TRANSACTION_TIMEOUT_MS."""
    session_timeout_ms: int = 10000
    """Consumer group session timeout. Env: VOLTGUARD_SESSION_TIMEOUT_MS."""
    billing_group_id: str = DEFAULT_BILLING_GROUP
    """Consumer group of the billing loops. Env: VOLTGUARD_BILLING_GROUP_ID."""
    detection_group_id: str = DEFAULT_DETECTION_GROUP
    """Consumer group of the detection loops; a non-default group gets its own repartition
    and changelog topics. Env: VOLTGUARD_DETECTION_GROUP_ID."""
    bill_grace_s: int = 120
    """Seconds of event time after a session's end before its bill is published (late meter
    values). Env: VOLTGUARD_BILL_GRACE_S."""
    payment_grace_s: int = 1800
    """Seconds after a session's end before it is reconciled, when payment events were seen.
    Env: VOLTGUARD_PAYMENT_GRACE_S."""
    unpaid_grace_s: int = 7 * 86_400
    """Seconds after a session's end before a session without any payment event is
    ``missing_payment`` (roaming settles days later). Env: VOLTGUARD_UNPAID_GRACE_S."""
    orphan_grace_s: int = 3600
    """Seconds a payment waits for its session before it is an orphan.
    Env: VOLTGUARD_ORPHAN_GRACE_S."""
    auth_validity_s: int = 7 * 86_400
    """Lifetime of an authorisation hold. Env: VOLTGUARD_AUTH_VALIDITY_S."""
    sample_retention_s: int = 86_400
    """Seconds after a session's end its meter samples are kept for corrections.
    Env: VOLTGUARD_SAMPLE_RETENTION_S."""
    case_retention_s: int = 180 * 86_400
    """Seconds after its last event a reconciled case is kept (refunds, chargebacks).
    Env: VOLTGUARD_CASE_RETENTION_S."""
    metrics_port: int = 0
    """Port of /metrics (0: none). Env: VOLTGUARD_METRICS_PORT."""
    metrics_addr: str = "127.0.0.1"
    """Address /metrics listens on (0.0.0.0 in a container). Env: VOLTGUARD_METRICS_ADDR."""
    stripe_webhook_secrets: Secret = field(default_factory=lambda: Secret(""))
    """Stripe webhook endpoint secrets (``whsec_...``), comma-separated: during a rotation
    both the old and the new secret are active and either may match. Empty: the ingress
    answers 503 on /webhooks/stripe. Env: VOLTGUARD_STRIPE_WEBHOOK_SECRETS."""
    adyen_hmac_key: Secret = field(default_factory=lambda: Secret(""))
    """Adyen notification HMAC key, hex as shown in the Customer Area. Empty: the ingress
    answers 503 on /webhooks/adyen. Env: VOLTGUARD_ADYEN_HMAC_KEY."""
    ingress_api_token: Secret = field(default_factory=lambda: Secret(""))
    """Bearer token of ``POST /payments`` (wallet, prepaid, terminal systems). Empty: the
    endpoint answers 503. Env: VOLTGUARD_INGRESS_API_TOKEN."""
    ingress_addr: str = "127.0.0.1"
    """Address the payment ingress listens on (0.0.0.0 in a container).
    Env: VOLTGUARD_INGRESS_ADDR."""
    ingress_port: int = 8085
    """Port of the payment ingress. Env: VOLTGUARD_INGRESS_PORT."""
    webhook_tolerance_s: int = 300
    """Largest accepted distance between a Stripe signature's timestamp and now, seconds
    (1 to 3600; cannot be disabled). Env: VOLTGUARD_WEBHOOK_TOLERANCE_S."""
    ingress_max_body_bytes: int = 256 * 1024
    """Largest accepted request body; larger ones get 413. Env:
    VOLTGUARD_INGRESS_MAX_BODY_BYTES."""
    ingress_dedupe_ids: int = 100_000
    """How many recent PSP event ids the ingress remembers to answer redeliveries without
    producing (downstream dedupes by event id anyway). Env: VOLTGUARD_INGRESS_DEDUPE_IDS."""
    model_registry: str = "./model-registry"
    """Root directory of the model registry (versioned model files); every worker that
    scores with a model needs the same tree, e.g. a shared volume. Env:
    VOLTGUARD_MODEL_REGISTRY."""
    model_name: str = "session-anomaly"
    """Registry name of the session anomaly model that ``voltguard retrain`` publishes and
    the detection stage loads. Env: VOLTGUARD_MODEL_NAME."""
    router_config: str | None = None
    """Path of the alert router's routes and destinations (YAML or JSON, format in
    ``topics/alerts.py``); required by ``worker --stage router``. It holds the PagerDuty
    routing keys and Slack webhook URLs, so keep it as secret as they are. Env:
    VOLTGUARD_ROUTER_CONFIG."""
    router_session_url: str | None = None
    """Link to a session page in pages and messages, ``{session_id}`` replaced (overrides
    the config file's ``session_url``). Env: VOLTGUARD_ROUTER_SESSION_URL."""
    router_group_id: str = "voltguard-router"
    """Consumer group of the alert router; a non-default group gets its own delivery record
    (and so delivers everything again). Env: VOLTGUARD_ROUTER_GROUP_ID."""
    router_max_attempts: int = 5
    """HTTP attempts per delivery before it is recorded as failed (and dead-lettered).
    Env: VOLTGUARD_ROUTER_MAX_ATTEMPTS."""
    router_backoff_base_s: float = 0.5
    """First retry's backoff ceiling in seconds, doubling per attempt (full jitter); a
    Retry-After header waits at least that long. Env: VOLTGUARD_ROUTER_BACKOFF_BASE_S."""
    router_backoff_max_s: float = 30.0
    """Cap of one backoff in seconds. Env: VOLTGUARD_ROUTER_BACKOFF_MAX_S."""
    router_request_timeout_s: float = 10.0
    """Timeout of one HTTP request in seconds. Env: VOLTGUARD_ROUTER_REQUEST_TIMEOUT_S."""
    router_delivery_deadline_s: float = 60.0
    """Budget in seconds of one delivery (rate-limit waits, attempts and backoffs), after
    which it is failed: a slow destination holds a batch at most this long. Env:
    VOLTGUARD_ROUTER_DELIVERY_DEADLINE_S."""
    api_token: Secret = field(default_factory=lambda: Secret(""))
    """Bearer token of the operator API (every ``/v1`` request); required by ``voltguard
    api``. Compared in constant time, never logged. Env: VOLTGUARD_API_TOKEN."""
    api_addr: str = "127.0.0.1"
    """Address the operator API listens on (0.0.0.0 in a container). Env: VOLTGUARD_API_ADDR."""
    api_port: int = 8088
    """Port of the operator API. Env: VOLTGUARD_API_PORT."""
    api_db: str = "./voltguard-api.sqlite3"
    """SQLite file of the operator API's view, with the consumed positions (a restart resumes
    from them); ``:memory:`` rebuilds the view from the topics at every start (bounded by
    their retention). One file per API instance. Env: VOLTGUARD_API_DB."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``VOLTGUARD_*`` variables, then apply ``overrides``.

        ``overrides`` whose value is None are ignored (convenient for click options).

        >>> s = Settings.from_env({"VOLTGUARD_BOOTSTRAP_SERVERS": "k:9093",
        ...                        "VOLTGUARD_INGEST_BATCH_MAX": "100"})
        >>> s.kafka.bootstrap_servers, s.ingest_batch_max
        ('k:9093', 100)
        >>> Settings.from_env({"VOLTGUARD_INGEST_BATCH_MAX": "many"})
        Traceback (most recent call last):
        ...
        streams.settings.ConfigError: ingest_batch_max (env VOLTGUARD_INGEST_BATCH_MAX): 'many' is not a valid int
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "kafka":
                continue
            raw = env.get(f"VOLTGUARD_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.name, f"VOLTGUARD_{f.name.upper()}", f.type, raw)
        kafka_values: dict[str, Any] = {}
        for f in dataclasses.fields(KafkaSettings):
            var = (
                "VOLTGUARD_BOOTSTRAP_SERVERS"
                if f.name == "bootstrap_servers"
                else f"VOLTGUARD_KAFKA_{f.name.upper()}"
            )
            raw = env.get(var)
            if raw is not None:
                kafka_values[f.name] = _convert(f.name, var, f.type, raw)
        if overrides.get("bootstrap_servers") is not None:
            kafka_values["bootstrap_servers"] = overrides["bootstrap_servers"]
        for key, value in overrides.items():
            if key == "bootstrap_servers" or value is None:
                continue
            if key == "hash_secret" and isinstance(value, str):
                value = Secret(value)
            values[key] = value
        settings = cls(kafka=KafkaSettings(**kafka_values), **values)
        settings.check()
        return settings

    def check(self) -> None:
        """Fail early on values that cannot work."""
        if self.ingest_batch_max < 1:
            raise ConfigError(
                "ingest_batch_max (env VOLTGUARD_INGEST_BATCH_MAX): must be at least 1"
            )
        if self.router_max_attempts < 1:
            raise ConfigError(
                "router_max_attempts (env VOLTGUARD_ROUTER_MAX_ATTEMPTS): must be at least 1"
            )
        if self.router_delivery_deadline_s <= 0 or self.router_request_timeout_s <= 0:
            raise ConfigError(
                "router_delivery_deadline_s / router_request_timeout_s (env "
                "VOLTGUARD_ROUTER_DELIVERY_DEADLINE_S / VOLTGUARD_ROUTER_REQUEST_TIMEOUT_S): "
                "must be positive"
            )
        if not 1 <= self.webhook_tolerance_s <= 3600:
            raise ConfigError(
                "webhook_tolerance_s (env VOLTGUARD_WEBHOOK_TOLERANCE_S): must be 1 to 3600 "
                "seconds (it cannot be disabled)"
            )
        if self.ingress_max_body_bytes < 1024 or self.ingress_dedupe_ids < 1:
            raise ConfigError(
                "ingress_max_body_bytes (env VOLTGUARD_INGRESS_MAX_BODY_BYTES) must be at least "
                "1024 and ingress_dedupe_ids (env VOLTGUARD_INGRESS_DEDUPE_IDS) at least 1"
            )
        if not self.kafka.bootstrap_servers:
            raise ConfigError("bootstrap_servers (env VOLTGUARD_BOOTSTRAP_SERVERS): empty")
        self.kafka.check()

    def reconciliation_config(self) -> ReconciliationConfig:
        """The grace periods as :class:`billing.reconciliation.ReconciliationConfig`."""
        try:
            return ReconciliationConfig(
                bill_grace_s=self.bill_grace_s,
                payment_grace_s=self.payment_grace_s,
                unpaid_grace_s=self.unpaid_grace_s,
                orphan_grace_s=self.orphan_grace_s,
                auth_validity_s=self.auth_validity_s,
                sample_retention_s=self.sample_retention_s,
                retention_s=self.case_retention_s,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def stripe_secrets(self) -> list[str]:
        """The active Stripe webhook secrets (comma-separated setting, blanks dropped)."""
        return [s.strip() for s in self.stripe_webhook_secrets.get().split(",") if s.strip()]

    def require_hash_secret(self) -> bytes:
        """The hash secret as bytes, or a :class:`ConfigError` saying how to set it."""
        if not self.hash_secret:
            raise ConfigError(
                "hash_secret (env VOLTGUARD_HASH_SECRET): required to hash tokens at ingest; "
                "set it to a long random value and keep it stable (hashes must stay comparable)"
            )
        return self.hash_secret.get().encode()


def _convert(name: str, var: str, type_: Any, raw: str) -> Any:
    text = str(type_)
    try:
        if "Secret" in text:
            return Secret(raw)
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
    except ValueError:
        kind = "int" if text.startswith("int") else "float"
        raise ConfigError(f"{name} (env {var}): {raw!r} is not a valid {kind}") from None
    return raw
