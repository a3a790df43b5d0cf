"""``voltguard import-sessions``: CSV session exports in, canonical events out.

The shell around :mod:`topics.adapters.csv_sessions`: it opens the files, resolves the
mapping, writes the events to a JSONL file or produces them to the CSMS input topics, writes
the rejected rows to an error file, and prints a summary. Each CSV file is one
:func:`~topics.adapters.csv_sessions.import_rows` call (the day/month swap is decided per
file).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Protocol

import click
import msgspec

from topics.adapters.csv_sessions import (
    ColumnMapping,
    ImportedSession,
    ImportResult,
    RowError,
    SwapDecision,
    import_rows,
    load_shipped_mapping,
    read_rows,
    shipped_mapping_names,
)
from topics.catalog import CATALOG
from topics.codec import encode
from topics.exceptions import AdapterError
from topics.records import MeterReading, SessionEvent

__all__ = ["import_sessions"]

log = logging.getLogger(__name__)

_JSONL_TOPICS = {SessionEvent: "csms_session_events", MeterReading: "csms_meter_readings"}
"""Catalog short names written in ``--out`` files."""
_KAFKA_TOPICS = {
    SessionEvent: CATALOG["csms_session_events"].name,
    MeterReading: CATALOG["csms_meter_readings"].name,
}
"""Real topic names produced to with ``--bootstrap-servers`` (the CSMS inputs of ingest)."""

_json = msgspec.json.Encoder()


# --------------------------------------------------------------------------- sinks


class _Sink(Protocol):
    def write(self, record: SessionEvent | MeterReading) -> None: ...

    def close(self) -> None: ...


class _TimeOrderedSink:
    """Holds the events until the end, then passes them on in event-time order.

    Exports are in no particular order (Dundee's are newest first), while the ingest
    clock, the billing watermark and a token's recent history all expect time order:
    replayed newest first, a token's older sessions are compared with nothing and the
    clone rule misses them. The sort is stable, so a session's own events keep their order.
    """

    def __init__(self, inner: _Sink) -> None:
        self._inner = inner
        self._held: list[SessionEvent | MeterReading] = []

    def write(self, record: SessionEvent | MeterReading) -> None:
        self._held.append(record)

    def close(self) -> None:
        self._held.sort(key=lambda r: r.event_time)
        for record in self._held:
            self._inner.write(record)
        self._held = []
        self._inner.close()


class _JsonlSink:
    """One ``{"topic", "key", "value"}`` line per event (the format ``voltguard send`` reads)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh

    def write(self, record: SessionEvent | MeterReading) -> None:
        topic = _JSONL_TOPICS[type(record)]
        self._fh.write(
            b'{"topic":"%s","key":%s,"value":%s}\n'
            % (topic.encode(), _json.encode(record.session_id), encode(record))
        )

    def close(self) -> None:
        self._fh.flush()


class _KafkaSink:
    """Produce to the CSMS input topics, keyed by session id; flush and check at the end."""

    def __init__(self, client_config: dict[str, str], *, flush_timeout_s: float = 60.0) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(
            {
                **client_config,
                "compression.type": "lz4",
                "linger.ms": 5,
                "enable.idempotence": True,
            }
        )
        self._flush_timeout_s = flush_timeout_s
        self.failed = 0
        self.first_error: str | None = None

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or str(err)

    def write(self, record: SessionEvent | MeterReading) -> None:
        topic, key, value = _KAFKA_TOPICS[type(record)], record.session_id.encode(), encode(record)
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def close(self) -> None:
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining or self.failed:
            raise click.ClickException(
                f"Kafka: {remaining} messages still queued after {self._flush_timeout_s:.0f} s, "
                f"{self.failed} failed (first error: {self.first_error})"
            )


# --------------------------------------------------------------------------- summary


@dataclass
class _Summary:
    """Counts for the final report."""

    rows: int = 0
    imported: int = 0
    open: int = 0
    zero_energy: int = 0
    swapped: int = 0
    with_cost: int = 0
    nonzero_cost: int = 0
    events: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    swap_decisions: list[tuple[str, SwapDecision]] = field(default_factory=list)

    def add(self, path: Path, result: ImportResult) -> None:
        self.rows += 1
        if isinstance(result, RowError):
            self.rejected[result.kind] += 1
            self.examples.setdefault(result.kind, f"{path.name}:{result.line_no}: {result.reason}")
            return
        self.imported += 1
        self.open += result.is_open
        self.zero_energy += result.zero_energy
        self.swapped += result.day_month_swapped
        if result.cost is not None:
            self.with_cost += 1
            self.nonzero_cost += result.cost != 0
        for event in result.events:
            self.events[_JSONL_TOPICS[type(event)]] += 1

    def lines(
        self, *, mapping: ColumnMapping, files: int, elapsed_s: float, top: int
    ) -> Iterator[str]:
        rate = self.rows / elapsed_s if elapsed_s > 0 else 0.0
        rejected = sum(self.rejected.values())
        yield f"import-sessions: {files} file(s), source {mapping.source}"
        yield f"  rows read              {self.rows:>9,}"
        yield f"  sessions imported      {self.imported:>9,}"
        yield f"  open sessions          {self.open:>9,}"
        yield f"  zero-energy sessions   {self.zero_energy:>9,}"
        if mapping.day_month_swap != "never":
            yield f"  day/month swapped      {self.swapped:>9,} rows"
        if mapping.columns.cost is not None:
            yield f"  with a cost (info)     {self.with_cost:>9,} ({self.nonzero_cost:,} non-zero)"
        for topic, count in sorted(self.events.items()):
            yield f"  events {topic:<16}{count:>9,}"
        yield f"  rows rejected          {rejected:>9,}"
        for kind, count in self.rejected.most_common(top):
            yield f"    {kind:<20} {count:>9,}  e.g. {self.examples[kind]}"
        if len(self.rejected) > top:
            others = sum(c for _, c in self.rejected.most_common()[top:])
            yield f"    {'(other reasons)':<20} {others:>9,}"
        for name, d in self.swap_decisions:
            state = "on" if d.swap else "off"
            yield f"  day/month swap {state:<3} {name}: {d.reason}"
        yield f"  elapsed {elapsed_s:.2f} s, {rate:,.0f} rows/s"


# --------------------------------------------------------------------------- command


def _resolve_mapping(ref: str) -> ColumnMapping:
    """A shipped mapping by name, or a YAML file by path."""
    path = Path(ref)
    try:
        if path.suffix in (".yaml", ".yml") or path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise click.BadParameter(
                    f"cannot read {ref}: {exc}", param_hint="--mapping"
                ) from None
            return ColumnMapping.from_yaml(text, origin=str(path))
        return load_shipped_mapping(ref)
    except AdapterError as exc:
        raise click.BadParameter(str(exc), param_hint="--mapping") from None


def _error_line(path: Path, error: RowError) -> bytes:
    return (
        _json.encode(
            {
                "file": str(path),
                "line_no": error.line_no,
                "kind": error.kind,
                "reason": error.reason,
                "raw_row": error.raw_row,
            }
        )
        + b"\n"
    )


@click.command("import-sessions")
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--mapping",
    "mapping_ref",
    required=True,
    envvar="VOLTGUARD_IMPORT_MAPPING",
    show_envvar=True,
    help="Column mapping: a shipped name ("
    + ", ".join(shipped_mapping_names())
    + ") or the path of a YAML file.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    envvar="VOLTGUARD_IMPORT_OUT",
    show_envvar=True,
    help='Write the events to this JSONL file, one {"topic", "key", "value"} line each '
    "(topic: csms_session_events or csms_meter_readings, as `voltguard send` reads them). Takes precedence over a bootstrap address "
    "that only comes from the environment.",
)
@click.option(
    "--bootstrap-servers",
    default=None,
    envvar="VOLTGUARD_BOOTSTRAP_SERVERS",
    show_envvar=True,
    help="Produce the events to the CSMS input topics of this Kafka cluster instead "
    "(host:port[,host:port]; key session_id, lz4, linger 5 ms, flushed at the end).",
)
@click.option(
    "--hash-secret",
    required=True,
    envvar="VOLTGUARD_HASH_SECRET",
    show_envvar=True,
    metavar="SECRET",
    help="Key of the HMAC that hashes user and card ids (never printed). Keep it the same "
    "as the ingest's, so that hashes stay comparable.",
)
@click.option(
    "--errors",
    "errors_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    envvar="VOLTGUARD_IMPORT_ERRORS",
    show_envvar=True,
    help="Write the rejected rows to this JSONL file (file, line_no, kind, reason, raw_row; "
    "user ids in raw_row are replaced by their hash).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    envvar="VOLTGUARD_IMPORT_LIMIT",
    show_envvar=True,
    help="Read at most this many rows in total (over all files).",
)
@click.option(
    "--top-reasons",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    envvar="VOLTGUARD_IMPORT_TOP_REASONS",
    show_envvar=True,
    help="How many rejection reasons the summary lists.",
)
@click.option(
    "--order",
    type=click.Choice(["time", "file"]),
    default="time",
    show_default=True,
    envvar="VOLTGUARD_IMPORT_ORDER",
    show_envvar=True,
    help="time: write the events of all files sorted by event time (held in memory until "
    "the end), as the ingest and `voltguard replay` expect; file: as the rows come.",
)
@click.pass_context
def import_sessions(
    ctx: click.Context,
    paths: tuple[Path, ...],
    mapping_ref: str,
    out: Path | None,
    bootstrap_servers: str | None,
    hash_secret: str,
    errors_path: Path | None,
    limit: int | None,
    top_reasons: int,
    order: str,
) -> None:
    """Import CSV session exports (one row per charging session) as canonical events.

    Every row becomes either a session's events (started, Transaction.Begin reading, and
    for a closed session Transaction.End reading and ended) or a rejected row with its
    reason; nothing is skipped silently. Event ids are deterministic, so importing the same
    file again yields the same events. Ends with a summary of what was read, imported and
    rejected.
    """
    if not hash_secret:
        raise click.BadParameter("must not be empty", param_hint="--hash-secret")
    bootstrap_from_cli = (
        ctx.get_parameter_source("bootstrap_servers") == click.core.ParameterSource.COMMANDLINE
    )
    if out is not None and bootstrap_servers and bootstrap_from_cli:
        raise click.UsageError("give either --out or --bootstrap-servers, not both")
    if out is None and not bootstrap_servers:
        raise click.UsageError("give --out FILE.jsonl or --bootstrap-servers")
    mapping = _resolve_mapping(mapping_ref)
    secret = hash_secret.encode()
    summary = _Summary()
    started = time.perf_counter()

    with ExitStack() as stack:
        sink: _Sink
        if out is not None:
            sink = _JsonlSink(stack.enter_context(out.open("wb")))
        else:
            sink = _kafka_sink(bootstrap_servers)
        if order == "time":
            sink = _TimeOrderedSink(sink)
        stack.callback(sink.close)  # flush what was sent, also when a file fails half-way
        errors = stack.enter_context(errors_path.open("wb")) if errors_path else None
        budget = limit
        for path in paths:
            if budget is not None and budget <= 0:
                break
            read = _import_file(path, mapping, secret, sink, errors, summary, budget)
            if budget is not None:
                budget -= read

    elapsed = time.perf_counter() - started
    for line in summary.lines(
        mapping=mapping, files=len(paths), elapsed_s=elapsed, top=top_reasons
    ):
        click.echo(line)


