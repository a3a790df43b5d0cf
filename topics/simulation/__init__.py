"""Seeded fleet and payment traffic simulator with ground truth (``voltguard simulate``).

A pure core: no Kafka, no clock, no environment; randomness only from a
:class:`numpy.random.Generator` tree seeded by ``config.seed``, simulated time from
``config.start``. Same seed and settings give the same bytes.

* :mod:`~topics.simulation.world` - stations, connectors, OCPI tariffs, drivers and tokens.
* :mod:`~topics.simulation.sessions` - arrivals on a daily curve, charging curves, samples.
* :mod:`~topics.simulation.ocpp16`, :mod:`~topics.simulation.ocpp201` - the raw frames a
  CSMS forwards, both directions, as :class:`~topics.records.OcppFrame` envelopes.
* :mod:`~topics.simulation.payments` - PSP flows as :class:`~topics.records.PaymentEvent`.
* :mod:`~topics.simulation.faults` - injected faults, fraud, anomalies and honest oddities,
  each with a :class:`~topics.simulation.faults.SimLabel`.
* :mod:`~topics.simulation.engine` - the run: one event-time-ordered stream of
  ``(topic_short, key, value_bytes)`` records.

Amounts are priced only by :func:`billing.rating.rate_session`: an honest capture is exactly
the rated total of the periods the session's own meter values describe.

The shell (files, Kafka, progress, timing) is :mod:`streams.commands.simulate`.

Examples
--------
>>> cfg = SimulationConfig(seed=1, sessions=4, stations=3, sample_interval_s=600)
>>> records = list(iter_records(cfg, hash_secret=b"secret"))
>>> sorted({topic for topic, _, _ in records})
['ocpp_frames', 'psp_payment_events', 'stations', 'tariffs']
"""

from topics.simulation.config import DEFAULT_START, SimulationConfig, SimulationConfigError
from topics.simulation.engine import Record, SessionTruth, Simulation, Summary, iter_records
from topics.simulation.faults import (
    ALL_KINDS,
    ANOMALY_KINDS,
    DEFAULT_FAULT_RATES,
    FAULT_KINDS,
    HONEST_KINDS,
    SimLabel,
    is_honest,
)
from topics.simulation.world import Driver, StationProfile, World, build_world

__all__ = [
    "ALL_KINDS",
    "ANOMALY_KINDS",
    "DEFAULT_FAULT_RATES",
    "DEFAULT_START",
    "FAULT_KINDS",
    "HONEST_KINDS",
    "Driver",
    "Record",
    "SessionTruth",
    "SimLabel",
    "Simulation",
    "SimulationConfig",
    "SimulationConfigError",
    "StationProfile",
    "Summary",
    "World",
    "build_world",
    "is_honest",
    "iter_records",
]
