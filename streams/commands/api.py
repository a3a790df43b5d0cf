"""``voltguard api``: serve the operator API until stopped.

The token comes only from the environment (``VOLTGUARD_API_TOKEN``; an option would show in
``ps``). The process follows the topics into its view (``VOLTGUARD_API_DB``), serves at once
(``/readyz`` says 503 until the view caught up with the topics' end at start-up) and exits
with status 1 if the follower stops, so that a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import click
from aiohttp import web

from streams.api import KafkaLabelWriter, make_app
from streams.api_follower import ViewFollower
from streams.api_store import ViewStore
from streams.commands import until_signal
from streams.ingress import KafkaDelivery
from streams.settings import ConfigError, Settings
from topics.operator_view import Health

__all__ = ["api", "serve"]

log = logging.getLogger(__name__)


def check_api_settings(settings: Settings) -> None:
    """Fail at start-up on API settings that cannot work (naming the env variable)."""
    if not settings.api_token:
        raise ConfigError("api_token (env VOLTGUARD_API_TOKEN): required; set a long random value")
    if len(settings.api_token.get()) < 16:
        raise ConfigError("api_token (env VOLTGUARD_API_TOKEN): use at least 16 characters")
    if not 0 < settings.api_port < 65536:
        raise ConfigError("api_port (env VOLTGUARD_API_PORT): must be 1 to 65535")


def _health(follower: ViewFollower, store: ViewStore) -> Health:
    if follower.error is not None or not follower.alive:
        detail = f"{type(follower.error).__name__}: {follower.error}" if follower.error else ""
        return Health(
            status="failed",
            caught_up=False,
            lag=follower.lag(),
            counts={},
            detail=detail or "the follower is not running",
        )
    caught_up = follower.caught_up.is_set()
    return Health(
        status="ok" if caught_up else "starting",
        caught_up=caught_up,
        lag=follower.lag(),
        counts=store.counts(),
    )


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Follow the topics and serve on ``settings.api_addr:api_port`` until cancelled.

    Raises RuntimeError when the follower stops on its own (the view would go stale).
    """
    store = ViewStore(settings.api_db)
    follower = ViewFollower(settings, store)
    follower.start()
    delivery = KafkaDelivery(settings.kafka.client_config(), asyncio.get_running_loop())
    app = make_app(
        store,
        KafkaLabelWriter(delivery),
        token=settings.api_token.get(),
        health=lambda: _health(follower, store),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.api_addr, settings.api_port)
    await site.start()
    log.info(
        "operator API on %s:%d, view in %s", settings.api_addr, settings.api_port, settings.api_db
    )
    if ready is not None:
        ready.set()
    try:
        while follower.alive:
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the view follower stopped: {follower.error!r}")
    finally:
        await runner.cleanup()
        await asyncio.to_thread(follower.stop)
        left = await asyncio.to_thread(delivery.close)
        if left:
            log.error("%d labels were not delivered at shutdown", left)
        store.close()


@click.command("api")
@click.option(
    "--addr", envvar="VOLTGUARD_API_ADDR", default=None, help="Listen address [default: 127.0.0.1]."
)
@click.option(
    "--port",
    envvar="VOLTGUARD_API_PORT",
    type=int,
    default=None,
    help="Listen port [default: 8088].",
)
@click.option(
    "--db",
    envvar="VOLTGUARD_API_DB",
    default=None,
    help="SQLite file of the view, or :memory: to rebuild it from the topics at "
    "every start [default: ./voltguard-api.sqlite3].",
)
@click.option(
    "--bootstrap-servers",
    envvar="VOLTGUARD_BOOTSTRAP_SERVERS",
    default=None,
    help="Kafka bootstrap servers (default: the project's local broker).",
)
def api(addr: str | None, port: int | None, db: str | None, bootstrap_servers: str | None) -> None:
    """Serve the operator API (sessions, alerts, labels, reconciliation summary).

    Needs VOLTGUARD_API_TOKEN. The OpenAPI document is GET /openapi.json.
    """
    from streams.cli import _settings  # late: streams.cli imports this module

    settings = _settings(bootstrap_servers, api_addr=addr, api_port=port, api_db=db)
    try:
        check_api_settings(settings)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(until_signal(serve(settings)))
        except RuntimeError as exc:
            log.error("%s", exc)
            raise SystemExit(1) from None
