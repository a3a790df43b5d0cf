"""Prometheus metrics of voltguard processes (``voltguard_<area>_<thing>_<unit>``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "ALERTS",
    "ALERT_DELIVERIES",
    "BATCH_SECONDS",
    "BILLING_EVENTS",
    "BILLS",
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "DETECTION_EVENTS",
    "DETECTION_SECONDS",
    "EVENT_TIME",
    "INGEST_EVENTS",
    "INGRESS_REQUESTS",
    "INGRESS_SECONDS",
    "LEAKAGE",
    "MODEL_LOADED",
    "MODEL_VERSION",
    "ONLINE_SCORES",
    "OPEN_SESSIONS",
    "RECONCILIATION_RESULTS",
    "ROUTER_NOTICES",
    "SCORING_SECONDS",
    "STAGE_INPUT",
    "STAGE_OUTPUT",
    "UNRECONCILED",
    "WATERMARK",
    "serve_metrics",
]

INGEST_EVENTS = Counter(
    "voltguard_ingest_events_total",
    "Input messages handled by the ingest, by input topic and outcome "
    "(accepted, pending, ignored, dead_letter).",
    ["topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "voltguard_dead_letters_total",
    "Messages sent to the dead-letter topic, by stage and error type.",
    ["stage", "error"],
)
BILLING_EVENTS = Counter(
    "voltguard_billing_events_total",
    "Input messages handled by billing, by input topic and outcome (accepted, dead_letter).",
    ["topic", "outcome"],
)
BILLS = Counter("voltguard_billing_bills_total", "Session bills published (corrections included).")
RECONCILIATION_RESULTS = Counter(
    "voltguard_reconciliation_results_total",
    "Reconciliation results published (corrections included), by outcome.",
    ["outcome"],
)
OPEN_SESSIONS = Gauge(
    "voltguard_billing_open_sessions", "Sessions started and not yet ended, in this worker."
)
WATERMARK = Gauge(
    "voltguard_billing_watermark_seconds",
    "Event-time watermark of a billing partition (Unix seconds).",
    ["partition"],
)
DETECTION_EVENTS = Counter(
    "voltguard_detection_events_total",
    "Input messages handled by detection, by input topic and outcome (accepted, ignored, "
    "dead_letter); detection_keyed is its own repartition topic.",
    ["topic", "outcome"],
)
ALERTS = Counter(
    "voltguard_fraud_alerts_total",
    "Fraud alerts published (each alert id once), by kind and severity.",
    ["kind", "severity"],
)
ALERT_DELIVERIES = Counter(
    "voltguard_router_deliveries_total",
    "Alert router deliveries by destination, action (trigger, resolve) and status "
    "(delivered, failed).",
    ["destination", "action", "status"],
)
DETECTION_SECONDS = Histogram(
    "voltguard_detection_seconds_per_event",
    "Processing time per input message of a detection batch (rules and scoring, before the "
    "Kafka transaction), seconds.",
    buckets=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3),
)
ONLINE_SCORES = Histogram(
    "voltguard_detection_online_score",
    "Online anomaly score of each newly scored session (0-1, high = unusual).",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
)
MODEL_VERSION = Gauge(
    "voltguard_detection_model_info",
    "1 for the model version a detection worker scores with, by detector (online, offline).",
    ["detector", "version"],
)
BATCH_SECONDS = Histogram(
    "voltguard_stage_batch_seconds",
    "Wall time of one batch of a stage loop: processing plus its Kafka transaction.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


# ----------------------------------------------------------------------------- every stage

STAGE_INPUT = Counter(
    "voltguard_stage_input_records_total",
    "Records a stage loop consumed and committed, by stage and input topic (catalog short "
    "name; clock ticks included). Outcomes per topic are in the stage's own *_events_total.",
    ["stage", "topic"],
)
STAGE_OUTPUT = Counter(
    "voltguard_stage_output_records_total",
    "Records a stage loop produced in committed transactions, by stage and output topic "
    "(catalog short name; changelog and repartition writes included).",
    ["stage", "topic"],
)
CONSUMER_LAG = Gauge(
    "voltguard_consumer_lag_records",
    "Records between a stage's consumer position and the partition's high watermark (last "
    "stable offset under read_committed), sampled every few seconds from the consumer's "
    "cached watermarks, by stage, input topic and partition (only assigned partitions).",
    ["stage", "topic", "partition"],
)
EVENT_TIME = Gauge(
    "voltguard_stage_event_time_seconds",
    "Newest event time a stage has handled (Unix seconds), by stage and topic: the ingest's "
    "latest input time, billing's clock per input topic, detection's clock per channel, "
    "the router's newest alert or mismatch. voltguard_stage_event_time_lag_seconds is now "
    "minus this.",
    ["stage", "topic"],
)


class _EventTimeLag(Collector):
    """``voltguard_stage_event_time_lag_seconds``: wall time minus EVENT_TIME, at scrape time
    (so it grows while a stage is stuck, without the stage doing anything)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "voltguard_stage_event_time_lag_seconds",
            "Wall-clock time minus the newest event time a stage has handled, seconds, by "
            "stage and topic (computed at scrape time from voltguard_stage_event_time_seconds).",
            labels=["stage", "topic"],
        )
        now = time.time()
        for metric in EVENT_TIME.collect():
            for sample in metric.samples:
                family.add_metric(
                    [sample.labels["stage"], sample.labels["topic"]], now - sample.value
                )
        yield family


