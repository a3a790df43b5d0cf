"""State recovery benchmark (``python -m streams.bench recovery``): figures for operations.md.

A billing worker that gets partitions (start, restart, rebalance) first replays their
changelog partitions (``voltguard.billing.cases.v1``, compacted) into its engines before
it consumes input: :meth:`streams.loop.TransactionalLoop._restore`, the code the worker
runs. This benchmark writes the changelog of N open sessions (each started, with
``--samples`` one-minute meter samples, as a billing engine encodes them) over the 6
partitions, and times that restore of all 6 partitions in one process, for each N in
``--sessions`` (cumulative: the larger size adds sessions to the smaller's). Linear
scaling shows as a constant microseconds-per-session; the 1 M figure is that rate times
a million.

The cases are cloned from ``--templates`` really encoded ones (session id replaced), so
their sizes and decoding cost are the engine's own.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import click

from streams.bench_common import broker, load_average, open_session_events, write_json
from streams.bench_common import synthetic_session_id as _session_id
from topics.catalog import SESSION_PARTITIONS

__all__ = ["bench_recovery", "clone", "linear_fit", "open_session_changelog"]


def open_session_changelog(sessions: int, samples: int) -> list[tuple[bytes, bytes]]:
    """Changelog rows ``(key, value)`` of ``sessions`` open sessions, as a billing engine
    writes them (one started event and ``samples - 1`` one-minute readings each)."""
    from billing.engine import WATERMARK_KEY, BillingEngine
    from topics.records import SessionEvent

    engine = BillingEngine()
    for event in open_session_events(sessions, samples):
        if isinstance(event, SessionEvent):
            engine.on_session_event(event)
        else:
            engine.on_reading(event)
    rows = [(k.encode(), v) for k, v in engine.take_changes() if k != WATERMARK_KEY and v]
    return rows


def clone(template: tuple[bytes, bytes], template_n: int, n: int) -> tuple[bytes, bytes]:
    """The template's changelog row with its session id replaced by session ``n``'s.

    >>> clone((_session_id(1).encode(), b"x" + _session_id(1).encode()), 1, 2)[1][1:9]
    b'00000002'
    """
    old, new = _session_id(template_n).encode(), _session_id(n).encode()
    key, value = template
    return key.replace(old, new), value.replace(old, new)


def _produce(bootstrap: str, topic_name: str, rows: Any, first: int) -> tuple[int, int]:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "lz4",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
        }
    )
    count = size = 0
    for i, (key, value) in enumerate(rows, first):
        while True:
            try:
                producer.produce(topic_name, value, key, partition=i % SESSION_PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        size += len(key) + len(value)
    if producer.flush(120):
        raise RuntimeError("changelog rows not delivered")
    return count, size


@click.command("recovery")
@click.option("--sessions", default="20000,100000,300000", show_default=True,
              help="Open-session counts to restore, comma-separated (ascending).")  # fmt: skip
@click.option("--samples", default=60, show_default=True,
              help="Meter samples per open session (one a minute: 60 = an hour in).")  # fmt: skip
@click.option("--templates", default=500, show_default=True,
              help="Distinct really encoded sessions the rows are cloned from.")  # fmt: skip
@click.option("--bootstrap-servers", envvar="VOLTGUARD_BENCH_BOOTSTRAP", default=None,
              help="Use this broker instead of starting a fresh local one.")  # fmt: skip
@click.option("--billing-group", default=None,
              help="Billing consumer group (default: the standard one); another group has "
                   "its own changelog topic, so a shared broker's state is not mixed in.")  # fmt: skip
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")  # fmt: skip
def bench_recovery(
    sessions: str, samples: int, templates: int, bootstrap_servers: str | None,
    billing_group: str | None, json_out: Path | None,
) -> None:  # fmt: skip
    """Seconds for a billing worker to restore N open sessions from its changelog."""
    from streams.billing import BillingLoop
    from streams.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    sizes = sorted(int(x) for x in sessions.split(",") if x.strip())
    rows = open_session_changelog(templates, samples)
    if len(rows) != templates:
        raise click.ClickException(f"expected {templates} case rows, got {len(rows)}")
    runs = []
    with broker(bootstrap_servers, prefix="voltguard-bench-recovery-") as kafka:
        settings = Settings.from_env(
            {}, bootstrap_servers=kafka.bootstrap, instance_id=f"bench-recovery-{os.getpid()}",
            billing_group_id=billing_group,
        )  # fmt: skip
        _create_changelog(kafka.bootstrap, settings)
        written = 0
        written_bytes = 0
        for size in sizes:
            new = (clone(rows[i % templates], i % templates, i) for i in range(written, size))
            count, nbytes = _produce(kafka.bootstrap, _changelog(settings), new, written)
            written += count
            written_bytes += nbytes
            loop = BillingLoop(settings, tariffs={}, stations={})
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            restored = loop._restore(list(range(SESSION_PARTITIONS)))
            seconds = time.perf_counter() - started
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            engines = loop.stage.processor.engines  # type: ignore[attr-defined]
            open_now = sum(e.open_sessions() for e in engines.values())
            loop.consumer.close()
            runs.append(
                {
                    "open_sessions": written,
                    "restored_cases": restored,
                    "restored_open_sessions": open_now,
                    "changelog_bytes": written_bytes,
                    "changelog_bytes_per_session": round(written_bytes / written),
                    "restore_s": round(seconds, 2),
                    "restore_us_per_session": round(seconds / written * 1e6, 1),
                    "sessions_per_s": round(written / seconds),
                    "peak_rss_growth_mib": round((rss1 - rss0) / 1024),
                }
            )
            click.echo(
                f"{written:>9,} open sessions ({written_bytes / 2**20:,.0f} MiB changelog): "
                f"restored {restored:,} cases in {seconds:.2f} s = "
                f"{seconds / written * 1e6:.1f} us each ({written / seconds:,.0f}/s)"
            )
            del loop, engines
    fixed_s, per_session_s = linear_fit([(r["open_sessions"], r["restore_s"]) for r in runs])
    million_s = fixed_s + per_session_s * 1e6
    figures = {
        "benchmark": "recovery",
        "samples_per_session": samples,
        "partitions": SESSION_PARTITIONS,
        "runs": runs,
        "fit_fixed_s": round(fixed_s, 2),
        "fit_us_per_session": round(per_session_s * 1e6, 2),
        "extrapolated_1m_open_sessions_restore_s": round(million_s, 1),
        "extrapolated_1m_open_sessions_changelog_gib": round(
            runs[-1]["changelog_bytes_per_session"] * 1e6 / 2**30, 2
        ),
        "extrapolation": "least-squares line through the runs (fixed seconds + us per "
        "session), evaluated at 1e6 sessions, one worker restoring all 6 partitions",
        "cores": os.cpu_count(),
        "load_average": load_average(),
    }
    click.echo(
        f"fit: {fixed_s:.2f} s fixed + {per_session_s * 1e6:.1f} us per open session; "
        f"1,000,000 open sessions, extrapolated: {million_s:.0f} s of restore in one worker "
        f"(6 partitions), {figures['extrapolated_1m_open_sessions_changelog_gib']} GiB of "
        f"changelog; split over W workers, each restores its share"
    )
    write_json(figures, json_out)


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``y = a + b x``; one point: through 0.

    >>> linear_fit([(1, 3), (2, 5), (3, 7)])
    (1.0, 2.0)
    >>> linear_fit([(4, 2)])
    (0.0, 0.5)
    """
    if len(points) == 1:
        x, y = points[0]
        return 0.0, y / x
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("the points need at least two different x")
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def _changelog(settings: Any) -> str:
    from streams.settings import DEFAULT_BILLING_GROUP
    from topics.catalog import changelog_spec

    return changelog_spec("billing_state", settings.billing_group_id, DEFAULT_BILLING_GROUP).name


def _create_changelog(bootstrap: str, settings: Any) -> None:
    from confluent_kafka.admin import AdminClient

    from streams.admin import create_topics
    from streams.settings import DEFAULT_BILLING_GROUP
    from topics.catalog import changelog_spec

    spec = changelog_spec("billing_state", settings.billing_group_id, DEFAULT_BILLING_GROUP)
    create_topics(AdminClient({"bootstrap.servers": bootstrap}), specs={spec.name: spec})
