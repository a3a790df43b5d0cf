"""Creating the catalog's topics on a Kafka cluster (idempotent, partition-checked)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from topics.catalog import CATALOG, TopicSpec

__all__ = [
    "TopicMismatch",
    "TopicState",
    "abort_stale_transactions",
    "create_topics",
    "describe_topics",
]

log = logging.getLogger(__name__)


class TopicMismatch(RuntimeError):
    """An existing topic has a partition count other than the catalog's.

    Tables and their changelogs must be co-partitioned with their source topics, so voltguard
    refuses to run on such a topic rather than silently mis-joining sessions.
    """


@dataclass(frozen=True, slots=True)
class TopicState:
    short: str
    name: str
    wanted_partitions: int
    partitions: int | None  # None: does not exist
    created: bool = False


def describe_topics(admin: AdminClient, specs: Iterable[tuple[str, TopicSpec]] | None = None,
                    *, timeout_s: float = 10.0) -> list[TopicState]:  # fmt: skip
    """State of each catalog topic on the cluster."""
    metadata = admin.list_topics(timeout=timeout_s)
    out = []
    for short, spec in specs or CATALOG.items():
        found = metadata.topics.get(spec.name)
        partitions = len(found.partitions) if found is not None and found.error is None else None
        out.append(TopicState(short, spec.name, spec.partitions, partitions))
    return out


def _wait_for_leaders(admin: AdminClient, names: list[str], *, timeout_s: float) -> None:
    """Block until every partition of ``names`` has a leader (new topics need a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        ready = all(
            name in metadata.topics
            and metadata.topics[name].error is None
            and metadata.topics[name].partitions
            and all(p.leader >= 0 for p in metadata.topics[name].partitions.values())
            for name in names
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without partition leaders after {timeout_s}s: {names}")
        time.sleep(0.1)


def create_topics(
    admin: AdminClient,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    specs: dict[str, TopicSpec] | None = None,
) -> list[TopicState]:
    """Create every missing catalog topic; check the partition count of existing ones.

    Raises
    ------
    TopicMismatch
        Some existing topic has the wrong number of partitions (all are listed).
    """
    specs = specs if specs is not None else CATALOG
    states = describe_topics(admin, specs.items(), timeout_s=timeout_s)
    _refuse_mispartitioned(states)
    missing = [s for s in states if s.partitions is None]
    if not missing:
        return states
    new = [
        NewTopic(
            s.name,
            num_partitions=s.wanted_partitions,
            replication_factor=replication_factor,
            config=specs[s.short].topic_configs(),
        )
        for s in missing
    ]
    futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
    created = set()
    for name, future in futures.items():
        try:
            future.result()
            created.add(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    log.info("created %d topics", len(created))
    existed = {s.short for s in missing if s.name not in created}
    if existed:
        # Created meanwhile, or not yet in the metadata we described (another `topics
        # create`, or a topic made just before): check those partition counts too.
        deadline = time.monotonic() + timeout_s
        while True:
            again = describe_topics(
                admin, [(k, specs[k]) for k in sorted(existed)], timeout_s=timeout_s
            )
            if all(s.partitions is not None for s in again) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        _refuse_mispartitioned(again)
    _wait_for_leaders(admin, [s.name for s in missing], timeout_s=timeout_s)
    return [
        TopicState(s.short, s.name, s.wanted_partitions, s.wanted_partitions, created=True)
        if s.name in created
        else s
        for s in states
    ]


def _refuse_mispartitioned(states: list[TopicState]) -> None:
    wrong = [s for s in states if s.partitions is not None and s.partitions != s.wanted_partitions]
    if wrong:
        lines = ", ".join(
            f"{s.name} has {s.partitions} partitions, the catalog wants {s.wanted_partitions}"
            for s in wrong
        )
        raise TopicMismatch(
            f"refusing to use mis-partitioned topics: {lines}. Co-partitioned tables would "
            "mis-join sessions; recreate these topics (or migrate them) with the catalog's count."
        )


def abort_stale_transactions(
    bootstrap: str,
    topic_names: Iterable[str],
    *,
    min_age_s: float,
    dry_run: bool = False,
    client_config: str | None = None,
    timeout_s: float = 120.0,
) -> list[str]:
    """Abort transactions open on partitions of ``topic_names`` for ``min_age_s`` or more.

    An open transaction holds back every read_committed consumer of its partition until
    it ends, and one whose coordinator has lost it (a produce retried after the broker's
    restart, a producer that died mid-transaction) never ends by itself: the stage reading
    it stops with a small lag that does not move. This is the remedy of Kafka's
    ``kafka-transactions.sh find-hanging``/``abort`` (KIP-664), through the Java Admin API
    in ``deploy/kafka/AbortStaleTransactions.java``, run with the local broker's jars.
    Choose ``min_age_s`` well above the workers' transaction timeout (15 s by default).

    Returns one line per transaction found: ``"aborted|open TOPIC PARTITION PRODUCER_ID
    EPOCH START_OFFSET AGE_MS"`` (``open`` with ``dry_run``). ``client_config`` is a Java
    client properties file for a secured cluster.
    """
    import subprocess

    from streams.localkafka import DEPLOY_DIR, _find_java, ensure_jars

    libs = ensure_jars()
    command = [
        _find_java(), "-cp", f"{libs}/*", str(DEPLOY_DIR / "AbortStaleTransactions.java"),
        bootstrap, str(int(min_age_s * 1000)),
        *(["--dry-run"] if dry_run else []),
        *(["--config", client_config] if client_config else []),
        *topic_names,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(
            f"AbortStaleTransactions exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return [ln for ln in done.stdout.splitlines() if ln.startswith(("aborted ", "open "))]
