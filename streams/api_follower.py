"""The operator API's Kafka shell: follow the output topics into the view, write labels.

:class:`ViewFollower` is a thread that assigns itself every partition of the followed topics
(:data:`topics.operator_view.FOLLOWED`; no consumer group, so any number of API replicas can
run, each with its own view), starting at the positions the store committed (the
beginning for a new store), reads committed records only, and applies each batch with
:meth:`streams.api_store.ViewStore.apply`. A record that breaks its contract is not applied:
it goes to the dead-letter topic with its bytes and the reason (stage ``api``; the id is a
hash of where it came from, so a redone batch does not make a second one), is logged and
counted, and the follower goes on.

``caught_up`` is set once every partition reached the end it had when the follower started:
the view is then as fresh as the topics were at start-up (``/readyz``). After that,
:meth:`ViewFollower.lag` is the distance to the high watermarks the consumer last saw in its
fetch responses (no extra request), also exported as ``voltguard_api_view_lag_records``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client import Counter, Gauge

from streams.api_store import ViewStore
from streams.dead_letters import dead_letter_output
from streams.metrics import DEAD_LETTERS
from streams.settings import Settings
from streams.topic_reader import handle_error, topic_partitions, watermarks_until
from topics.catalog import topic
from topics.exceptions import RecordDecodeError
from topics.operator_view import FOLLOWED, ViewRow, project

__all__ = ["VIEW_RECORDS", "ViewFollower"]

log = logging.getLogger(__name__)

VIEW_RECORDS = Counter(
    "voltguard_api_view_records_total",
    "Records the operator API's follower consumed, by topic and outcome (applied, skipped, "
    "dead_letter).",
    ["topic", "outcome"],
)
VIEW_LAG = Gauge(
    "voltguard_api_view_lag_records",
    "Records between the operator API's view and the high watermark of a followed topic, "
    "summed over its partitions (as of the consumer's last fetch).",
    ["topic"],
)


class ViewFollower:
    """Keeps a :class:`ViewStore` up to date with the followed topics (a daemon thread)."""

    def __init__(
        self,
        settings: Settings,
        store: ViewStore,
        *,
        batch_max: int = 2000,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.batch_max = batch_max
        self.start_timeout_s = start_timeout_s
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._names = {topic(short): short for short in FOLLOWED}
        self._thread = threading.Thread(target=self._run, name="api-view-follower", daemon=True)
        self._ends: dict[tuple[str, int], int] = {}
        self._highs: dict[tuple[str, int], int] = {}
        self._positions: dict[tuple[str, int], int] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def lag(self) -> dict[str, int]:
        """Records behind the latest known high watermark, per topic."""
        return self._behind(self._highs)

    def _behind(self, ends: dict[tuple[str, int], int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for (name, p), end in ends.items():
            behind = max(end - self._positions.get((name, p), 0), 0)
            out[self._names[name]] = out.get(self._names[name], 0) + behind
        return out

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # the API answers 503 on /readyz and logs why
            self.error = exc
            log.exception("operator API view follower stopped")

    def _follow(self) -> None:
        kafka = self.settings.kafka.client_config()
        consumer = Consumer(
            {
                **kafka,
                "group.id": f"voltguard-api-{self.settings.instance_id}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        producer = Producer({**kafka, "enable.idempotence": True, "acks": "all"})
        try:
            partitions = topic_partitions(consumer, self._names, self.start_timeout_s)
            stored = self.store.positions()
            deadline = time.monotonic() + self.start_timeout_s
            for name, p in partitions:
                low, high = watermarks_until(consumer, TopicPartition(name, p), deadline)
                self._positions[(name, p)] = max(stored.get((name, p), low), low)
                self._ends[(name, p)] = self._highs[(name, p)] = high
            consumer.assign(
                [
                    TopicPartition(name, p, stored.get((name, p), OFFSET_BEGINNING))
                    for name, p in partitions
                ]
            )
            log.info(
                "operator API view follows %d partitions from %s",
                len(partitions),
                "stored positions" if stored else "the beginning",
            )
            self._check_caught_up()
            while not self._stop.is_set():
                messages = consumer.consume(self.batch_max, 0.2)
                if messages:
                    self._handle(messages, producer)
                self._watch(consumer)
                self._check_caught_up()
        finally:
            producer.flush(10)
            consumer.close()

    def _handle(self, messages: list[Any], producer: Producer) -> None:
        rows: list[ViewRow] = []
        moved: dict[tuple[str, int], int] = {}
        letters = []
        for msg in messages:
            name, p = msg.topic(), msg.partition()
            if msg.error() is not None:
                eof = handle_error(msg, "api view follower")
                if eof is not None:
                    self._positions[(name, p)] = max(self._positions.get((name, p), 0), eof)
                continue
            short = self._names[name]
            moved[(name, p)] = msg.offset() + 1
            try:
                row = project(short, msg.key(), msg.value(), p, msg.offset())
            except (RecordDecodeError, ValueError) as exc:
                VIEW_RECORDS.labels(topic=short, outcome="dead_letter").inc()
                DEAD_LETTERS.labels(stage="api", error=type(exc).__name__).inc()
                log.warning("api view: %s[%d]@%d rejected: %s", name, p, msg.offset(), exc)
                letters.append(
                    dead_letter_output(
                        stage="api",
                        source_topic=name,
                        partition=p,
                        offset=msg.offset(),
                        key=msg.key(),
                        value=msg.value(),
                        error=exc,
                        now=datetime.now(UTC),
                    )
                )
                continue
            if row is None:
                VIEW_RECORDS.labels(topic=short, outcome="skipped").inc()
            else:
                VIEW_RECORDS.labels(topic=short, outcome="applied").inc()
                rows.append(row)
        if letters:
            # before the view commits the positions past them: at-least-once, deduplicable
            for out in letters:
                producer.produce(out.topic, out.value, out.key)
            if producer.flush(30) != 0:
                raise RuntimeError("dead letters of the api view were not acknowledged")
        self.store.apply(rows, moved)
        self._positions.update(moved)

    def _watch(self, consumer: Consumer) -> None:
        """Refresh the known high watermarks from the consumer's cache (no request)."""
        for name, p in self._highs:
            try:
                _low, high = consumer.get_watermark_offsets(TopicPartition(name, p), cached=True)
            except Exception:  # not fetched yet: keep the last known one
                continue
            if high >= 0:
                self._highs[(name, p)] = int(high)
        for short, behind in self.lag().items():
            VIEW_LAG.labels(topic=short).set(behind)

    def _check_caught_up(self) -> None:
        if not self.caught_up.is_set() and not any(self._behind(self._ends).values()):
            log.info("operator API view caught up with the topics' end at start-up")
            self.caught_up.set()
