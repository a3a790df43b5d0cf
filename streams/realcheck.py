"""Real-data check: public session exports through import, replay and the fraud rules.

``python -m streams.realcheck DATA_DIR`` (or ``make backtest-real DATA=...``) imports each
dataset of ``DATA_DIR`` (the layout of the shared ``real-sessions`` folder: one folder per
dataset) with its shipped column mapping, replays the events with detection and prints per
dataset: sessions, sessions flagged, the alert rate, the alert kinds with an example
explanation, and the reconciliation outcomes. These sessions are real and almost all
honest, so the alert rate is a false-positive rate, with real oddities among the alerts.

The exports carry no station reference data, and a rule without it is blind: energy above
what the connector can deliver needs the connector's power. :data:`DATASETS` therefore
states, per dataset, where the power comes from (a column naming the charger model or plug
type, else the ceiling of the charger class the dataset documents) and builds a
:class:`~topics.records.Station` per station id, as an operator's station list would give.
Locations are not in the exports, but most name a site (a hub, a car park, a garage, an
address). Positions are therefore schematic: the stations of one site share a point, sites
sit on a grid at least 0.25 km apart (more than ``RuleConfig.overlap_min_km``, so the
clone rule can tell "same site" from "elsewhere") and all within a 3.5 km square, closer than
``RuleConfig.travel_min_km``, so the travel rule, which needs real distances, stays silent
(it is not judged here). No tariffs either: the sessions are "unrated" and the check is
about fraud alerts.

Nothing here reads the shared folder at import time; tests run it on the samples in
``tests/fixtures/real_sessions``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click
import msgspec
import orjson

from streams.replay import Line, Replay
from topics.adapters.csv_sessions import (
    ImportedSession,
    RawRow,
    import_rows,
    load_shipped_mapping,
    read_rows,
)
from topics.codec import encode
from topics.records import Connector, MeterReading, SessionEvent, Station

__all__ = ["DATASETS", "DatasetCheck", "RealDataset", "check_files", "main"]

_SHORT: Final = {SessionEvent: "csms_session_events", MeterReading: "csms_meter_readings"}

PowerRule = Callable[[Mapping[str, str]], int | None]
"""The connector power (W) a raw CSV row tells, or None when it tells nothing."""

_KW = re.compile(r"(\d+(?:\.\d+)?)\s*kW", re.IGNORECASE)


def _apt_model(row: Mapping[str, str]) -> int | None:
    """ChargePlace Scotland's Model column: "APT 7kW Dual Outlet", "APT 50kW Raption",
    "APT Triple Rapid Charger" (50 kW DC, 43 kW AC)."""
    model = row.get("Model") or ""
    found = _KW.search(model)
    if found:
        return int(float(found.group(1)) * 1000)
    return 50_000 if "rapid" in model.lower() else None


_BELIB_PLUGS: Final = {"TE": 3_700, "T2": 22_000, "T3": 22_000, "CCS": 50_000, "CHADEMO": 50_000}
"""Belib plug types: a type E household socket (16 A), type 2 and 3 AC sockets (22 kW)
and the 50 kW DC plugs of the fast chargers."""


def _belib_plug(row: Mapping[str, str]) -> int | None:
    return _BELIB_PLUGS.get((row.get("Type de prise") or "").strip().upper())


@dataclass(frozen=True, slots=True)
class RealDataset:
    """Where a dataset lives in the data folder and what its stations can deliver."""

    mapping: str
    pattern: str
    """Glob of its session files inside the data folder."""
    timezone: str
    town: tuple[float, float]
    """Where every station is placed (the exports give no station locations)."""
    default_power_w: int
    """Connector power when the row tells none: the ceiling of the dataset's charger class."""
    power_source: str
    row_power: PowerRule | None = None
    site_column: str | None = None
    """The column naming a station's site (None: each station is its own site)."""


DATASETS: Final = {
    "dundee": RealDataset(
        "dundee", "dundee/*.csv", "Europe/London", (56.462, -2.971), 50_000,
        "Model column (APT 7/22/50 kW, Triple Rapid = 50 kW); else 50 kW, the largest post",
        _apt_model, "Site",
    ),
    "perth_kinross": RealDataset(
        "perth_kinross", "perth_kinross/*.csv", "Europe/London", (56.396, -3.437), 50_000,
        "Model column (as Dundee); else 50 kW", _apt_model, "Site",
    ),
    "boulder": RealDataset(
        "boulder", "boulder/boulder_sessions_*.csv", "America/Denver", (40.015, -105.270),
        19_200, "all ports Level 2 (Port_Type); 19.2 kW is the SAE J1772 Level 2 ceiling",
        None, "Address",
    ),
    "norway_residential": RealDataset(
        "norway_residential", "norway_residential/*.csv", "Europe/Oslo", (59.911, 10.750),
        22_000, "garage chargers (Mode 3 AC); 22 kW is the three-phase AC ceiling",
    ),
    "paris_belib": RealDataset(
        "paris_belib", "paris_belib/*.csv", "Europe/Paris", (48.857, 2.352), 50_000,
        "plug type (TE 3.7 kW, T2/T3 22 kW, CCS/CHAdeMO 50 kW); a station's largest plug",
        _belib_plug, "Station",
    ),
    "workplace_dataverse": RealDataset(
        "workplace_dataverse", "workplace_dataverse/*.csv", "UTC", (42.0, -71.0), 19_200,
        "workplace Level 2 stations; 19.2 kW is the SAE J1772 Level 2 ceiling",
        None, "locationId",
    ),
}  # fmt: skip
"""The six datasets with a shipped mapping (acn_caltech_jpl and palo_alto have none)."""


