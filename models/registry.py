"""The pure half of the model registry: names, digests, (de)serialisation and announcements.

A registry is a directory tree: ``<root>/<model_name>/<version>.pkl`` (the pickled model),
``<version>.json`` (its :class:`~topics.records.ModelUpdate`) and ``current.json`` (the
update of the version in service). Versions are ``v0001``, ``v0002``, ...: sortable, and one
more than the highest present. :mod:`streams.registry` does the file I/O with this module.

An artifact is only ever loaded after its sha256 matched the one announced on the model
updates topic: that guards against truncated, partial or swapped files. It is still a pickle,
so the registry directory and the topic must only be writable by the retraining job.

Examples
--------
>>> artifact_path("sessions", version_name(3))
'sessions/v0003.pkl'
>>> version_number("v0003"), next_version(["v0001", "v0007"])
(3, 'v0008')
>>> data = dumps({"a": 1})
>>> loads(data, expected_sha256=sha256_hex(data), model_name="m", version="v1", artifact="x")
{'a': 1}
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from models.exceptions import ChecksumMismatch, IncompatibleModel
from topics.identity import stable_id
from topics.records import ModelUpdate

__all__ = [
    "ARTIFACT_SUFFIX",
    "artifact_path",
    "check_name",
    "dumps",
    "loads",
    "make_update",
    "next_version",
    "sha256_hex",
    "version_name",
    "version_number",
]

ARTIFACT_SUFFIX: Final = ".pkl"
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION: Final = re.compile(r"^v(\d{4,})$")


def check_name(model_name: str) -> str:
    """``model_name`` if it is one safe path segment (letters, digits, ``._-``), else ValueError.

    >>> check_name("../etc")
    Traceback (most recent call last):
    ...
    ValueError: model name '../etc' must be letters, digits, '.', '_' or '-' (at most 100), not starting with a symbol
    """
    if not _NAME.match(model_name) or model_name in (".", ".."):
        raise ValueError(
            f"model name {model_name!r} must be letters, digits, '.', '_' or '-' (at most 100), "
            "not starting with a symbol"
        )
    return model_name


def version_name(number: int) -> str:
    """``v`` and the number, at least four digits."""
    return f"v{number:04d}"


def version_number(version: str) -> int | None:
    """The number of a version name, None for anything else."""
    match = _VERSION.match(version)
    return int(match.group(1)) if match else None


def next_version(existing: Iterable[str]) -> str:
    """One more than the highest version among ``existing`` (names that are not versions are
    ignored); ``v0001`` for none."""
    numbers = [n for n in map(version_number, existing) if n is not None]
    return version_name(max(numbers, default=0) + 1)


def artifact_path(model_name: str, version: str) -> str:
    """The artifact of a version, relative to the registry root (POSIX separators)."""
    return f"{check_name(model_name)}/{version}{ARTIFACT_SUFFIX}"


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def dumps(model: Any) -> bytes:
    """The artifact bytes of a model (pickle, highest protocol)."""
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def loads(
    data: bytes,
    *,
    expected_sha256: str,
    model_name: str,
    version: str,
    artifact: str,
    feature_names: Iterable[str] | None = None,
) -> Any:
    """Unpickle an artifact, but only if its digest is ``expected_sha256``.

    Raises
    ------
    ChecksumMismatch
        The bytes are not the announced ones (nothing is unpickled).
    IncompatibleModel
        They do not unpickle, or the model's ``feature_names`` differ from ``feature_names``.
    """
    where = {"model_name": model_name, "version": version, "artifact": artifact}
    actual = sha256_hex(data)
    if actual != expected_sha256:
        raise ChecksumMismatch(
            f"{artifact}: sha256 {actual} is not the announced {expected_sha256}; not loaded",
            **where,
        )
    try:
        model = pickle.loads(data)  # digest checked above; the registry is trusted
    except Exception as exc:
        raise IncompatibleModel(f"{artifact}: does not unpickle: {exc!r}", **where) from exc
    if feature_names is not None:
        have = list(getattr(model, "feature_names", ()))
        if have != list(feature_names):
            raise IncompatibleModel(
                f"{artifact}: model features {have} are not the announced {list(feature_names)}",
                **where,
            )
    return model


def make_update(
    model: Any,
    *,
    model_name: str,
    version: str,
    sha256: str,
    metrics: Mapping[str, float],
    replaces: str | None,
    now: datetime,
) -> ModelUpdate:
    """The announcement of a new version (``event_id`` a hash of model, version and digest).

    >>> from datetime import UTC, datetime
    >>> class M: feature_names, model_input_version = ("a", "b"), 1
    >>> u = make_update(M(), model_name="s", version="v0002", sha256="0" * 64, metrics={},
    ...                 replaces="v0001", now=datetime(2024, 5, 6, tzinfo=UTC))
    >>> u.artifact, u.feature_names, u.replaces
    ('s/v0002.pkl', ['a', 'b'], 'v0001')
    """
    return ModelUpdate(
        event_id=stable_id("model-update", model_name, version, sha256),
        event_time=now,
        source="voltguard-retrain",
        model_name=model_name,
        version=version,
        artifact=artifact_path(model_name, version),
        sha256=sha256,
        feature_names=list(model.feature_names),
        model_input_version=int(model.model_input_version),
        metrics=dict(metrics),
        replaces=replaces,
    )
