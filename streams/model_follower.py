"""Hot model reload for workers: a :class:`ModelHolder` kept current by a :class:`ModelFollower`.

The follower reads the compacted model updates topic whole when it starts, loads the
version in service for its model name from the registry (sha256 verified), and then follows
the topic in a daemon thread: each new :class:`~topics.records.ModelUpdate` is loaded and
swapped into the holder, without restarting anything. A file that is missing, does not match
its announced digest or does not fit its announcement is logged and ignored; the model that
was serving keeps serving.

How the detection stage uses it (once per batch, never per row)::

    registry = ModelRegistry(settings.model_registry)
    holder = ModelHolder()
    follower = ModelFollower(settings, registry, holder, model_name=settings.model_name)
    follower.start()                      # blocks until the topic was read to its end
    try:
        for batch in batches:             # list[SessionFeatures]
            loaded = holder.current()     # model and version together; None: no model yet
            if loaded is not None:
                scores, alerts = loaded.score_batch(batch)  # one score_many call
                ...                       # publish alerts (ids are deterministic)
    finally:
        follower.stop()

``loaded.model.score_many(rows)`` (rows: ``list[dict[str, float]]``) is the raw call:
float64 array in [0, 1], high = suspicious, ``loaded.model.threshold`` the alert threshold.
Keep the ``loaded`` reference for the whole batch: a swap in between replaces the holder's
reference, never the model a batch is using.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from models.exceptions import RegistryError
from models.offline import alerts_many
from streams.registry import ModelRegistry
from streams.settings import Settings
from streams.topic_reader import assign_consumer, follow, read_to_end, topic_partitions
from topics.catalog import topic
from topics.codec import decode
from topics.exceptions import RecordDecodeError
from topics.records import FraudAlert, ModelUpdate, SessionFeatures

__all__ = ["LoadedModel", "ModelFollower", "ModelHolder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model and the update that announced it: what a batch scores with."""

    model: Any
    """Has ``score_many(rows) -> np.ndarray``, ``threshold`` and ``feature_names``
    (a :class:`models.offline.SessionModel`)."""
    update: ModelUpdate

    @property
    def version(self) -> str:
        return self.update.version

    @property
    def model_name(self) -> str:
        return self.update.model_name

    def score_batch(self, batch: Sequence[SessionFeatures]) -> tuple[np.ndarray, list[FraudAlert]]:
        """Scores of a batch of sessions (one ``score_many`` call) and the explained alerts
        of those at or above the threshold, with this version as ``model_version``."""
        return alerts_many(
            self.model, batch, model_name=self.model_name, model_version=self.version
        )


class ModelHolder:
    """The current :class:`LoadedModel`, swapped atomically; safe to read from any thread.

    :meth:`current` is a single attribute read (no lock), so the stage's hot path pays
    nothing; writers serialise on a condition that :meth:`wait_for_version` waits on.
    """

    def __init__(self, loaded: LoadedModel | None = None) -> None:
        self._loaded = loaded
        self._changed = threading.Condition()

    def current(self) -> LoadedModel | None:
        """The model in service and its version, or None before the first one loaded."""
        return self._loaded

    def swap(self, loaded: LoadedModel) -> LoadedModel | None:
        """Put ``loaded`` in service; returns the one it replaced."""
        with self._changed:
            previous, self._loaded = self._loaded, loaded
            self._changed.notify_all()
        return previous

    def wait_for_version(self, version: str, timeout_s: float) -> bool:
        """Block until ``version`` is in service or ``timeout_s`` passes; whether it is."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._loaded is not None and self._loaded.version == version,
                timeout_s,
            )


class ModelFollower:
    """Keeps a :class:`ModelHolder` on the latest announced version of one model.

    Parameters
    ----------
    settings
        Kafka connection.
    registry
        Where the artifacts are (this worker's path to the shared registry tree).
    holder
        What to keep current.
    model_name
        Updates of other models on the topic are ignored.
    poll_timeout_s
        Longest wait per poll; also how long :meth:`stop` may take to be noticed.

    Attributes
    ----------
    loaded, rejected, skipped
        Versions swapped in; versions refused (missing file, digest, features); records
        that did not decode.
    """

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        holder: ModelHolder,
        *,
        model_name: str,
        poll_timeout_s: float = 0.5,
    ) -> None:
        self._settings = settings
        self.registry = registry
        self.holder = holder
        self.model_name = model_name
        self._poll_timeout_s = poll_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self.loaded = 0
        self.rejected = 0
        self.skipped = 0

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Read the topic to its end, load the version in service, then follow in a thread.

        At start the newest update of the model is tried first, then older ones still on the
        topic, so one bad artifact does not leave a restarted worker without a model.

        Raises
        ------
        RuntimeError
            Already started, or the topic does not exist.
        TimeoutError
            The topic was not read to its end within ``timeout_s``.
        """
        if self._thread is not None:
            raise RuntimeError("ModelFollower already started")
        name = topic("model_updates")
        consumer = assign_consumer(self._settings, "model-follower")
        history: list[ModelUpdate] = []
        try:
            positions = read_to_end(
                consumer,
                [name],
                lambda msg: self._collect(msg, history),
                timeout_s=timeout_s,
            )
            for update in reversed(history):
                if self._load(update):
                    break
            consumer.assign(
                [
                    TopicPartition(t, p, positions.get((t, p), OFFSET_BEGINNING))
                    for t, p in topic_partitions(consumer, [name], timeout_s)
                ]
            )
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        self._thread = threading.Thread(
            target=self._run, name=f"voltguard-model-follower-{self.model_name}", daemon=True
        )
        self._thread.start()
        current = self.holder.current()
        log.info(
            "model follower %s: %s in service, following %s",
            self.model_name,
            current.version if current else "no version",
            name,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and close its consumer (no-op if not started)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("model follower did not stop within %.1f s", timeout_s)

    def _decode(self, msg: Message) -> ModelUpdate | None:
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        key = msg.key().decode("utf-8", "replace") if msg.key() is not None else None
        if key is not None and key != self.model_name:
            return None
        value = msg.value()
        if value is None:
            log.warning("%s: tombstone for %s ignored; the current model stays", where, key)
            return None
        try:
            update = decode(value, ModelUpdate)
        except RecordDecodeError as exc:
            log.warning("%s: skipped a model update that does not decode: %s", where, exc)
            self.skipped += 1
            return None
        return update if update.model_name == self.model_name else None

    def _collect(self, msg: Message, history: list[ModelUpdate]) -> None:
        update = self._decode(msg)
        if update is not None:
            history.append(update)

    def _load(self, update: ModelUpdate) -> bool:
        current = self.holder.current()
        if current is not None and (current.version, current.update.sha256) == (
            update.version,
            update.sha256,
        ):
            return True
        try:
            model = self.registry.load(update)
        except RegistryError as exc:
            self.rejected += 1
            log.error(
                "model %s %s not loaded, %s stays in service: %s",
                update.model_name,
                update.version,
                current.version if current else "no model",
                exc,
            )
            return False
        self.holder.swap(LoadedModel(model=model, update=update))
        self.loaded += 1
        log.info(
            "model %s: %s in service (was %s)",
            update.model_name,
            update.version,
            current.version if current else "none",
        )
        return True

    def _run(self) -> None:
        assert self._consumer is not None
        follow(
            self._consumer,
            self._apply,
            self._stop,
            what="model follower",
            batch=100,
            poll_timeout_s=self._poll_timeout_s,
        )

    def _apply(self, msg: Message) -> None:
        update = self._decode(msg)
        if update is not None:
            self._load(update)
