"""Errors raised by :mod:`models`: the model registry's refusals, with what was refused."""

from __future__ import annotations

__all__ = [
    "ArtifactMissing",
    "ChecksumMismatch",
    "IncompatibleModel",
    "ModelsError",
    "RegistryError",
]


class ModelsError(Exception):
    """Root of every error raised by :mod:`models`."""


class RegistryError(ModelsError):
    """A model version cannot be published or loaded; ``artifact`` names the file."""

    def __init__(self, message: str, *, model_name: str, version: str, artifact: str) -> None:
        super().__init__(message)
        self.model_name = model_name
        self.version = version
        self.artifact = artifact


class ArtifactMissing(RegistryError):
    """The artifact a model update names is not in the registry (or escapes its root)."""


class ChecksumMismatch(RegistryError):
    """The artifact's sha256 is not the one its model update announced: not loaded."""


class IncompatibleModel(RegistryError):
    """The artifact loads but is not the model its update describes (type, features)."""
