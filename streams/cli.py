"""The ``voltguard`` command line (click).

Settings are read once here, from flags and ``VOLTGUARD_*`` variables, and passed down.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import orjson

from streams.settings import ConfigError, Settings

__all__ = ["main"]

log = logging.getLogger("voltguard")

BOOTSTRAP = click.option(
    "--bootstrap-servers",
    envvar="VOLTGUARD_BOOTSTRAP_SERVERS",
    default=None,
    show_envvar=True,
    help="Kafka bootstrap servers, host:port[,host:port]. Default: the local broker started by "
    "`voltguard kafka up` if it runs, else 127.0.0.1:9092.",
)


def _settings(bootstrap_servers: str | None, **overrides: object) -> Settings:
    if bootstrap_servers is None:
        bootstrap_servers = _local_bootstrap()
    try:
        return Settings.from_env(bootstrap_servers=bootstrap_servers, **overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _local_bootstrap() -> str | None:
    """The bootstrap address of the project's local broker, when one is running."""
    from streams.localkafka import LocalKafka

    try:
        status = LocalKafka().status()
    except Exception:  # no state file, unreadable state: fall back to the default
        return None
    return status.get("bootstrap") if status.get("running") else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    envvar="VOLTGUARD_LOG_LEVEL",
    default="INFO",
    show_default=True,
    show_envvar=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Logging level of voltguard's own loggers.",
)
def main(log_level: str) -> None:
    """voltguard: streaming billing integrity for EV charging networks."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --------------------------------------------------------------------------- topics


@main.group("topics")
def topics_group() -> None:
    """The topic catalog on a Kafka cluster."""


@topics_group.command("create")
@BOOTSTRAP
@click.option(
    "--replication-factor",
    envvar="VOLTGUARD_REPLICATION_FACTOR",
    default=1,
    show_default=True,
    type=click.IntRange(1, 10),
    help="Replication factor of created topics (3 on a production cluster).",
)
def topics_create(bootstrap_servers: str | None, replication_factor: int) -> None:
    """Create the catalog's topics (idempotent); refuse mis-partitioned existing topics."""
    from confluent_kafka.admin import AdminClient

    from streams.admin import TopicMismatch, create_topics

    settings = _settings(bootstrap_servers)
    admin = AdminClient(settings.kafka.client_config())
    try:
        states = create_topics(admin, replication_factor=replication_factor)
    except TopicMismatch as exc:
        raise click.ClickException(str(exc)) from None
    made = [s for s in states if s.created]
    click.echo(
        f"{len(states)} catalog topics on {settings.kafka.bootstrap_servers}: "
        f"{len(made)} created, {len(states) - len(made)} already there"
    )


@topics_group.command("list")
@BOOTSTRAP
def topics_list(bootstrap_servers: str | None) -> None:
    """Show the catalog and what exists on the cluster."""
    from confluent_kafka.admin import AdminClient

    from streams.admin import describe_topics
    from topics.catalog import CATALOG

    settings = _settings(bootstrap_servers)
    states = describe_topics(AdminClient(settings.kafka.client_config()))
    for s in states:
        spec = CATALOG[s.short]
        have = "missing" if s.partitions is None else f"{s.partitions} partitions"
        flag = "" if s.partitions in (None, s.wanted_partitions) else "  MISMATCH"
        policy = "compact" if spec.compacted else f"retention {spec.retention_ms}ms"
        click.echo(
            f"{s.name:45} key={spec.key:18} want={s.wanted_partitions} {have:15} {policy}{flag}"
        )


@topics_group.command("abort-stale-transactions")
@BOOTSTRAP
@click.option("--older-than", "older_than_s", default=300.0, show_default=True,
              help="Abort transactions open at least this many seconds (well above the "
              "workers' transaction timeout, VOLTGUARD_TRANSACTION_TIMEOUT_MS).")  # fmt: skip
@click.option("--topic", "shorts", multiple=True,
              help="Catalog short name (e.g. reconciliation_mismatches); repeatable. "
              "Default: every catalog topic.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Only list the open transactions.")
