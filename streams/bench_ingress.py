"""Benchmark of the payment ingress (``make bench-ingress``): figures, not a pass/fail test.

Starts a fresh local broker (unless ``--bootstrap-servers``), creates the catalog's topics,
runs ``voltguard ingress`` in its own process, and from this process (the second one) sends
``--requests`` signed Stripe ``charge.captured`` webhooks, each with its own event id, over
``--concurrency`` keep-alive loopback connections (aiohttp client). Every request is
verified, mapped, produced to both topics and answered only after Kafka acknowledged it,
exactly as in production. Prints verified webhooks/s and p50/p95/p99/max latency (measured
by the client, so it includes the client's own queueing). Target: >= 2,000/s, p99 < 50 ms.

    python -m streams.bench_ingress --requests 20000 --concurrency 32
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import orjson

from streams.bench_common import broker, percentile, write_json
from streams.localkafka import find_free_port
from topics.adapters.signatures import stripe_signature_header

SECRET = "whsec_bench"
TARGET_PER_S = 2000
TARGET_P99_MS = 50.0


def _bodies(n: int, run: str) -> list[bytes]:
    template = {
        "id": "",
        "object": "event",
        "api_version": "2023-10-16",
        "created": int(time.time()),
        "type": "charge.captured",
        "data": {
            "object": {
                "id": "",
                "object": "charge",
                "amount": 5000,
                "amount_captured": 1834,
                "amount_refunded": 0,
                "currency": "eur",
                "payment_intent": "",
                "metadata": {"station_id": "", "transaction_id": ""},
                "payment_method_details": {
                    "type": "card",
                    "card": {"brand": "visa", "last4": "4242", "fingerprint": "", "wallet": None},
                },
            }
        },
    }
    out = []
    for i in range(n):
        obj = template["data"]["object"]  # type: ignore[index]
        template["id"] = f"evt_{run}_{i}"
        obj["id"] = f"ch_{run}_{i}"
        obj["payment_intent"] = f"pi_{run}_{i}"
        obj["metadata"] = {"station_id": f"CP-{i % 500}", "transaction_id": str(i)}
        obj["payment_method_details"]["card"]["fingerprint"] = f"fp{i % 5000:08d}"
        out.append(orjson.dumps(template))
    return out


async def _load(
    url: str, bodies: list[bytes], concurrency: int, max_s: float
) -> tuple[float, list[float], dict[int, int]]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(bodies)
    deadline = time.monotonic() + max_s
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(http: aiohttp.ClientSession) -> None:
        for body in queue:
            if time.monotonic() > deadline:
                return
            headers = {
                "Stripe-Signature": stripe_signature_header(
                    body, secret=SECRET, timestamp=int(time.time())
                ),
                "Content-Type": "application/json",
            }
            started = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies, statuses


async def _wait_ready(url: str, timeout_s: float = 30.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingress did not answer {url} within {timeout_s}s")
            await asyncio.sleep(0.2)


@click.command()
@click.option("--requests", "count", default=20_000, show_default=True,
              help="Signed webhooks to send (each a distinct event id).")  # fmt: skip
@click.option("--concurrency", default=32, show_default=True,
              help="Concurrent keep-alive connections of the load generator.")  # fmt: skip
@click.option("--warmup", default=1_000, show_default=True,
              help="Webhooks sent first and not measured.")  # fmt: skip
@click.option("--max-seconds", default=120.0, show_default=True,
              help="Stop sending after this long, whatever is left.")  # fmt: skip
@click.option("--bootstrap-servers", envvar="VOLTGUARD_BENCH_BOOTSTRAP", default=None,
              help="Use this broker instead of starting a fresh local one.")  # fmt: skip
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")  # fmt: skip
def main(
    count: int,
    concurrency: int,
    warmup: int,
    max_seconds: float,
    bootstrap_servers: str | None,
    json_out: Path | None,
) -> None:
    """Verified Stripe webhooks/s and latency of one ingress process, load from another."""
    started: list[subprocess.Popen[bytes]] = []
    with broker(bootstrap_servers, prefix="voltguard-bench-ingress-") as kafka:
        try:
            _measure(kafka.bootstrap, count, concurrency, warmup, max_seconds, json_out, started)
        finally:
            for ingress in started:
                ingress.terminate()
                try:
                    ingress.wait(20)
                except subprocess.TimeoutExpired:
                    ingress.kill()


def _measure(
    bootstrap_servers: str,
    count: int,
    concurrency: int,
    warmup: int,
    max_seconds: float,
    json_out: Path | None,
    started: list[subprocess.Popen[bytes]],
) -> None:
    """Start the ingress process (appended to ``started``), load it, print and write."""
    port = find_free_port()
    env = {
        **os.environ,
        "VOLTGUARD_HASH_SECRET": "bench-hash-secret",
        "VOLTGUARD_STRIPE_WEBHOOK_SECRETS": SECRET,
        "VOLTGUARD_INGRESS_DEDUPE_IDS": str(count + warmup + 10),
    }
    ingress = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "ingress", "--port", str(port),
         "--addr", "127.0.0.1", "--bootstrap-servers", bootstrap_servers],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    started.append(ingress)
    base = f"http://127.0.0.1:{port}"
    asyncio.run(_wait_ready(base + "/healthz"))
    run = os.urandom(4).hex()
    bodies = _bodies(warmup + count, run)
    asyncio.run(_load(base + "/webhooks/stripe", bodies[:warmup], concurrency, max_seconds))
    elapsed, latencies, statuses = asyncio.run(
        _load(base + "/webhooks/stripe", bodies[warmup:], concurrency, max_seconds)
    )
    ok = statuses.get(200, 0)
    latencies.sort()
    figures = {
        "requests": len(latencies),
        "accepted_200": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "verified_webhooks_per_s": round(ok / elapsed),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "target_per_s": TARGET_PER_S,
        "target_p99_ms": TARGET_P99_MS,
        "cores": os.cpu_count(),
    }
    click.echo(
        f"verified webhooks/s : {figures['verified_webhooks_per_s']:>8,} "
        f"(target {TARGET_PER_S:,}; {ok:,} x 200 of {len(latencies):,} in {elapsed:.1f} s, "
        f"{concurrency} connections)\n"
        f"latency p50/p95/p99 : {figures['p50_ms']} / {figures['p95_ms']} / "
        f"{figures['p99_ms']} ms (target p99 < {TARGET_P99_MS:g} ms), max {figures['max_ms']} ms"
    )
    write_json(figures, json_out)


if __name__ == "__main__":  # pragma: no cover
    main()
