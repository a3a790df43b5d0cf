"""Errors raised by the wire layer: decoding, validation and adaptation of records."""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "RecordDecodeError",
    "SignatureVerificationError",
    "TopicsError",
    "UnsupportedFrame",
    "UnsupportedPspEvent",
]


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


class UnsupportedPspEvent(TopicsError):
    """A verified, well-formed PSP notification of a type voltguard does not map (e.g. Stripe
    ``customer.created``, Adyen ``REPORT_AVAILABLE``).

    Not an error in the data: the ingress acknowledges it (so the PSP stops retrying), keeps
    the raw body on the audit topic and produces no payment event.
    """


class SignatureVerificationError(TopicsError):
    """A webhook's signature did not verify (unparseable header, no signature of the expected
    scheme, no match, or a timestamp outside the tolerance).

    Keeps the signature header (which is not a secret: it is an HMAC output) for the log and
    ``reason`` for the failed check; never the secret and never the body.
    """

    def __init__(self, message: str, *, header: str | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.header = header
        self.reason = reason

    def __repr__(self) -> str:
        return f"SignatureVerificationError({str(self)!r}, reason={self.reason!r})"
