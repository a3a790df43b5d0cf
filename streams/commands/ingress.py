"""``voltguard ingress``: serve the payment ingress (Stripe, Adyen, generic) until stopped.

Secrets come only from the environment (never from options, which ``ps`` shows):
``VOLTGUARD_STRIPE_WEBHOOK_SECRETS`` (comma-separated, for rotation),
``VOLTGUARD_ADYEN_HMAC_KEY`` (hex), ``VOLTGUARD_INGRESS_API_TOKEN`` and
``VOLTGUARD_HASH_SECRET`` (required). An endpoint whose secret is unset answers 503.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging

import click
from aiohttp import web

from streams.commands import until_signal
from streams.ingress import IngressConfig, KafkaDelivery, make_app
from streams.metrics import serve_metrics
from streams.settings import ConfigError, Settings

__all__ = ["ingress", "serve"]

log = logging.getLogger(__name__)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run the ingress on ``settings.ingress_addr:ingress_port`` until cancelled."""
    config = IngressConfig.from_settings(settings)
    producer = KafkaDelivery(settings.kafka.client_config(), asyncio.get_running_loop())
    runner = web.AppRunner(make_app(config, producer), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.ingress_addr, settings.ingress_port, backlog=1024)
    await site.start()
    log.info("payment ingress on %s:%d (%r)", settings.ingress_addr, settings.ingress_port, config)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        left = await asyncio.to_thread(producer.close)
        if left:
            log.error("%d ingress messages were not delivered at shutdown", left)


def check_ingress_settings(settings: Settings) -> None:
    """Fail at start-up on ingress settings that cannot work (naming the env variable)."""
    settings.require_hash_secret()
    key = settings.adyen_hmac_key.get()
    if key:
        try:
            binascii.unhexlify(key)
        except (binascii.Error, ValueError):
            raise ConfigError(
                "adyen_hmac_key (env VOLTGUARD_ADYEN_HMAC_KEY): must be hex-encoded"
            ) from None
    if not (settings.stripe_secrets() or key or settings.ingress_api_token):
        raise ConfigError(
            "no endpoint configured: set VOLTGUARD_STRIPE_WEBHOOK_SECRETS, "
            "VOLTGUARD_ADYEN_HMAC_KEY or VOLTGUARD_INGRESS_API_TOKEN"
        )


@click.command("ingress")
@click.option("--addr", envvar="VOLTGUARD_INGRESS_ADDR", default=None,
              help="Listen address [default: 127.0.0.1].")  # fmt: skip
@click.option("--port", envvar="VOLTGUARD_INGRESS_PORT", type=int, default=None,
              help="Listen port [default: 8085].")  # fmt: skip
@click.option("--bootstrap-servers", envvar="VOLTGUARD_BOOTSTRAP_SERVERS", default=None,
              help="Kafka bootstrap servers (default: the project's local broker).")  # fmt: skip
@click.option("--tolerance-s", envvar="VOLTGUARD_WEBHOOK_TOLERANCE_S", type=int, default=None,
              help="Stripe signature timestamp tolerance, seconds [default: 300].")  # fmt: skip
def ingress(
    addr: str | None, port: int | None, bootstrap_servers: str | None, tolerance_s: int | None
) -> None:
    """Serve POST /webhooks/stripe, /webhooks/adyen, /payments and GET /healthz.

    Prometheus /metrics is served on VOLTGUARD_METRICS_PORT (unset: off), apart from the
    webhook port.
    """
    from streams.cli import _settings  # late: streams.cli imports this module

    settings = _settings(
        bootstrap_servers, ingress_addr=addr, ingress_port=port, webhook_tolerance_s=tolerance_s
    )
    try:
        check_ingress_settings(settings)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve_metrics(settings.metrics_port, settings.metrics_addr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(until_signal(serve(settings)))
