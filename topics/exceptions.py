"""Errors raised by the wire layer: decoding, validation and adaptation of records."""

from __future__ import annotations

__all__ = ["AdapterError", "RecordDecodeError", "TopicsError", "UnsupportedFrame"]


class TopicsError(Exception):
    """Root of every error raised by :mod:`topics`."""


class RecordDecodeError(TopicsError):
    """A payload could not be decoded or failed validation.

    The message names the field (a JSON path such as ``$.energy_wh``) and the problem, so it
    can be written verbatim into a dead letter's ``reason``.
    """

    def __init__(self, message: str, *, record: str | None = None, path: str | None = None):
        super().__init__(message)
        self.record = record
        self.path = path


class AdapterError(RecordDecodeError):
    """An outside payload (OCPP frame, PSP body, CSV row) cannot be mapped to canonical records."""


class UnsupportedFrame(TopicsError):
    """A well-formed OCPP frame that voltguard deliberately does not use (e.g. Heartbeat).

    Not an error in the data: the ingest counts these as ``ignored`` instead of dead-lettering them.
    """