@click.option("--command-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Java client properties for a secured cluster (as kafka-transactions.sh).")  # fmt: skip
def topics_abort_stale(
    bootstrap_servers: str | None,
    older_than_s: float,
    shorts: tuple[str, ...],
    dry_run: bool,
    command_config: str | None,
) -> None:
    """Find and abort transactions left open on the catalog's topics.

    A stage whose consumer lag stays small but never moves may be held back by a
    transaction nobody will end (a producer that died mid-transaction around a broker
    restart): read_committed consumers cannot pass its first record. Needs Java (the
    broker's jars, fetched as for `voltguard kafka up`).
    """
    from streams.admin import abort_stale_transactions
    from topics.catalog import CATALOG

    unknown = sorted(set(shorts) - set(CATALOG))
    if unknown:
        raise click.UsageError(f"not catalog topics: {', '.join(unknown)}")
    settings = _settings(bootstrap_servers)
    names = [CATALOG[s].name for s in (shorts or CATALOG)]
    try:
        found = abort_stale_transactions(
            settings.kafka.bootstrap_servers, names, min_age_s=older_than_s,
            dry_run=dry_run, client_config=command_config,
        )  # fmt: skip
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in found:
        click.echo(line)
    verb = "open" if dry_run else "aborted"
    click.echo(f"{len(found)} transactions {verb} (older than {older_than_s:g} s)")


# --------------------------------------------------------------------------- worker


@main.command("worker")
@BOOTSTRAP
@click.option(
    "--stage",
    envvar="VOLTGUARD_STAGE",
    type=click.Choice(["ingest", "billing", "detection", "router"]),
    default="ingest",
    show_default=True,
    show_envvar=True,
    help="ingest: outside input -> canonical topics; billing: canonical topics -> bills, "
    "reconciliation results and session features; detection: session features and payments "
    "-> fraud alerts; router: fraud alerts and reconciliation mismatches -> PagerDuty and "
    "Slack (routes in VOLTGUARD_ROUTER_CONFIG). Run at least one of each.",
)
@click.option(
    "--instance-id",
    envvar="VOLTGUARD_INSTANCE_ID",
    default=None,
    show_envvar=True,
    help="Stable name of this worker (default: host name). A restarted worker must keep its "
    "name so that its transactional id fences its predecessor.",
)
@click.option(
    "--metrics-port",
    envvar="VOLTGUARD_METRICS_PORT",
    default=None,
    type=int,
    show_envvar=True,
    help="Serve Prometheus /metrics on this port (0 or unset: off).",
)
@click.option(
    "--exit-when-idle",
    envvar="VOLTGUARD_EXIT_WHEN_IDLE",
    default=None,
    type=float,
    help="Exit after this many seconds without input (batch jobs and benchmarks).",
)
def worker(
    stage: str,
    bootstrap_servers: str | None,
    instance_id: str | None,
    metrics_port: int | None,
    exit_when_idle: float | None,
) -> None:
    """Run a worker stage; each batch is one Kafka transaction (exactly once).

    ingest needs VOLTGUARD_HASH_SECRET (tokens are hashed at ingest). billing reads the
    station and tariff topics whole before it starts and follows them afterwards; its grace
    periods are the VOLTGUARD_*_GRACE_S variables. Both stop cleanly on SIGTERM or Ctrl-C
    after committing their current batch.
    """
    from streams.loop import ConnectError
    from streams.metrics import serve_metrics

    settings = _settings(bootstrap_servers, instance_id=instance_id, metrics_port=metrics_port)
    follower = None
    try:
        if stage == "ingest":
            from streams.ingest import IngestLoop

            loop = IngestLoop(settings)
        elif stage == "router":
            from streams.router import RouterLoop

            loop = RouterLoop(settings)
        elif stage == "detection":
            from streams.detection import DetectionLoop
            from streams.model_follower import ModelFollower, ModelHolder
            from streams.registry import ModelRegistry

            holder = ModelHolder()
            follower = ModelFollower(
                settings, ModelRegistry(settings.model_registry), holder,
                model_name=settings.model_name,
            )  # fmt: skip
            follower.start()
            loop = DetectionLoop(settings, model=holder.current)
        else:
            from streams.billing import BillingLoop
            from streams.reference import ReferenceFollower, read_reference

            settings.reconciliation_config()  # fail early on bad grace periods
            reference = read_reference(settings)
            log.info(
                "reference data: %d stations, %d tariffs",
                len(reference.stations),
                len(reference.tariffs),
            )
            follower = ReferenceFollower(settings, reference)
            follower.start()
            loop = BillingLoop(settings, tariffs=reference.tariffs, stations=reference.stations)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    serve_metrics(settings.metrics_port, settings.metrics_addr)
    loop.install_signal_handlers()
    log.info("%s worker %s on %s", stage, settings.instance_id, settings.kafka.bootstrap_servers)
    try:
        loop.run(max_idle_s=exit_when_idle)
    except ConnectError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    finally:
        if follower is not None:
            follower.stop()
        if stage == "router":
            loop.stage.sender.close()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- data in and out


