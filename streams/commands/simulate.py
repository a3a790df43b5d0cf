"""``voltguard simulate``: a seeded fleet and payment world, to JSONL files or to Kafka.

The pure core (:mod:`topics.simulation`) yields ``(topic_short, key, value_bytes)`` records
in event-time order; this shell writes them to files or produces them to the catalog topics,
times the run and reports a summary. ``--hash-secret`` (``VOLTGUARD_HASH_SECRET``) keys the
token and card hashes in labels and payments; it is never printed.

Files (``--out DIR``): ``frames.jsonl``, ``payments.jsonl``, ``stations.jsonl``,
``tariffs.jsonl`` and ``labels.jsonl``, one ``{"topic": short_name, "key": ..., "value":
<record>}`` per line: the format ``voltguard send`` replays.

Kafka (``--bootstrap-servers``): ``ocpp_frames`` keyed by station id, ``psp_payment_events``
by session id, ``stations``/``tariffs`` by id and ``sim_labels`` by subject id, lz4-compressed
in large batches, paced at ``--rate`` events per second (0: as fast as possible).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import click
import msgspec
from tqdm import tqdm

from topics.catalog import CATALOG
from topics.simulation.config import SimulationConfig, SimulationConfigError
from topics.simulation.engine import Record, Simulation, Summary
from topics.simulation.faults import ALL_KINDS

__all__ = ["FILES", "produce_to_kafka", "simulate", "simulate_to_files"]

log = logging.getLogger(__name__)

FILES = {
    "ocpp_frames": "frames.jsonl",
    "psp_payment_events": "payments.jsonl",
    "stations": "stations.jsonl",
    "tariffs": "tariffs.jsonl",
    "sim_labels": "labels.jsonl",
}
"""Output file of each topic in ``--out`` mode."""

_PROGRESS_EVERY = 4096
_encode_key = msgspec.json.Encoder().encode


def _progress_bar(sim: Simulation, enabled: bool) -> tqdm | None:
    if not enabled:
        return None
    return tqdm(
        total=sim.planned_sessions, unit="session", desc="simulate", file=sys.stderr, leave=False
    )


def _tick(bar: tqdm | None, sim: Simulation) -> None:
    if bar is not None:
        done, _ = sim.progress()
        bar.update(done - bar.n)


def _counted(sim: Simulation, bar: tqdm | None) -> Iterator[Record]:
    for n, record in enumerate(sim.records(), 1):
        yield record
        if n % _PROGRESS_EVERY == 0:
            _tick(bar, sim)
    _tick(bar, sim)


def simulate_to_files(
    config: SimulationConfig,
    *,
    hash_secret: bytes,
    out_dir: Path,
    progress: bool = False,
) -> Summary:
    """Run a simulation and write its records as JSONL files into ``out_dir``.

    Parameters
    ----------
    config
        The run's settings.
    hash_secret
        Key of token and card hashes.
    out_dir
        Directory for the files of :data:`FILES` (created; existing files are replaced).
    progress
        Show a tqdm progress bar on stderr.

    Returns
    -------
    Summary
        Counts, and the wall-clock time of the run.

    Examples
    --------
    >>> import tempfile
    >>> cfg = SimulationConfig(seed=1, sessions=3, stations=2, sample_interval_s=900)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     s = simulate_to_files(cfg, hash_secret=b"k", out_dir=Path(tmp))
    ...     sorted(p.name for p in Path(tmp).iterdir())
    ['frames.jsonl', 'labels.jsonl', 'payments.jsonl', 'stations.jsonl', 'tariffs.jsonl']
    >>> s.sessions
    3
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = Simulation(config, hash_secret=hash_secret)
    bar = _progress_bar(sim, progress)
    handles: dict[str, BinaryIO] = {}
    prefixes = {t: b'{"topic":"' + t.encode() + b'","key":' for t in FILES}
    started = time.perf_counter()
    try:
        for topic, name in FILES.items():
            handles[topic] = (out_dir / name).open("wb", buffering=1 << 20)
        writers = {t: h.write for t, h in handles.items()}
        for topic, key, value in _counted(sim, bar):
            writers[topic](
                b"".join((prefixes[topic], _encode_key(key), b',"value":', value, b"}\n"))
            )
    finally:
        for handle in handles.values():
            handle.close()
        if bar is not None:
            bar.close()
    sim.summary.elapsed_s = time.perf_counter() - started
    return sim.summary


