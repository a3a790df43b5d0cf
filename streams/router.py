"""The alert router: fraud alerts and reconciliation mismatches -> PagerDuty and Slack.

A :class:`~streams.loop.TransactionalLoop` stage. Each batch: decode, route
(:mod:`topics.alerts`), skip what the delivery record says was already done, send the rest
over HTTP (aiohttp; one task per destination, in input order, so a trigger goes before its
resolve), then return one delivery-record row per attempt outcome, plus a dead letter per
failed delivery, which the loop commits in the batch's transaction with the offsets.

Sending: a token bucket per destination; retries on 429, 5xx and connection errors with
full-jitter exponential backoff, at least the Retry-After; at most ``router_max_attempts``
attempts within ``router_delivery_deadline_s``, then the delivery is recorded ``failed``,
logged and dead-lettered (it is not retried after a restart). Other 4xx fail at once. After
a failure the destination's further deliveries in the same batch get one attempt each. The
destinations of a batch are sent concurrently, so a failing one never holds up the others'
requests (the batch's commit still waits for it: bounded by the deadline and attempts).

Delivery guarantee
------------------
The record (``alert_deliveries``, compacted, key ``notice|destination|action``) is written in
the same transaction as the consumed offsets. Once that transaction is committed, a
(notice, destination, action) is never sent again: not after a restart, not when detection
or billing publishes the same alert id again, and a resolve follows a delivered trigger
only once. If the router dies after a destination accepted a request but before the commit,
the batch is redone and the request is sent again: at-least-once in that window. For
PagerDuty that is harmless (the same ``dedup_key`` updates the open incident, and a second
resolve is a no-op) because a trigger and the resolve of the same notice are never in one
transaction (:meth:`RouterStage.split`): redone together they would open a second incident.
For Slack it is a duplicate message, as incoming webhooks have no idempotency key.

The record also keeps each reconciliation delivery's ``revision``. A result older than the
opposite action already delivered for it (a mismatch at or below the delivered resolve's
revision, a ``matched`` below the delivered trigger's) is not sent but counted ``stale``
and logged: revisions only grow per result id, so only input read again can be older, and
sending it would open a second incident or close the open one. The fault test twice saw an
incident opened twice without a cause found; input read again while the record was newer
gives exactly that, and this rules it out whatever the cause.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import msgspec
from confluent_kafka import Message

from streams.dead_letters import dead_letter_output
from streams.loop import Output, TransactionalLoop
from streams.settings import ConfigError, Settings
from topics import alerts
from topics.alerts import Destination, Notice, RouterConfig, TokenBucket
from topics.catalog import TopicSpec, changelog_spec, topic
from topics.codec import decode
from topics.records import FraudAlert, ReconciliationResult
from topics.times import to_ms

__all__ = ["DeliveryFailed", "RouterLoop", "RouterStage", "Sender"]

log = logging.getLogger(__name__)

DEFAULT_ROUTER_GROUP = "voltguard-router"


class DeliveryFailed(Exception):
    """A delivery gave up: the destination, the action, the attempts and the last error."""


@dataclass(slots=True)
class Delivery:
    notice: Notice
    dest: Destination
    action: alerts.Action
    partition: int
    message: tuple[str, int, int, bytes | None, bytes | None]
    status: str = "pending"
    attempts: int = 0
    error: str = ""

    @property
    def record_key(self) -> str:
        return f"{self.notice.key}|{self.dest.name}|{self.action}"


@dataclass(slots=True)
class RouterBatch:
    outputs: list[Output] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)


class Sender:
    """Sends deliveries with aiohttp: rate limit, retries, backoff, a deadline per delivery."""

    def __init__(self, settings: Settings, config: RouterConfig) -> None:
        self.settings = settings
        self.config = config
        self.buckets = {
            name: TokenBucket(rate_per_s=d.rate_per_s, burst=d.burst)
            for name, d in config.destinations.items()
        }
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._random = random.Random()

    def send_all(self, deliveries: list[Delivery]) -> None:
        """Send every delivery; sets ``status`` (``delivered`` or ``failed``) on each."""
        by_dest: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_dest.setdefault(d.dest.name, []).append(d)
        self._loop.run_until_complete(self._send_all(by_dest))

    async def _send_all(self, by_dest: dict[str, list[Delivery]]) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.router_request_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        await asyncio.gather(*(self._send_in_order(ds) for ds in by_dest.values()))

    async def _send_in_order(self, deliveries: list[Delivery]) -> None:
        # Once a delivery to this destination failed in this batch, the rest get one
        # attempt each: a dead destination costs a batch one deadline, not one per alert.
        attempts = self.settings.router_max_attempts
        for d in deliveries:
            try:
                await asyncio.wait_for(
                    self._send_one(d, attempts), self.settings.router_delivery_deadline_s
                )
                d.status = "delivered"
            except (DeliveryFailed, TimeoutError) as exc:
                d.status = "failed"
                attempts = 1
                d.error = str(exc) or f"deadline passed after {d.attempts} attempts"
                log.warning(
                    "delivery %s failed after %d attempts: %s", d.record_key, d.attempts, d.error
                )

    async def _send_one(self, d: Delivery, max_attempts: int) -> None:
        s = self.settings
        link = self.config.link(d.notice)
        if d.dest.type == "pagerduty":
            body = alerts.pagerduty_event(d.dest, d.notice, d.action, link=link)
        else:
            body = alerts.slack_message(d.notice, d.action, link=link)
        data = alerts.dumps(body)
        headers = {"Content-Type": "application/json"}
        assert self._session is not None
        while True:
            wait = self.buckets[d.dest.name].take(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
            d.attempts += 1
            retry_after = 0.0
            try:
                async with self._session.post(d.dest.url, data=data, headers=headers) as resp:
                    text = await resp.text()
                    if 200 <= resp.status < 300:
                        return
                    error = f"HTTP {resp.status}: {text[:200]}"
                    if resp.status != 429 and resp.status < 500:
                        raise DeliveryFailed(f"{d.dest.name}: {error} (not retryable)")
                    retry_after = _retry_after_s(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if d.attempts >= max_attempts:
                raise DeliveryFailed(f"{d.dest.name}: {d.attempts} attempts, last {error}")
            pause = alerts.backoff_s(
                d.attempts, base_s=s.router_backoff_base_s, max_s=s.router_backoff_max_s,
                jitter=self._random.random(),
            )  # fmt: skip
            log.info("retry %s in %.2f s after %s", d.record_key, max(pause, retry_after), error)
            await asyncio.sleep(max(pause, retry_after))

    def close(self) -> None:
        if self._session is not None:
            self._loop.run_until_complete(self._session.close())
        self._loop.close()


def _retry_after_s(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0  # an HTTP date: fall back to the backoff


class RouterStage:
    """Routes a batch, sends it, and returns the delivery record rows and dead letters."""

    name = "router"

    def __init__(self, config: RouterConfig, sender: Sender, *, changelog: TopicSpec) -> None:
        self.config = config
        self.sender = sender
        self.changelog = changelog
        self.changelog_topic = changelog.name
        self._alerts = topic("fraud_alerts")
        self._mismatches = topic("reconciliation_mismatches")
        self.changelog_source = self._alerts
        self.input_topics = (self._alerts, self._mismatches)
        self.records: dict[int, dict[str, str]] = {}
        """Per partition: record key -> status (delivered, failed)."""
        self.revisions: dict[int, dict[str, int]] = {}
        """Per partition: record key -> the reconciliation revision it was for."""
        self.newest_ms: dict[str, int] = {}
        """Newest event time of the alerts and mismatches read, per topic short name."""

    def _saw(self, name: str, record: FraudAlert | ReconciliationResult) -> None:
        short = "fraud_alerts" if name == self._alerts else "reconciliation_mismatches"
        ms = to_ms(record.event_time)
        if ms > self.newest_ms.get(short, -1):
            self.newest_ms[short] = ms

    def event_times(self) -> dict[str, int]:
        return dict(self.newest_ms)

    def _done(self, partition: int, key: str) -> str | None:
        return self.records.get(partition, {}).get(key)

    def _stale(self, partition: int, notice: Notice, dest: str, action: alerts.Action) -> bool:
        """Whether a reconciliation result is older than the opposite action already
        delivered for it: a mismatch at or below the revision of the resolve sent, or a
        ``matched`` below the revision of the trigger sent. Revisions only grow per result
        id, so only input read again can be (a redo of an uncommitted batch is not: its
        rows were not committed either); sending it would open a second incident, or close
        the open one. Fraud alerts have no revision and are never stale."""
        revision = notice.details.get("revision") if notice.source == "reconciliation" else None
        if revision is None:
            return False
        other = "trigger" if action == "resolve" else "resolve"
        done = self.revisions.get(partition, {}).get(f"{notice.key}|{dest}|{other}")
        if done is None:
            return False
        return done >= revision if action == "trigger" else done > revision

    def split(self, batch: list[Message]) -> list[list[Message]]:
        """The batch in consecutive parts, each its own transaction, such that no part holds
        both a trigger and a resolve of the same notice (either way round: a result can
        mismatch again after its resolve, and pages again).

        A part redone after a crash (sent, not committed) then repeats only a trigger while
        its incident is open (PagerDuty folds it into that incident) or only a resolve (a
        no-op). Redoing a trigger and its resolve together opened a second incident.
        """
        parts: list[list[Message]] = [[]]
        actions: dict[str, bool] = {}  # notice key -> is a resolve, in the current part
        for m in batch:
            key, resolve = self._notice_key(m)
            if key is not None and actions.get(key, resolve) != resolve:
                parts.append([])
                actions = {}
            if key is not None:
                actions[key] = resolve
            parts[-1].append(m)
        return [part for part in parts if part]

    def _notice_key(self, m: Message) -> tuple[str | None, bool]:
        """(notice key, is a resolve) of an input message; (None, False) if undecodable
        (:meth:`process` dead-letters it)."""
        value = m.value()
        if value is None:
            return None, False
        try:
            if m.topic() == self._alerts:
                return decode(value, FraudAlert).alert_id, False
            result = decode(value, ReconciliationResult)
        except Exception:  # process() dead-letters it, with the reason
            return None, False
        return result.result_id, result.outcome == "matched"

    def process(self, batch: list[Message], now: datetime) -> RouterBatch:
        out = RouterBatch()
        pending: dict[str, Delivery] = {}
        for m in batch:
            message = (m.topic(), m.partition(), m.offset(), m.key(), m.value())
            if m.value() is None:
                continue
            try:
                if m.topic() == self._alerts:
                    record: FraudAlert | ReconciliationResult = decode(m.value(), FraudAlert)
                    notice = alerts.notice_from_alert(record)
                else:
                    record = decode(m.value(), ReconciliationResult)
                    notice = alerts.notice_from_mismatch(record, self.config.mismatch_severity)
                self._saw(m.topic(), record)
            except Exception as exc:  # bad input never stops the router
                out.outputs.append(
                    dead_letter_output(
                        stage=self.name, source_topic=m.topic(), partition=m.partition(),
                        offset=m.offset(), key=m.key(), value=m.value(), error=exc, now=now,
                    )
                )  # fmt: skip
                out.dead_letter_reasons[type(exc).__name__] += 1
                continue
            p = m.partition()
            if notice.resolved:
                # Resolve where a trigger was delivered (the record, or this batch).
                names = [
                    name
                    for name in self.config.destinations
                    if self._done(p, f"{notice.key}|{name}|trigger") == "delivered"
                    or f"{notice.key}|{name}|trigger" in pending
                ]
                targets = [(self.config.destinations[n], "resolve") for n in names]
            else:
                targets = [(dest, "trigger") for dest in self.config.route(notice)]
            if not targets:
                out.counts["unrouted"] += 1
            for dest, action in targets:
                d = Delivery(notice, dest, action, p, message)  # type: ignore[arg-type]
                if self._done(p, d.record_key) is not None or d.record_key in pending:
                    out.counts["already_recorded"] += 1
                    continue
                if self._stale(p, notice, dest.name, action):  # type: ignore[arg-type]
                    out.counts["stale"] += 1
                    log.warning(
                        "not sending %s (revision %s) from %s[%d]@%d: a later revision's %s "
                        "was delivered", d.record_key, notice.details.get("revision"),
                        message[0], message[1], message[2],
                        "resolve" if action == "trigger" else "trigger",
                    )  # fmt: skip
                    continue
                pending[d.record_key] = d
        deliveries = list(pending.values())
        if deliveries:
            self.sender.send_all(deliveries)
        for d in deliveries:
            out.deliveries.append(d)
            out.counts[d.status] += 1
            self.records.setdefault(d.partition, {})[d.record_key] = d.status
            row = {"status": d.status, "attempts": d.attempts, "at": now.isoformat()}
            revision = d.notice.details.get("revision")
            if d.notice.source == "reconciliation" and revision is not None:
                row["revision"] = revision
                self.revisions.setdefault(d.partition, {})[d.record_key] = revision
            if d.error:
                row["error"] = d.error
            out.outputs.append(
                Output(self.changelog_topic, d.record_key.encode(), msgspec.json.encode(row),
                       d.partition)
            )  # fmt: skip
            if d.status == "delivered":
                # A delivered resolve clears the trigger's row and a trigger the resolve's,
                # so a result that mismatches again after its resolve pages again.
                other = "trigger" if d.action == "resolve" else "resolve"
                opposite = f"{d.notice.key}|{d.dest.name}|{other}"
                self.revisions.get(d.partition, {}).pop(opposite, None)
                if self.records[d.partition].pop(opposite, None) is not None:
                    out.outputs.append(
                        Output(self.changelog_topic, opposite.encode(), None, d.partition)
                    )
            if d.status == "failed":
                t, part, off, key, value = d.message
                out.outputs.append(
                    dead_letter_output(
                        stage=self.name, source_topic=t, partition=part, offset=off, key=key,
                        value=value, error=DeliveryFailed(f"{d.record_key}: {d.error}"), now=now,
                    )
                )  # fmt: skip
                out.dead_letter_reasons["DeliveryFailed"] += 1
        return out

    def restore(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> int:
        table = self.records.setdefault(partition, {})
        revisions = self.revisions.setdefault(partition, {})
        for key, value in records:
            name = key.decode()
            if value is None:
                table.pop(name, None)
                revisions.pop(name, None)
                continue
            row = msgspec.json.decode(value)
            table[name] = row["status"]
            if isinstance(row.get("revision"), int):
                revisions[name] = row["revision"]
            else:
                revisions.pop(name, None)
        return len(table)

    def forget(self, partition: int) -> None:
        self.records.pop(partition, None)
        self.revisions.pop(partition, None)

    def record_metrics(self, result: RouterBatch) -> None:
        from streams.metrics import ALERT_DELIVERIES, DEAD_LETTERS, ROUTER_NOTICES

        for d in result.deliveries:
            ALERT_DELIVERIES.labels(destination=d.dest.name, action=d.action, status=d.status).inc()
        for outcome, n in result.counts.items():
            ROUTER_NOTICES.labels(outcome=outcome).inc(n)
        for reason, n in result.dead_letter_reasons.items():
            DEAD_LETTERS.labels(stage="router", error=reason).inc(n)


def load_config(settings: Settings) -> RouterConfig:
    """The routing config named by the settings, or a :class:`ConfigError` saying why not."""
    if not settings.router_config:
        raise ConfigError("router_config (env VOLTGUARD_ROUTER_CONFIG): required by the router")
    try:
        text = Path(settings.router_config).read_text()
        return alerts.parse_config(text, session_url=settings.router_session_url, env=os.environ)
    except (OSError, alerts.ConfigError) as exc:
        raise ConfigError(f"router_config (env VOLTGUARD_ROUTER_CONFIG): {exc}") from None


def RouterLoop(
    settings: Settings, *, config: RouterConfig | None = None, on_batch=None
) -> TransactionalLoop:
    """The router worker: :class:`RouterStage` in a :class:`TransactionalLoop`."""
    config = config if config is not None else load_config(settings)
    group = settings.router_group_id
    stage = RouterStage(
        config,
        Sender(settings, config),
        changelog=changelog_spec("alert_deliveries", group, DEFAULT_ROUTER_GROUP),
    )
    return TransactionalLoop(settings, stage, group_id=group, on_batch=on_batch)
