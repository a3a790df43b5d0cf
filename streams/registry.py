"""The model registry on disk: versioned artifacts, written atomically, verified on load.

Layout under ``root`` (see :mod:`models.registry`)::

    <root>/<model_name>/v0001.pkl     the pickled model
    <root>/<model_name>/v0001.json    its ModelUpdate (metrics, features, sha256, replaces)
    <root>/<model_name>/current.json  the ModelUpdate of the version in service

Every file is written to a temporary name in the same directory, fsynced and then linked or
renamed into place, so a reader sees a whole file or none. A version's artifact is created
with ``os.link``, which fails if the name exists: two retrains racing for the same version
number cannot overwrite each other (the loser takes the next number). Workers on other
machines share the directory (NFS, a mounted volume) and learn about versions from the
model updates topic, never by listing the directory.

Examples
--------
>>> import tempfile
>>> from datetime import UTC, datetime
>>> from models.offline import SessionModel
>>> model = SessionModel(n_estimators=5).fit_many([{"a": float(i)} for i in range(20)])
>>> reg = ModelRegistry(tempfile.mkdtemp())
>>> u = reg.publish(model, model_name="demo", metrics={"heldout_ap": 0.4},
...                 now=datetime(2024, 5, 6, tzinfo=UTC))
>>> u.version, u.artifact, reg.current("demo") == u
('v0001', 'demo/v0001.pkl', True)
>>> type(reg.load(u)).__name__
'SessionModel'
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from models.exceptions import ArtifactMissing
from models.registry import (
    ARTIFACT_SUFFIX,
    check_name,
    dumps,
    loads,
    make_update,
    next_version,
    sha256_hex,
    version_number,
)
from topics.codec import decode, encode
from topics.exceptions import RecordDecodeError
from topics.records import ModelUpdate

__all__ = ["ModelRegistry"]

log = logging.getLogger(__name__)

CURRENT = "current.json"


class ModelRegistry:
    """Versioned model files under ``root`` (created when missing).

    Parameters
    ----------
    root
        Registry directory; every worker that loads models needs the same tree (a shared
        volume), at any path of its own.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # ------------------------------------------------------------------ reading

    def versions(self, model_name: str) -> list[str]:
        """Versions with an artifact, oldest first."""
        folder = self.root / check_name(model_name)
        if not folder.is_dir():
            return []
        found = [p.stem for p in folder.glob(f"v*{ARTIFACT_SUFFIX}")]
        return sorted((v for v in found if version_number(v) is not None), key=version_number)

    def current(self, model_name: str) -> ModelUpdate | None:
        """The update of the version in service, or None when none was promoted yet."""
        path = self.root / check_name(model_name) / CURRENT
        try:
            return decode(path.read_bytes(), ModelUpdate)
        except FileNotFoundError:
            return None
        except RecordDecodeError as exc:
            raise ArtifactMissing(
                f"{path}: unreadable current pointer: {exc}",
                model_name=model_name,
                version="?",
                artifact=str(path),
            ) from exc

    def load(self, update: ModelUpdate) -> Any:
        """The model an update announces, after checking its sha256 and feature names.

        Raises
        ------
        ArtifactMissing
            The artifact is not there, or its path leaves the registry root.
        ChecksumMismatch
            The file's digest is not ``update.sha256``.
        IncompatibleModel
            It does not unpickle, or its features are not ``update.feature_names``.
        """
        where = {
            "model_name": update.model_name,
            "version": update.version,
            "artifact": update.artifact,
        }
        root = self.root.resolve()
        path = (root / update.artifact).resolve()
        if not path.is_relative_to(root):
            raise ArtifactMissing(f"{update.artifact}: outside the registry {root}", **where)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactMissing(f"{path}: cannot read: {exc.strerror or exc}", **where) from exc
        return loads(
            data,
            expected_sha256=update.sha256,
            feature_names=update.feature_names,
            **where,
        )

    # ------------------------------------------------------------------ writing

    def publish(
        self,
        model: Any,
        *,
        model_name: str,
        metrics: Mapping[str, float],
        now: datetime,
        promote: bool = True,
    ) -> ModelUpdate:
        """Write a new version of ``model_name`` and return its :class:`ModelUpdate`.

        ``replaces`` is the current version. With ``promote`` the current pointer moves to
        the new version at once; ``voltguard retrain`` passes False, announces the update on
        the topic, and only then calls :meth:`promote`, so the pointer never names a version
        the workers were not told about.
        """
        folder = self.root / check_name(model_name)
        folder.mkdir(parents=True, exist_ok=True)
        current = self.current(model_name)
        data = dumps(model)
        digest = sha256_hex(data)
        taken: list[str] = []
        for _ in range(100):
            version = next_version([*self.versions(model_name), *taken])
            try:
                _write_atomic(folder / f"{version}{ARTIFACT_SUFFIX}", data, exclusive=True)
                break
            except FileExistsError:
                taken.append(version)  # somebody else took that number: the next one
        else:  # pragma: no cover - 100 concurrent publishers
            raise RuntimeError(f"{folder}: no free version number after 100 attempts")
        update = make_update(
            model,
            model_name=model_name,
            version=version,
            sha256=digest,
            metrics=metrics,
            replaces=current.version if current else None,
            now=now,
        )
        _write_atomic(folder / f"{version}.json", encode(update))
        log.info(
            "registry %s: wrote %s (%d bytes, sha256 %s)",
            self.root,
            update.artifact,
            len(data),
            digest[:12],
        )
        if promote:
            self.promote(update)
        return update

    def promote(self, update: ModelUpdate) -> None:
        """Make ``update`` the version in service (atomically replaces ``current.json``)."""
        folder = self.root / check_name(update.model_name)
        _write_atomic(folder / CURRENT, encode(update))


def _write_atomic(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing.

    ``exclusive``: fail with FileExistsError when ``path`` exists (``os.link``), instead of
    replacing it (``os.replace``).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