def produce_to_kafka(
    config: SimulationConfig,
    *,
    hash_secret: bytes,
    bootstrap_servers: str,
    rate: float = 0.0,
    progress: bool = False,
    producer_config: dict[str, Any] | None = None,
    producer_factory: Callable[[dict[str, Any]], Any] | None = None,
    flush_timeout_s: float = 120.0,
) -> Summary:
    """Run a simulation and produce its records to the catalog topics.

    Parameters
    ----------
    config
        The run's settings.
    hash_secret
        Key of token and card hashes.
    bootstrap_servers
        Kafka bootstrap servers.
    rate
        Target events per second (frames, payments and labels alike); 0 = unpaced.
    progress
        Show a tqdm progress bar on stderr.
    producer_config
        Extra librdkafka settings, applied over the defaults (lz4, 10 ms linger, 1 MB
        batches, idempotence).
    producer_factory
        Builds the producer from its config (default :class:`confluent_kafka.Producer`);
        tests pass a fake.
    flush_timeout_s
        How long the final flush may take.

    Raises
    ------
    RuntimeError
        Messages could not be delivered, or were still queued after the flush timeout.
    """
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "compression.type": "lz4",
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": True,
        "on_delivery": on_delivery,
    }
    conf.update(producer_config or {})
    if producer_factory is None:
        from confluent_kafka import Producer

        producer_factory = Producer
    producer = producer_factory(conf)
    names = {short: CATALOG[short].name for short in FILES}
    sim = Simulation(config, hash_secret=hash_secret)
    bar = _progress_bar(sim, progress)
    started = time.perf_counter()
    sent = 0
    produce, poll = producer.produce, producer.poll
    try:
        for topic, key, value in _counted(sim, bar):
            name = names[topic]
            kbytes = key.encode()
            while True:
                try:
                    produce(name, value, kbytes)
                    break
                except BufferError:
                    poll(0.05)
            sent += 1
            if sent % 1000 == 0:
                poll(0)
                if rate > 0:
                    ahead = sent / rate - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        remaining = producer.flush(flush_timeout_s)
    finally:
        if bar is not None:
            bar.close()
    sim.summary.elapsed_s = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"{remaining} messages still queued after {flush_timeout_s} s flush")
    if failures:
        raise RuntimeError(f"{len(failures)} messages not delivered, first: {failures[0]}")
    return sim.summary


