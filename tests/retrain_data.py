"""Synthetic session features with labelled fraud, for the retraining tests (seeded).

Ordinary sessions draw energy, duration, power and price from plausible ranges; a fraud
session has one of three signatures: energy above what the connector can deliver, a price
per kWh far below the tariff, or a capture larger than the bill. Each signature is mild in
some sessions (so the average precision is high but not 1) and absent from ordinary ones.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from topics.records import SessionFeatures
from topics.simulation.faults import SimLabel

T0 = datetime(2024, 5, 6, tzinfo=UTC)


def synthetic_sessions(
    n: int, *, seed: int = 0, fraud_share: float = 0.05
) -> tuple[list[SessionFeatures], dict[str, int]]:
    """``n`` sessions and their labels (session id -> 1 fraud; ordinary ones unlabelled)."""
    rng = random.Random(seed)
    out, labels = [], {}
    for i in range(n):
        sid = f"s-{seed}-{i:05d}"
        energy = max(0.5, rng.gammavariate(4, 5))
        max_kw = rng.choice([11.0, 22.0, 50.0])
        power = min(max_kw, rng.uniform(0.4, 1.0) * max_kw)
        charging = energy / power * 60
        price_kwh = rng.gauss(45, 4)
        x = {
            "energy_kwh": energy,
            "charging_min": charging,
            "duration_min": charging + rng.expovariate(1 / 20),
            "avg_power_kw": power,
            "connector_max_kw": max_kw,
            "energy_over_capability": energy / (max_kw * (charging + 10) / 60),
            "price_per_kwh_minor": price_kwh,
            "captured_over_price": 1.0 if rng.random() > 0.02 else 0.0,
            "hour_of_day": rng.uniform(0, 24),
            "sample_count": charging,
        }
        if rng.random() < fraud_share:
            labels[sid] = 1
            strength = rng.uniform(0.3, 1.0)
            kind = rng.randrange(3)
            if kind == 0:
                x["energy_over_capability"] = 1.0 + 2 * strength
                x["energy_kwh"] *= 1 + 2 * strength
            elif kind == 1:
                x["price_per_kwh_minor"] = 45 * (1 - 0.8 * strength)
            else:
                x["captured_over_price"] = 1.0 + 2 * strength
        out.append(
            SessionFeatures(
                event_id=f"f-{sid}",
                event_time=T0 + timedelta(minutes=i),
                source="test",
                session_id=sid,
                station_id=f"CP{i % 20}",
                features=x,
            )
        )
    return out, labels


def write_files(
    directory: Path, features: list[SessionFeatures], labels: dict[str, int]
) -> tuple[Path, Path]:
    """features.jsonl (bare SessionFeatures lines, as `voltguard replay --out` writes them)
    and labels.jsonl (simulator lines ``{"topic": "sim_labels", "key", "value": SimLabel}``)."""
    directory.mkdir(parents=True, exist_ok=True)
    enc = msgspec.json.Encoder().encode
    features_path, labels_path = directory / "features.jsonl", directory / "labels.jsonl"
    features_path.write_bytes(b"".join(enc(f) + b"\n" for f in features))
    lines = []
    for sid, value in labels.items():
        label = SimLabel(
            event_id=f"l-{sid}",
            event_time=T0,
            source="test",
            kind="synthetic_fraud",
            subject_type="session",
            subject_id=sid,
            session_id=sid,
            honest=not value,
        )
        lines.append(enc({"topic": "sim_labels", "key": sid, "value": label}) + b"\n")
    labels_path.write_bytes(b"".join(lines))
    return features_path, labels_path