@main.command("send")
@BOOTSTRAP
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def send(bootstrap_servers: str | None, path: Path) -> None:
    """Produce a JSONL file of {"topic", "key", "value"} lines to the catalog topics.

    "topic" is a catalog short name (e.g. ocpp_frames); "value" is the record as JSON (sent
    byte for byte as re-serialised JSON) or, with "value_raw", a string sent as is, which is
    how to replay malformed captures.
    """
    from confluent_kafka import Producer

    from topics.catalog import CATALOG

    settings = _settings(bootstrap_servers)
    producer = Producer(
        {**settings.kafka.client_config(), "linger.ms": 10, "compression.type": "lz4"}
    )
    count = 0
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
                spec = CATALOG[item["topic"]]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise click.ClickException(
                    f"{path}:{line_no}: not a topic/key/value line: {exc}"
                ) from None
            value = (
                item["value_raw"].encode() if "value_raw" in item else orjson.dumps(item["value"])
            )
            key = item.get("key")
            producer.produce(spec.name, value, key.encode() if key else None)
            producer.poll(0)
            count += 1
    producer.flush(30)
    click.echo(f"sent {count} messages from {path}")


@main.command("tail")
@BOOTSTRAP
@click.argument("topic_name", metavar="TOPIC")
@click.option("--from-beginning/--from-end", default=True, help="Where to start reading.")
@click.option("--max-messages", "-n", default=0, type=int, help="Stop after N messages (0: never).")
@click.option("--idle-timeout", default=0.0, type=float, help="Stop after N seconds without data.")
def tail(
    bootstrap_servers: str | None,
    topic_name: str,
    from_beginning: bool,
    max_messages: int,
    idle_timeout: float,
) -> None:
    """Print committed records of a catalog topic (short or real name) as JSON lines."""
    import time
    import uuid

    from confluent_kafka import Consumer

    from topics.catalog import CATALOG, CLOCK_KEY

    spec = CATALOG.get(topic_name) or next(
        (s for s in CATALOG.values() if s.name == topic_name), None
    )
    if spec is None:
        raise click.BadParameter(f"unknown topic {topic_name!r}; see `voltguard topics list`")
    settings = _settings(bootstrap_servers)
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"voltguard-tail-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([spec.name])
    seen, last = 0, time.monotonic()
    try:
        while not max_messages or seen < max_messages:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                if idle_timeout and time.monotonic() - last > idle_timeout:
                    break
                continue
            if msg.key() == CLOCK_KEY:
                continue  # the ingest's clock ticks interleaved in the canonical topics
            last = time.monotonic()
            seen += 1
            click.echo(msg.value().decode("utf-8", "replace") if msg.value() else "null")
    finally:
        consumer.close()


def _register_optional_commands() -> None:
    """Add the command groups that live in their own modules."""
    from streams.commands.api import api
    from streams.commands.demo import demo
    from streams.commands.importer import import_sessions
    from streams.commands.ingress import ingress
    from streams.commands.kafka import kafka_group
    from streams.commands.reference import stations_group, tariffs_group
    from streams.commands.replay import replay
    from streams.commands.retrain import retrain
    from streams.commands.simulate import simulate

    main.add_command(kafka_group)
    main.add_command(__import__("streams.commands.evaluate", fromlist=["_"]).evaluate_command)
    main.add_command(import_sessions)
    main.add_command(demo)
    main.add_command(ingress)
    main.add_command(simulate)
    main.add_command(stations_group)
    main.add_command(tariffs_group)
    main.add_command(replay)
    main.add_command(retrain)
    main.add_command(api)


_register_optional_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