# --------------------------------------------------------------------------- CLI

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> int:
    """Seconds in ``90m``, ``36h``, ``7d``, ``2w`` or a plain number of seconds.

    >>> parse_duration("7d"), parse_duration("90m"), parse_duration("3600")
    (604800, 5400, 3600)
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90m, 36h, 7d or 3600")
    return int(float(match.group(1)) * _UNIT_S[match.group(2)])


def parse_start(text: str) -> datetime:
    """An ISO-8601 instant; without an offset it is taken as UTC.

    >>> parse_start("2024-05-06T08:00:00Z").isoformat()
    '2024-05-06T08:00:00+00:00'
    >>> parse_start("2024-05-06").isoformat()
    '2024-05-06T00:00:00+00:00'
    """
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fail(message: str) -> click.UsageError:
    return click.UsageError(message)


@click.command("simulate")
@click.option("--seed", type=int, default=0, show_default=True, envvar="VOLTGUARD_SIM_SEED",
              show_envvar=True, help="Seed of the run; the same seed and options give the same bytes.")  # fmt: skip
@click.option("--sessions", type=click.IntRange(min=0), default=None,
              envvar="VOLTGUARD_SIM_SESSIONS", show_envvar=True,
              help="Number of charging sessions. Default: from --duration, else 10000.")  # fmt: skip
@click.option("--duration", default=None, envvar="VOLTGUARD_SIM_DURATION", show_envvar=True,
              help="Simulated span of the arrivals (90m, 36h, 7d, 2w or seconds). "
                   "Default: what --sessions needs at --sessions-per-station-day.")  # fmt: skip
@click.option("--stations", type=click.IntRange(min=1), default=200, show_default=True,
              envvar="VOLTGUARD_SIM_STATIONS", show_envvar=True, help="Number of charging stations.")  # fmt: skip
@click.option("--drivers", type=click.IntRange(min=2), default=None,
              envvar="VOLTGUARD_SIM_DRIVERS", show_envvar=True,
              help="Number of drivers (tokens). Default: 10 per station, at least 50.")  # fmt: skip
@click.option("--start", default="2024-05-06T00:00:00Z", show_default=True,
              envvar="VOLTGUARD_SIM_START", show_envvar=True,
              help="Simulated start, ISO 8601 (UTC when no offset is given).")  # fmt: skip
@click.option("--sessions-per-station-day", type=click.FloatRange(min=0.01), default=6.0,
              show_default=True, envvar="VOLTGUARD_SIM_SESSIONS_PER_STATION_DAY", show_envvar=True,
              help="Mean arrivals per station and day.")  # fmt: skip
@click.option("--sample-interval", type=click.IntRange(5, 3600), default=60, show_default=True,
              envvar="VOLTGUARD_SIM_SAMPLE_INTERVAL", show_envvar=True,
              help="Meter sampling interval of the chargers, seconds.")  # fmt: skip
@click.option("--center-lat", type=click.FloatRange(-90, 90), default=52.52, show_default=True,
              envvar="VOLTGUARD_SIM_CENTER_LAT", show_envvar=True, help="Latitude of the region's centre.")  # fmt: skip
@click.option("--center-lon", type=click.FloatRange(-180, 180), default=13.405, show_default=True,
              envvar="VOLTGUARD_SIM_CENTER_LON", show_envvar=True, help="Longitude of the region's centre.")  # fmt: skip
@click.option("--radius-km", type=click.FloatRange(0.5, 2000), default=25.0, show_default=True,
              envvar="VOLTGUARD_SIM_RADIUS_KM", show_envvar=True, help="Radius of the region, km.")  # fmt: skip
@click.option("--timezone", default="Europe/Berlin", show_default=True,
              envvar="VOLTGUARD_SIM_TIMEZONE", show_envvar=True,
              help="IANA time zone of the region (daily curve, tariff time-of-day restrictions).")  # fmt: skip
@click.option("--fault-rate", type=click.FloatRange(min=0), default=1.0, show_default=True,
              envvar="VOLTGUARD_SIM_FAULT_RATE", show_envvar=True,
              help="Scale of every fault/anomaly/oddity rate (0 = a clean world; 20 = lots).")  # fmt: skip
@click.option("--faults", default=None, envvar="VOLTGUARD_SIM_FAULTS", show_envvar=True,
              help="Only inject these kinds, comma-separated (default: all). Known: "
                   + ", ".join(ALL_KINDS))  # fmt: skip
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="VOLTGUARD_SIM_OUT", show_envvar=True,
              help="Write JSONL files into this directory instead of producing to Kafka.")  # fmt: skip
@click.option("--bootstrap-servers", default=None, envvar="VOLTGUARD_BOOTSTRAP_SERVERS",
              show_envvar=True,
              help="Produce to the catalog topics on this Kafka cluster (ignored with --out).")  # fmt: skip
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              envvar="VOLTGUARD_SIM_RATE", show_envvar=True,
              help="Kafka only: target events per second (0 = as fast as possible).")  # fmt: skip
@click.option("--hash-secret", default=None, envvar="VOLTGUARD_HASH_SECRET", show_envvar=True,
              show_default=False,
              help="Key of the token and card hashes (HMAC). Required; never printed.")  # fmt: skip
@click.option("--progress/--no-progress", default=None, envvar="VOLTGUARD_SIM_PROGRESS",
              show_envvar=True, help="Progress bar on stderr. Default: only on a terminal.")  # fmt: skip
@click.option("--summary-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, envvar="VOLTGUARD_SIM_SUMMARY_FORMAT", show_envvar=True,
              help="How to print the end-of-run summary.")  # fmt: skip
@click.pass_context
def simulate(
    ctx: click.Context,
    seed: int,
    sessions: int | None,
    duration: str | None,
    stations: int,
    drivers: int | None,
    start: str,
    sessions_per_station_day: float,
    sample_interval: int,
    center_lat: float,
    center_lon: float,
    radius_km: float,
    timezone: str,
    fault_rate: float,
    faults: str | None,
    out_dir: Path | None,
    bootstrap_servers: str | None,
    rate: float,
    hash_secret: str | None,
    progress: bool | None,
    summary_format: str,
) -> None:
    """Simulate a fleet of chargers, drivers and payments, with labelled faults and fraud.

    Emits raw OCPP 1.6 / 2.0.1 frames (both directions) and PSP payment events in
    event-time order, plus stations, tariffs and ground-truth labels.
    """
    if not hash_secret:
        raise _fail("--hash-secret (or VOLTGUARD_HASH_SECRET) is required")
    if out_dir is None and not bootstrap_servers:
        raise _fail("give --out DIR (files) or --bootstrap-servers (Kafka)")
    if out_dir is not None and bootstrap_servers:
        source = ctx.get_parameter_source("bootstrap_servers")
        if source == click.core.ParameterSource.COMMANDLINE:
            raise _fail("give either --out or --bootstrap-servers, not both")
        log.info("--out given: writing files, not producing to %s", bootstrap_servers)
    try:
        duration_s = parse_duration(duration) if duration else None
        start_at = parse_start(start)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if sessions is None and duration_s is None:
        sessions = 10_000
    fault_filter = None
    if faults:
        fault_filter = frozenset(k.strip() for k in faults.split(",") if k.strip())
    try:
        config = SimulationConfig(
            seed=seed,
            start=start_at,
            sessions=sessions,
            duration_s=duration_s,
            stations=stations,
            drivers=drivers,
            center_lat=center_lat,
            center_lon=center_lon,
            radius_km=radius_km,
            timezone=timezone,
            sample_interval_s=sample_interval,
            sessions_per_station_day=sessions_per_station_day,
            fault_scale=fault_rate,
            fault_filter=fault_filter,
        )
    except SimulationConfigError as exc:
        raise _fail(str(exc)) from None
    show = sys.stderr.isatty() if progress is None else progress
    secret = hash_secret.encode()
    try:
        if out_dir is not None:
            summary = simulate_to_files(config, hash_secret=secret, out_dir=out_dir, progress=show)
            where = str(out_dir)
        else:
            assert bootstrap_servers is not None
            summary = produce_to_kafka(
                config,
                hash_secret=secret,
                bootstrap_servers=bootstrap_servers,
                rate=rate,
                progress=show,
            )
            where = bootstrap_servers
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    log.info(
        "simulated %d sessions, %d events in %.1f s", summary.sessions, summary.events,
        summary.elapsed_s,
    )  # fmt: skip
    _echo_summary(summary, where, summary_format)


def _echo_summary(summary: Summary, where: str, fmt: str) -> None:
    data = summary.as_dict()
    if fmt == "json":
        click.echo(msgspec.json.encode({**data, "output": where}).decode())
        return
    click.echo(
        f"simulated {data['sessions']} sessions (+{data['clone_sessions']} cloned-token, "
        f"{data['dropped_arrivals']} arrivals found no charger) -> {where}"
    )
    click.echo(
        f"  frames {data['frames']}, payments {data['payments']}, labels {data['labels']}, "
        f"stations {data['stations']}, tariffs {data['tariffs']}"
    )
    click.echo(
        f"  events {data['events']} in {data['elapsed_s']:.1f} s = "
        f"{data['events_per_s']:,.0f} events/s; event time {data['first_event']} .. "
        f"{data['last_event']}"
    )
    for kind, count in data["labels_by_kind"].items():
        click.echo(f"  label {kind}: {count}")
    for kind, count in data["unplaced_kinds"].items():
        click.echo(f"  not injected (no fitting station/driver free): {kind}: {count}")
