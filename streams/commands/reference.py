"""``voltguard stations`` and ``voltguard tariffs``: load reference files, list the topics.

``load FILE...`` validates JSON, JSONL or CSV files with :mod:`topics.adapters.reference`
and produces the valid records to the compacted topic keyed by id (idempotent producer,
flushed, every delivery checked), then prints a summary: loaded, rejected with reasons,
warnings. ``list`` reads the topic whole with :func:`streams.reference.read_reference`.

Exit status 1 when nothing valid was found, when a delivery failed, or with
``--fail-on-reject`` when anything was rejected (then nothing is produced at all).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import click

from streams.settings import Settings
from topics.adapters.reference import (
    FORMATS,
    ReferenceLoad,
    ReferenceRecord,
    merge_loads,
    read_reference_file,
)
from topics.catalog import CATALOG
from topics.codec import encode
from topics.exceptions import AdapterError
from topics.records import Station, Tariff

__all__ = ["produce_records", "stations_group", "tariffs_group"]

log = logging.getLogger(__name__)

SHOW_REJECTED = 20
"""How many rejections (and warnings) the summary lists one by one."""


def _settings(bootstrap_servers: str | None) -> Settings:
    """Settings as every command builds them (the local broker when no address is given)."""
    from streams.cli import _settings as cli_settings  # late: streams.cli imports this module

    return cli_settings(bootstrap_servers)


def produce_records(
    settings: Settings, kind: str, records: list[ReferenceRecord], *, timeout_s: float = 60.0
) -> None:
    """Produce reference records to their compacted topic, keyed by id, and wait for all acks.

    Parameters
    ----------
    settings
        Kafka connection.
    kind
        ``"stations"`` or ``"tariffs"`` (the catalog short name).
    records
        The records.
    timeout_s
        Longest wait for the acknowledgements.

    Raises
    ------
    click.ClickException
        Some record was not acknowledged; the message gives the count and the first error.
    """
    from confluent_kafka import KafkaException, Producer

    topic = CATALOG[kind].name
    id_field = "station_id" if kind == "stations" else "tariff_id"
    producer = Producer(
        {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    errors: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        for record in records:
            key = getattr(record, id_field).encode()
            while True:
                try:
                    producer.produce(topic, encode(record), key, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: serve delivery reports, then retry
                    producer.poll(0.1)
            producer.poll(0)
        remaining = producer.flush(timeout_s)
    except KafkaException as exc:
        raise click.ClickException(f"Kafka: {exc}") from None
    if remaining or errors:
        raise click.ClickException(
            f"Kafka: {remaining} of {len(records)} records still queued after {timeout_s:g} s, "
            f"{len(errors)} failed (first error: {errors[0] if errors else None}); "
            "loading again is safe (the topic is compacted by id)"
        )


def _read_files(kind: str, paths: tuple[Path, ...], fmt: str, now: datetime) -> ReferenceLoad:
    loads = []
    for path in paths:
        try:
            loads.append(read_reference_file(kind, path, fmt=fmt, now=now))
        except (AdapterError, OSError) as exc:
            loads.append(ReferenceLoad(kind, rejected=[(path.name, str(exc))]))  # type: ignore[arg-type]
    return merge_loads(loads)


def _summary(
    load: ReferenceLoad, *, files: int, topic: str, produced: bool, dry_run: bool
) -> list[str]:
    if produced:
        where = f"loaded {len(load.records)} to {topic}"
    elif dry_run:
        where = f"{len(load.records)} valid (dry run: nothing produced)"
    else:
        where = f"{len(load.records)} valid, nothing produced"
    lines = [f"{load.kind}: {where}, from {files} file(s)"]
    if load.rejected:
        lines.append(f"rejected {len(load.rejected)}:")
        lines += [f"  {loc}: {reason}" for loc, reason in load.rejected[:SHOW_REJECTED]]
        if len(load.rejected) > SHOW_REJECTED:
            lines.append(f"  ... and {len(load.rejected) - SHOW_REJECTED} more")
    if load.warnings:
        lines.append(f"warnings {len(load.warnings)}:")
        lines += [f"  {w}" for w in load.warnings[:SHOW_REJECTED]]
        if len(load.warnings) > SHOW_REJECTED:
            lines.append(f"  ... and {len(load.warnings) - SHOW_REJECTED} more")
    return lines


def _describe(record: ReferenceRecord) -> str:
    """One line per record for ``list``."""
    if isinstance(record, Station):
        power = max(c.max_power_w for c in record.connectors) / 1000
        return (
            f"{record.station_id:20} tariff={record.tariff_id:16} connectors={len(record.connectors)} "
            f"max={power:g}kW group={record.group} tz={record.timezone} {record.name}"
        )
    components = ", ".join(
        f"{pc.type} {pc.price}" for e in record.elements for pc in e.price_components
    )
    return (
        f"{record.tariff_id:20} {record.currency} elements={len(record.elements)} "
        f"tz={record.timezone} [{components}]"
    )


def _make_group(kind: str) -> click.Group:
    """The ``load`` and ``list`` commands of one reference topic."""
    singular = kind[:-1]
    topic = CATALOG[kind].name

    @click.group(name=kind, help=f"The {kind} reference topic ({topic}, compacted).")
    def group() -> None:
        pass

    @group.command("load")
    @click.argument(
        "paths",
        metavar="FILE...",
        nargs=-1,
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
    )
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="auto",
        show_default=True,
        help="File format; auto: from the suffix (.json, .jsonl/.ndjson, .csv).",
    )
    @click.option("--dry-run", is_flag=True, help="Validate and print the summary only.")
    @click.option(
        "--bootstrap-servers",
        envvar="VOLTGUARD_BOOTSTRAP_SERVERS",
        default=None,
        show_envvar=True,
        help="Kafka bootstrap servers, host:port[,host:port]. Default: the local broker "
        "started by `voltguard kafka up` if it runs, else 127.0.0.1:9092.",
    )
    @click.option(
        "--fail-on-reject/--no-fail-on-reject",
        default=False,
        show_default=True,
        help="Exit with status 1 and produce nothing if any record is rejected.",
    )
    def load(
        paths: tuple[Path, ...],
        fmt: str,
        dry_run: bool,
        bootstrap_servers: str | None,
        fail_on_reject: bool,
    ) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        result = _read_files(kind, paths, fmt, now)
        blocked = fail_on_reject and bool(result.rejected)
        produce = not dry_run and not blocked and bool(result.records)
        if produce:
            produce_records(_settings(bootstrap_servers), kind, result.records)
        for line in _summary(
            result, files=len(paths), topic=CATALOG[kind].name, produced=produce, dry_run=dry_run
        ):
            click.echo(line)
        if not result.records:
            click.echo(f"error: no valid {singular} found", err=True)
            raise SystemExit(1)
        if blocked:
            click.echo(
                f"error: {len(result.rejected)} rejected and --fail-on-reject given", err=True
            )
            raise SystemExit(1)

    load.help = (
        f"Validate {kind} files (JSON, JSONL, CSV) and produce them to {topic}, keyed by "
        f"{singular}_id.\n\nBad records are rejected with their location and reason; the "
        "others are still loaded unless --fail-on-reject is given. Loading the same file again "
        "is harmless (the topic is compacted, event ids are derived from the content)."
    )

    @group.command("list")
    @click.option(
        "--bootstrap-servers",
        envvar="VOLTGUARD_BOOTSTRAP_SERVERS",
        default=None,
        show_envvar=True,
        help="Kafka bootstrap servers (default as for `load`).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print each record as a JSON line.")
    @click.option(
        "--timeout",
        type=click.FloatRange(min=1.0),
        default=30.0,
        show_default=True,
        help="Seconds to read the topic to its end.",
    )
    def list_(bootstrap_servers: str | None, as_json: bool, timeout: float) -> None:
        from confluent_kafka import KafkaException

        from streams.reference import read_reference

        try:
            data = read_reference(_settings(bootstrap_servers), timeout_s=timeout)
        except (RuntimeError, TimeoutError, KafkaException) as exc:
            raise click.ClickException(str(exc)) from None
        table: dict[str, Station] | dict[str, Tariff] = getattr(data, kind)
        for record_id in sorted(table):
            record = table[record_id]
            click.echo(encode(record).decode() if as_json else _describe(record))
        if not as_json:
            click.echo(f"{len(table)} {kind} on {CATALOG[kind].name}")

    list_.help = f"Print the {kind} currently on {topic}, sorted by id."
    return group


stations_group = _make_group("stations")
tariffs_group = _make_group("tariffs")
