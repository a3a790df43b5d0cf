"""Encoding and decoding of records, with errors that name the field and the problem.

JSON on the wire (``msgspec.json``, compiled per record type and cached). Decoding validates
types and constraints; a failure becomes :class:`~topics.exceptions.RecordDecodeError` whose
message can go verbatim into a dead letter.

Examples
--------
>>> from topics.records import PaymentEvent
>>> raw = b'{"event_id":"p1","event_time":"2024-05-01T10:00:00Z","source":"stripe",'
>>> raw += b'"payment_id":"pi_1","psp":"stripe","psp_reference":"ch_1","kind":"captured",'
>>> raw += b'"amount_minor":1234,"currency":"EUR","method":"card"}'
>>> decode(raw, PaymentEvent).amount_minor
1234
>>> decode(raw.replace(b'"EUR"', b'"euro"'), PaymentEvent)
Traceback (most recent call last):
...
topics.exceptions.RecordDecodeError: PaymentEvent: Expected `str` matching regex '^[A-Z]{3}$' - at `$.currency`
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

import msgspec

from topics.exceptions import RecordDecodeError

__all__ = ["decode", "encode"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder(decimal_format="string")


def encode(record: Any) -> bytes:
    """Serialize a record (or any msgspec-encodable value) to compact JSON bytes."""
    return _encoder.encode(record)


@cache
def _decoder(record_type: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(record_type)


def decode(data: bytes | str, record_type: type[T]) -> T:
    """Decode and validate ``data`` as ``record_type``.

    Raises
    ------
    RecordDecodeError
        Not JSON, wrong shape, a missing or mistyped field, or a violated constraint. The
        message starts with the record name and ends with the JSON path of the field.
    """
    try:
        return _decoder(record_type).decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = message.rsplit("at `", 1)[1].rstrip("`") if "at `" in message else None
        raise RecordDecodeError(
            f"{record_type.__name__}: {message}", record=record_type.__name__, path=path
        ) from exc
    except msgspec.DecodeError as exc:
        raise RecordDecodeError(
            f"{record_type.__name__}: not valid JSON: {exc}", record=record_type.__name__
        ) from exc