@dataclass(slots=True)
class DatasetCheck:
    """What one dataset gave: counts, alerts by kind with an example, outcomes."""

    name: str
    files: int = 0
    rows: int = 0
    sessions: int = 0
    rejected: int = 0
    stations: int = 0
    sessions_featured: int = 0
    flagged_sessions: set[str] = field(default_factory=set)
    alert_kinds: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    alert_stations: dict[str, Counter[str]] = field(default_factory=dict)
    """Alert kind -> how many of its alerts each station had (where they concentrate)."""
    station_power_w: dict[str, int] = field(default_factory=dict)

    @property
    def alert_rate(self) -> float:
        """Share of imported sessions that some alert is about."""
        return len(self.flagged_sessions) / self.sessions if self.sessions else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "files": self.files,
            "rows": self.rows,
            "sessions": self.sessions,
            "rejected_rows": self.rejected,
            "stations": self.stations,
            "sessions_featured": self.sessions_featured,
            "sessions_flagged": len(self.flagged_sessions),
            "alert_rate": self.alert_rate,
            "alert_kinds": dict(self.alert_kinds.most_common()),
            "examples": self.examples,
            "outcomes": dict(self.outcomes.most_common()),
            "top_stations": {
                kind: [
                    {"station_id": sid, "alerts": n, "power_kw": self.station_power_w[sid] / 1000}
                    for sid, n in counts.most_common(3)
                ]
                for kind, counts in self.alert_stations.items()
            },
        }


def _rows_kept(rows: Iterable[RawRow], keep: dict[int, dict[str, str]]) -> Iterator[RawRow]:
    for row in rows:
        keep[row.line_no] = row.fields
        yield row


def _event_time(line: Line) -> str:
    doc = orjson.loads(line[2])
    stamp = doc.get("event_time", "")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC).isoformat()


def check_files(
    name: str, files: Sequence[Path], *, hash_secret: bytes = b"realcheck"
) -> DatasetCheck:
    """Import ``files`` with dataset ``name``'s mapping, replay them with detection."""
    spec = DATASETS[name]
    mapping = load_shipped_mapping(spec.mapping)
    check = DatasetCheck(name, files=len(files))
    power: dict[str, int] = {}
    sites: dict[str, str] = {}
    events: list[Line] = []
    for path in files:
        raw: dict[int, dict[str, str]] = {}
        with path.open(encoding=mapping.encoding, newline="") as fh:
            for result in import_rows(
                _rows_kept(read_rows(fh, mapping), raw), mapping, hash_secret=hash_secret
            ):
                check.rows += 1
                if not isinstance(result, ImportedSession):
                    check.rejected += 1
                    continue
                check.sessions += 1
                fields = raw.pop(result.line_no, {})
                told = spec.row_power(fields) if spec.row_power else None
                site = fields.get(spec.site_column, "") if spec.site_column else ""
                sites.setdefault(result.station_id, site.strip() or result.station_id)
                watts = told or spec.default_power_w
                power[result.station_id] = max(power.get(result.station_id, 0), watts)
                for event in result.events:
                    short = _SHORT[type(event)]
                    events.append((short, result.session_id, encode(event)))
    check.stations = len(power)
    check.station_power_w = power
    where = _schematic_positions(sorted(set(sites.values())), spec.town)
    lines: list[Line] = [
        ("stations", sid, encode(_station(sid, watts, spec, where[sites[sid]])))
        for sid, watts in sorted(power.items())
    ]
    # The exports are in no particular time order; the replay (like the worker) wants it.
    events.sort(key=_event_time)
    run = Replay.with_detection(hash_secret=hash_secret).run([*lines, *events])
    check.sessions_featured = len(run.features)
    check.outcomes.update(r.outcome for r in run.results.values())
    assert run.detection is not None
    for alert in sorted(run.detection.alerts.values(), key=lambda a: (a.event_time, a.alert_id)):
        check.alert_kinds[alert.kind] += 1
        check.examples.setdefault(alert.kind, alert.explanation)
        if alert.station_id:
            check.alert_stations.setdefault(alert.kind, Counter())[alert.station_id] += 1
        about = [alert.session_id] if alert.session_id else []
        listed = alert.evidence.get("sessions")
        if isinstance(listed, list):
            about += [str(s) for s in listed]
        check.flagged_sessions.update(about)
    return check