def _kafka_sink(bootstrap_servers: str | None) -> _KafkaSink:
    from streams.settings import ConfigError, Settings

    try:
        settings = Settings.from_env(bootstrap_servers=bootstrap_servers)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return _KafkaSink(settings.kafka.client_config())


def _import_file(
    path: Path,
    mapping: ColumnMapping,
    secret: bytes,
    sink: _Sink,
    errors: IO[bytes] | None,
    summary: _Summary,
    budget: int | None,
) -> int:
    """Import one file; return the number of rows read."""
    before = summary.rows

    def on_swap(decision: SwapDecision) -> None:
        summary.swap_decisions.append((path.name, decision))

    try:
        with path.open(encoding=mapping.encoding, newline="") as fh:
            results = import_rows(
                read_rows(fh, mapping), mapping, hash_secret=secret, on_swap_decision=on_swap
            )
            if budget is not None:
                results = islice(results, budget)
            for result in results:
                summary.add(path, result)
                if isinstance(result, ImportedSession):
                    for event in result.events:
                        sink.write(event)
                elif errors is not None:
                    errors.write(_error_line(path, result))
    except AdapterError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise click.ClickException(
            f"{path}: not {mapping.encoding} text at byte {exc.start} ({exc.reason}); "
            f"{summary.rows - before} rows of it were already imported"
        ) from None
    log.info("%s: %d rows", path, summary.rows - before)
    return summary.rows - before
