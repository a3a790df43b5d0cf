"""Prometheus metrics of voltguard processes (``voltguard_<area>_<thing>_<unit>``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "ALERTS",
    "ALERT_DELIVERIES",
    "BATCH_SECONDS",
    "BILLING_EVENTS",
    "BILLS",
    "DEAD_LETTERS",
    "DETECTION_EVENTS",
    "DETECTION_SECONDS",
    "INGEST_EVENTS",
    "MODEL_VERSION",
    "ONLINE_SCORES",
    "OPEN_SESSIONS",
    "RECONCILIATION_RESULTS",
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


def serve_metrics(port: int, addr: str = "127.0.0.1") -> None:
    """Expose /metrics on ``addr:port`` from a background thread (0 disables it)."""
    if port:
        start_http_server(port, addr=addr)