_SITE_SPACING_KM: Final = 0.25
_SQUARE_KM: Final = 3.5
"""Its diagonal (4.95 km) stays below the travel rule's 5 km minimum."""


def _schematic_positions(
    sites: Sequence[str], town: tuple[float, float]
) -> dict[str, tuple[float, float]]:
    """Grid points for the sites: >= 0.25 km apart, all inside a 3.5 km square.

    >>> p = _schematic_positions(["a", "b"], (56.0, -3.0))
    >>> from models.rules import km_between
    >>> round(km_between(*p["a"], *p["b"]), 2)
    0.25
    """
    side = max(1, math.ceil(math.sqrt(len(sites))))
    if (side - 1) * _SITE_SPACING_KM > _SQUARE_KM:
        raise ValueError(f"{len(sites)} sites do not fit the schematic grid")
    km_lat = 1 / 111.2
    km_lon = km_lat / math.cos(math.radians(town[0]))
    return {
        site: (
            town[0] + (i // side) * _SITE_SPACING_KM * km_lat,
            town[1] + (i % side) * _SITE_SPACING_KM * km_lon,
        )
        for i, site in enumerate(sites)
    }


def _station(station_id: str, watts: int, spec: RealDataset, at: tuple[float, float]) -> Station:
    return Station(
        event_id=f"realcheck-station-{station_id}"[:256],
        event_time=datetime(2000, 1, 1, tzinfo=UTC),
        source="voltguard-realcheck",
        station_id=station_id,
        lat=at[0],
        lon=at[1],
        timezone=spec.timezone,
        tariff_id="unknown",
        connectors=[
            Connector(
                evse_id=1, connector_id=1, standard="unknown",
                power_type="DC" if watts >= 50_000 else "AC_3_PHASE", max_power_w=watts,
            )
        ],
    )  # fmt: skip


def _text(checks: list[DatasetCheck]) -> Iterator[str]:
    yield (
        f"{'dataset':<20} {'sessions':>8} {'rejected':>8} {'featured':>8} {'flagged':>7} "
        f"{'alert rate':>10}"
    )
    for c in checks:
        yield (
            f"{c.name:<20} {c.sessions:>8} {c.rejected:>8} {c.sessions_featured:>8} "
            f"{len(c.flagged_sessions):>7} {c.alert_rate:>10.3%}"
        )
    for c in checks:
        yield f"{c.name}: power from {DATASETS[c.name].power_source}"
        for kind, n in c.alert_kinds.most_common():
            yield f"  {kind:<32} {n:>5}  e.g. {c.examples[kind]}"
            top = ", ".join(
                f"{sid} ({c.station_power_w[sid] / 1000:g} kW) {k}"
                for sid, k in c.alert_stations.get(kind, Counter()).most_common(3)
            )
            yield f"  {'':<32}        top stations: {top}"
        yield "  reconciliation: " + ", ".join(f"{k} {n}" for k, n in c.outcomes.most_common())


@click.command("realcheck")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--datasets",
    envvar="VOLTGUARD_REALCHECK_DATASETS",
    show_envvar=True,
    default=",".join(DATASETS),
    show_default=True,
    help="Comma-separated dataset names (folders of DATA_DIR with a shipped mapping).",
)
@click.option(
    "--max-alert-rate",
    envvar="VOLTGUARD_REALCHECK_MAX_ALERT_RATE",
    show_envvar=True,
    type=click.FloatRange(0, 1),
    default=None,
    help="Exit 1 when a dataset's alert rate is above this share (e.g. 0.01).",
)
@click.option(
    "--format",
    "fmt",
    envvar="VOLTGUARD_REALCHECK_FORMAT",
    show_envvar=True,
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="A table with examples, or one JSON document.",
)
def main(data_dir: Path, datasets: str, max_alert_rate: float | None, fmt: str) -> None:
    """Import, replay and count the fraud alerts of the real datasets in DATA_DIR."""
    names = [n.strip() for n in datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; known: {', '.join(DATASETS)}")
    checks = []
    for name in names:
        files = sorted(data_dir.glob(DATASETS[name].pattern))
        if not files:
            raise click.ClickException(f"{data_dir}/{DATASETS[name].pattern}: no files")
        checks.append(check_files(name, files))
    if fmt == "json":
        click.echo(msgspec.json.encode([c.as_dict() for c in checks]).decode())
    else:
        for line in _text(checks):
            click.echo(line)
    if max_alert_rate is not None and any(c.alert_rate > max_alert_rate for c in checks):
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
