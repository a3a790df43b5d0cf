"""Fleet profile for sizing (``python -m streams.bench fleet``): counted, not assumed.

Two sources:

* real sessions (Caltech ACN-Data JSON exports: ``connectionTime``, ``disconnectTime``,
  ``stationID``): sessions per station and active day, and connection durations;
* the simulator: OCPP frames per session by kind, which with the real durations gives
  the input events a session costs at a meter sample interval.

An OCPP session is, on the wire, one CALL and one CALLRESULT per message: start (or
TransactionEvent Started), one MeterValues per sample interval, stop; both directions are
forwarded to the ingest (see :class:`topics.records.OcppFrame`). So a session of ``d``
seconds sampled every ``i`` seconds costs about ``2 * (d / i + 2)`` frames.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import click
import orjson

from streams.bench_common import percentile, write_json

__all__ = ["bench_fleet", "frames_per_session", "session_profile"]


def _sessions(path: Path) -> list[dict[str, Any]]:
    raw = json.loads(path.read_text())
    return raw["_items"] if isinstance(raw, dict) else raw


def session_profile(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sessions per station and day it was used, and connection durations in minutes.

    >>> rows = [{"stationID": "A", "connectionTime": "Mon, 25 Mar 2019 16:00:00 GMT",
    ...          "disconnectTime": "Mon, 25 Mar 2019 17:00:00 GMT"},
    ...         {"stationID": "A", "connectionTime": "Mon, 25 Mar 2019 18:00:00 GMT",
    ...          "disconnectTime": "Mon, 25 Mar 2019 18:30:00 GMT"}]
    >>> p = session_profile(rows)
    >>> p["sessions"], p["sessions_per_station_active_day"], p["duration_min_p50"]
    (2, 2.0, 45.0)
    """
    durations: list[float] = []
    station_days: Counter[tuple[str, str]] = Counter()
    stations: set[str] = set()
    first: datetime | None = None
    last: datetime | None = None
    for r in rows:
        try:
            start = parsedate_to_datetime(r["connectionTime"])
            end = parsedate_to_datetime(r["disconnectTime"])
        except (KeyError, TypeError, ValueError):
            continue
        if end <= start:
            continue
        durations.append((end - start).total_seconds() / 60)
        station_days[(str(r.get("stationID")), start.date().isoformat())] += 1
        stations.add(str(r.get("stationID")))
        first = start if first is None or start < first else first
        last = start if last is None or start > last else last
    days = ((last.date() - first.date()).days + 1) if first and last else 0
    return {
        "sessions": len(durations),
        "stations": len(stations),
        "span_days": days,
        "sessions_per_station_active_day": round(len(durations) / max(1, len(station_days)), 2),
        "sessions_per_station_calendar_day": round(
            len(durations) / max(1, len(stations) * days), 2
        ),
        "duration_min_mean": round(sum(durations) / max(1, len(durations)), 1),
        "duration_min_p50": round(percentile(durations, 0.5), 1),
        "duration_min_p95": round(percentile(durations, 0.95), 1),
    }


def frames_per_session(duration_s: float, sample_interval_s: float) -> float:
    """OCPP frames (both directions) of one session: start, stop and one MeterValues per
    interval, each a CALL and a CALLRESULT.

    >>> frames_per_session(3600, 60)
    124.0
    """
    return 2 * (duration_s / sample_interval_s + 2)


def _simulated(sessions: int, stations: int) -> dict[str, Any]:
    from streams.commands.simulate import simulate_to_files
    from topics.simulation.config import SimulationConfig

    with tempfile.TemporaryDirectory() as tmp:
        summary = simulate_to_files(
            SimulationConfig(seed=99, sessions=sessions, stations=stations),
            hash_secret=b"fleet-profile",
            out_dir=Path(tmp),
        )
        kinds: Counter[str] = Counter()
        with (Path(tmp) / "frames.jsonl").open("rb") as f:
            for line in f:
                frame = orjson.loads(line)["value"]["frame"]
                kinds["CALLRESULT" if frame[0] == 3 else str(frame[2])] += 1
    return {
        "sessions": summary.sessions,
        "frames": summary.frames,
        "payments": summary.payments,
        "frames_per_session": round(summary.frames / max(1, summary.sessions), 1),
        "payments_per_session": round(summary.payments / max(1, summary.sessions), 2),
        "frames_by_kind": dict(kinds.most_common()),
    }


@click.command("fleet")
@click.argument("exports", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sample-interval", default=60, show_default=True,
              help="Meter sample interval (s) for the events-per-session figure.")  # fmt: skip
@click.option("--sim-sessions", default=1000, show_default=True,
              help="Simulated sessions to count frames of (0: skip).")  # fmt: skip
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")  # fmt: skip
def bench_fleet(
    exports: tuple[Path, ...], sample_interval: int, sim_sessions: int, json_out: Path | None
) -> None:
    """Sessions per charger and day, and input events per session, for sizing.

    EXPORTS: ACN-Data session JSON files (e.g. the Caltech/JPL exports).
    """
    figures: dict[str, Any] = {"sample_interval_s": sample_interval, "real": {}}
    for path in exports:
        p = session_profile(_sessions(path))
        p["frames_per_session_at_mean_duration"] = round(
            frames_per_session(p["duration_min_mean"] * 60, sample_interval)
        )
        figures["real"][path.name] = p
        click.echo(
            f"{path.name}: {p['sessions']:,} sessions at {p['stations']} stations over "
            f"{p['span_days']} days; {p['sessions_per_station_active_day']} sessions per "
            f"station and active day ({p['sessions_per_station_calendar_day']} per calendar "
            f"day); connected {p['duration_min_p50']} min median, {p['duration_min_mean']} "
            f"mean, {p['duration_min_p95']} p95 -> ~{p['frames_per_session_at_mean_duration']} "
            f"OCPP frames per session at {sample_interval} s sampling"
        )
    if sim_sessions:
        s = _simulated(sim_sessions, 80)
        figures["simulator"] = s
        click.echo(
            f"simulator: {s['frames_per_session']} frames and {s['payments_per_session']} "
            f"payment events per session; by kind {s['frames_by_kind']}"
        )
    write_json(figures, json_out)
