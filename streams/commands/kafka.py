"""``voltguard kafka``: start, stop and inspect the project's local Kafka broker.

Thin CLI over :class:`streams.localkafka.LocalKafka`; the broker outlives the command
(``up`` returns once it serves requests, ``down`` stops it from any shell).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NoReturn

import click

from streams.localkafka import KafkaError, LocalKafka, default_data_dir

__all__ = ["kafka_group"]

log = logging.getLogger(__name__)

_DATA_DIR_HELP = (
    "Broker data directory (config, KRaft storage, logs, state file). "
    "Default: ~/.local/state/voltguard/kafka."
)


def _data_dir_option() -> click.Option:
    """Return the shared ``--data-dir`` option decorator."""
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar="VOLTGUARD_KAFKA_DIR",
        show_envvar=True,
        help=_DATA_DIR_HELP,
    )


def _fail(exc: Exception) -> NoReturn:
    """Print ``exc`` to stderr and exit with status 1."""
    click.echo(f"error: {exc}", err=True)
    raise SystemExit(1)


@click.group(name="kafka")
def kafka_group() -> None:
    """Run the local single-node Apache Kafka 4.0 broker (KRaft, loopback, no Docker)."""


@kafka_group.command("up")
@_data_dir_option()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    envvar="VOLTGUARD_KAFKA_PORT",
    show_envvar=True,
    help="Client (PLAINTEXT) port on 127.0.0.1. Default: the previous run's if free, else any.",
)
@click.option(
    "--controller-port",
    type=click.IntRange(1, 65535),
    default=None,
    envvar="VOLTGUARD_KAFKA_CONTROLLER_PORT",
    show_envvar=True,
    help="KRaft controller port on 127.0.0.1. Default: the previous run's if free, else any.",
)
@click.option(
    "--heap",
    default="512m",
    show_default=True,
    envvar="VOLTGUARD_KAFKA_HEAP",
    show_envvar=True,
    help="JVM heap of the broker (-Xms and -Xmx).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    envvar="VOLTGUARD_KAFKA_START_TIMEOUT",
    show_envvar=True,
    help="Seconds to wait for the broker to serve requests.",
)
def up(
    data_dir: Path | None,
    port: int | None,
    controller_port: int | None,
    heap: str,
    timeout: float,
) -> None:
    """Start the broker (or reuse the running one) and print its bootstrap address.

    Fetches the jars with Maven on first use (cached in ~/.cache/voltguard, or
    $VOLTGUARD_CACHE_DIR).
    """
    kafka = LocalKafka(data_dir, port=port, controller_port=controller_port, heap=heap)
    try:
        bootstrap = kafka.start(timeout_s=timeout)
    except KafkaError as exc:
        _fail(exc)
    else:
        click.echo(bootstrap)


@kafka_group.command("down")
@_data_dir_option()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0),
    default=30.0,
    show_default=True,
    envvar="VOLTGUARD_KAFKA_STOP_TIMEOUT",
    show_envvar=True,
    help="Seconds to wait for a controlled shutdown before SIGKILL.",
)
def down(data_dir: Path | None, timeout: float) -> None:
    """Stop the broker of the data directory (no-op if it is not running)."""
    kafka = LocalKafka(data_dir)
    try:
        stopped = kafka.stop(timeout_s=timeout)
    except (KafkaError, OSError) as exc:
        _fail(exc)
    else:
        click.echo("stopped" if stopped else "not running")


@kafka_group.command("status")
@_data_dir_option()
def status(data_dir: Path | None) -> None:
    """Print the broker's status as JSON (running, pid, bootstrap, data_dir, ...)."""
    click.echo(json.dumps(LocalKafka(data_dir).status(), indent=2, sort_keys=True))


@kafka_group.command("logs")
@_data_dir_option()
@click.option(
    "--lines",
    "-n",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    envvar="VOLTGUARD_KAFKA_LOG_LINES",
    show_envvar=True,
    help="How many lines of the end of the broker log to print.",
)
def logs(data_dir: Path | None, lines: int) -> None:
    """Print the end of the broker log (and JVM console output, if any)."""
    kafka = LocalKafka(data_dir)
    tail = kafka.log_tail(lines)
    if not tail:
        _fail(FileNotFoundError(f"no broker log in {(data_dir or default_data_dir())}"))
    click.echo("\n".join(tail))
