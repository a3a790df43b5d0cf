"""The topic catalog: every topic voltguard reads or writes, declared once.

No other module spells a topic name; they all come from here. Names follow
``voltguard.<entity>.<event>.v<N>``; a breaking change of a record bumps ``vN``.

Co-partitioning: everything keyed by ``session_id`` shares :data:`SESSION_PARTITIONS`, so a
session's events, readings and payments land on the same partition number and one table
(and its changelog) holds the whole picture.

Examples
--------
>>> CATALOG["meter_readings"].name
'voltguard.meter.readings.v1'
>>> CATALOG["stations"].compacted
True
>>> sorted({t.partitions for t in CATALOG.values() if t.key == "session_id"})
[6]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from topics import records

__all__ = ["CATALOG", "CLOCK_KEY", "SESSION_PARTITIONS", "TopicSpec", "changelog_spec", "topic"]

SESSION_PARTITIONS = 6
"""Partitions of every topic keyed by session_id (and of their tables' changelogs)."""

DAY_MS = 24 * 3600 * 1000

CLOCK_KEY = b"\x00clock"
"""Key of the clock ticks (:class:`~topics.records.ClockTick`) that the ingest interleaves
into every partition of the session events, meter readings and payment events topics, in
order with the records it wrote before them. Readers of those topics skip this key; the
billing stage takes its event-time watermark from it."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: name, key, record, partitions, retention or compaction, and purpose."""

    name: str
    key: str
    record: type | None
    partitions: int
    purpose: str
    retention_ms: int | None = 7 * DAY_MS
    compacted: bool = False
    configs: dict[str, str] = field(default_factory=dict)

    def topic_configs(self) -> dict[str, str]:
        """Broker configs for creating the topic."""
        out = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None and not self.compacted:
            out["retention.ms"] = str(self.retention_ms)
        out.update(self.configs)
        return out


def _spec(short: str, **kw: object) -> tuple[str, TopicSpec]:
    return short, TopicSpec(**kw)  # type: ignore[arg-type]


CATALOG: dict[str, TopicSpec] = dict(
    [
        # ---- inputs from the outside world (untrusted; ingest validates them)
        _spec(
            "ocpp_frames",
            name="voltguard.ocpp.frames.v1",
            key="station_id",
            record=records.OcppFrame,
            partitions=SESSION_PARTITIONS,
            purpose="OCPP-J frames (both directions) forwarded by the CSMS, with station id and receive time",
        ),
        _spec(
            "csms_session_events",
            name="voltguard.csms.session-events.v1",
            key="session_id",
            record=records.SessionEvent,
            partitions=SESSION_PARTITIONS,
            purpose="canonical session events produced directly by a CSMS (validated by ingest)",
        ),
        _spec(
            "csms_meter_readings",
            name="voltguard.csms.meter-readings.v1",
            key="session_id",
            record=records.MeterReading,
            partitions=SESSION_PARTITIONS,
            purpose="canonical meter readings produced directly by a CSMS (validated by ingest)",
        ),
        _spec(
            "psp_payment_events",
            name="voltguard.psp.payment-events.v1",
            key="session_id",
            record=records.PaymentEvent,
            partitions=SESSION_PARTITIONS,
            purpose="payment events from the webhook API and gateways (validated by ingest)",
        ),
        _spec(
            "psp_raw_webhooks",
            name="voltguard.psp.raw-webhooks.v1",
            key="psp_event_id",
            record=None,
            partitions=SESSION_PARTITIONS,
            retention_ms=30 * DAY_MS,
            purpose="audit: every verified PSP notification as received (raw body, headers "
            "that are not secrets, PSP, event id, received time), written by the ingress",
        ),
        # ---- validated canonical streams (keyed by session_id, co-partitioned)
        _spec(
            "session_events",
            name="voltguard.session.events.v1",
            key="session_id",
            record=records.SessionEvent,
            partitions=SESSION_PARTITIONS,
            purpose="validated session lifecycle events, tokens hashed",
        ),
        _spec(
            "meter_readings",
            name="voltguard.meter.readings.v1",
            key="session_id",
            record=records.MeterReading,
            partitions=SESSION_PARTITIONS,
            purpose="validated meter readings, one per sample timestamp",
        ),
        _spec(
            "payment_events",
            name="voltguard.payment.events.v1",
            key="session_id",
            record=records.PaymentEvent,
            partitions=SESSION_PARTITIONS,
            purpose="validated payment events; key is payment_id when the session is unknown",
        ),
        # ---- reference data (compacted, read whole by every worker)
        _spec(
            "stations",
            name="voltguard.reference.stations.v1",
            key="station_id",
            record=records.Station,
            partitions=1,
            compacted=True,
            retention_ms=None,
            purpose="stations: location, connectors and max power, tariff id",
        ),
        _spec(
            "tariffs",
            name="voltguard.reference.tariffs.v1",
            key="tariff_id",
            record=records.Tariff,
            partitions=1,
            compacted=True,
            retention_ms=None,
            purpose="OCPI 2.2.1 tariffs",
        ),
        # ---- outputs
        _spec(
            "session_bills",
            name="voltguard.session.bills.v1",
            key="session_id",
            record=records.SessionBill,
            partitions=SESSION_PARTITIONS,
            retention_ms=30 * DAY_MS,
            purpose="rated sessions with their bill lines",
        ),
        _spec(
            "reconciliation",
            name="voltguard.reconciliation.results.v1",
            key="session_id",
            record=records.ReconciliationResult,
            partitions=SESSION_PARTITIONS,
            retention_ms=30 * DAY_MS,
            purpose="every reconciliation outcome and correction",
        ),
        _spec(
            "reconciliation_mismatches",
            name="voltguard.reconciliation.mismatches.v1",
            key="session_id",
            record=records.ReconciliationResult,
            partitions=SESSION_PARTITIONS,
            retention_ms=30 * DAY_MS,
            purpose="reconciliation outcomes other than matched",
        ),
        _spec(
            "fraud_alerts",
            name="voltguard.fraud.alerts.v1",
            key="alert_id",
            record=records.FraudAlert,
            partitions=SESSION_PARTITIONS,
            retention_ms=30 * DAY_MS,
            purpose="explained fraud alerts, deterministic ids",
        ),
        _spec(
            "alert_deliveries",
            name="voltguard.alert.deliveries.v1",
            key="notice key (alert or result id)|destination|action",
            record=None,
            partitions=SESSION_PARTITIONS,
            compacted=True,
            retention_ms=None,
            purpose="the alert router's record of deliveries (status per alert, destination and "
            "action), its changelog: partition = the input's (co-partitioned with fraud_alerts "
            "and reconciliation_mismatches)",
        ),
        _spec(
            "session_features",
            name="voltguard.session.features.v1",
            key="session_id",
            record=records.SessionFeatures,
            partitions=SESSION_PARTITIONS,
            retention_ms=90 * DAY_MS,
            purpose="feature vector per ended session, for retraining",
        ),
        _spec(
            "alert_labels",
            name="voltguard.alert.labels.v1",
            key="alert_id",
            record=records.AlertLabel,
            partitions=1,
            compacted=True,
            retention_ms=None,
            purpose="analyst labels on alerts (latest per alert)",
        ),
        _spec(
            "model_updates",
            name="voltguard.model.updates.v1",
            key="model_name",
            record=records.ModelUpdate,
            partitions=1,
            compacted=True,
            retention_ms=None,
            purpose="model registry announcements; workers reload on a new version",
        ),
        _spec(
            "dead_letters",
            name="voltguard.deadletter.v1",
            key="original_topic",
            record=records.DeadLetter,
            partitions=1,
            retention_ms=30 * DAY_MS,
            purpose="rejected input with original bytes, source topic/partition/offset and reason",
        ),
        # ---- simulator ground truth
        _spec(
            "sim_labels",
            name="voltguard.sim.labels.v1",
            key="subject_id",
            record=None,
            partitions=1,
            retention_ms=30 * DAY_MS,
            purpose="simulator ground truth: injected fault or oddity, its subject and event ids",
        ),
        # ---- internal state
        _spec(
            "ocpp_pending_calls",
            name="voltguard.ingest.ocpp-pending-calls.v1",
            key="station_id|unique_id",
            record=None,
            partitions=SESSION_PARTITIONS,
            compacted=True,
            retention_ms=None,
            purpose="changelog of OCPP calls awaiting their CALLRESULT (co-partitioned with ocpp_frames)",
        ),
        _spec(
            "billing_state",
            name="voltguard.billing.cases.v1",
            key="session_id",
            record=None,
            partitions=SESSION_PARTITIONS,
            compacted=True,
            retention_ms=None,
            purpose="changelog of billing cases (session state, payments, last results) and the watermark",
        ),
        _spec(
            "detection_keyed",
            name="voltguard.detection.keyed.v1",
            key="entity (token:<hash>, station:<id>, terminal:<id>, session:<id>)",
            record=None,
            partitions=SESSION_PARTITIONS,
            retention_ms=7 * DAY_MS,
            purpose="detection repartition (group_by): session features and payments re-keyed "
            "by the token, station or terminal whose rules keep state",
        ),
        _spec(
            "detection_state",
            name="voltguard.detection.state.v1",
            key="entity",
            record=None,
            partitions=SESSION_PARTITIONS,
            compacted=True,
            retention_ms=None,
            purpose="changelog of detection state per entity (token histories, station "
            "baselines, terminal windows, alerted ids; co-partitioned with detection_keyed)",
        ),
    ]
)


def changelog_spec(short: str, group_id: str, default_group: str) -> TopicSpec:
    """The changelog topic of a stage's state for one consumer group.

    State belongs to a consumer group (as a Kafka Streams store belongs to its application
    id): the default group uses the catalog's name, any other group gets its own topic, so
    two groups reading the same input never restore each other's state.

    >>> changelog_spec("billing_state", "voltguard-billing", "voltguard-billing").name
    'voltguard.billing.cases.v1'
    >>> changelog_spec("billing_state", "audit", "voltguard-billing").name
    'voltguard.billing.cases.v1.audit'
    """
    spec = CATALOG[short]
    if group_id == default_group:
        return spec
    return dataclasses.replace(spec, name=f"{spec.name}.{group_id}")


def topic(short: str) -> str:
    """The real name of a topic from its short name.

    >>> topic("dead_letters")
    'voltguard.deadletter.v1'
    """
    return CATALOG[short].name