REGISTRY.register(_EventTimeLag())

# ----------------------------------------------------------------------------- money

LEAKAGE = Gauge(
    "voltguard_reconciliation_leakage_minor_units",
    "Revenue leakage in currency minor units (cents), by currency: the shortfall (-delta) of "
    "the latest published result of every undercharged or missing_payment case of the "
    "partitions this billing worker owns. Counts results published since the partition was "
    "assigned (the changelog does not keep amounts). Sum over workers.",
    ["currency"],
)
UNRECONCILED = Gauge(
    "voltguard_reconciliation_unreconciled_minor_units",
    "Money in currency minor units (cents), by currency, whose latest published result is a "
    "mismatch (|delta| of every outcome other than matched and unrated), for the partitions "
    "this billing worker owns, since they were assigned. Sum over workers.",
    ["currency"],
)

# ----------------------------------------------------------------------------- detection

SCORING_SECONDS = Histogram(
    "voltguard_detection_scoring_seconds",
    "Scoring time per session, seconds, by detector: online (score and learn of one "
    "session) and offline (the batch's score_many call divided by its sessions).",
    ["detector"],
    buckets=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025),
)
MODEL_LOADED = Gauge(
    "voltguard_detection_model_loaded",
    "1 when the detection worker has an offline model in service, else 0 (read at scrape "
    "time from the model follower).",
    ["detector"],
)

# ----------------------------------------------------------------------------- router, ingress

ROUTER_NOTICES = Counter(
    "voltguard_router_notices_total",
    "What the router did with each (notice, destination): delivered, failed, "
    "already_recorded (a restart or republication: not sent again), stale (a reconciliation "
    "revision older than the opposite action delivered: input read again) or unrouted (no "
    "route).",
    ["outcome"],
)
INGRESS_REQUESTS = Counter(
    "voltguard_ingress_requests_total",
    "Payment ingress outcomes by endpoint (stripe, adyen, generic) and outcome: accepted, "
    "duplicate, kafka_error, ignored (per event acknowledged but not mapped) or the "
    "rejection reason (malformed, unauthorized, no_match, tolerance, ...).",
    ["endpoint", "outcome"],
)
INGRESS_SECONDS = Histogram(
    "voltguard_ingress_request_seconds",
    "Payment ingress request handling time (until the reply, Kafka ack included), seconds, "
    "by endpoint and HTTP status class (2xx, 4xx, 5xx).",
    ["endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> None:
    """Expose /metrics on ``addr:port`` from a background thread (0 disables it)."""
    if port:
        start_http_server(port, addr=addr)
