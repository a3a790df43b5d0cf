"""Deterministic identifiers and keyed hashes of personal identifiers.

Outputs are deterministic (DESIGN.md): ids are hashes of what they are about, so a replay or
a redelivery yields the same ids and downstream deduplication by id works.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["hash_identifier", "session_id_for", "stable_id"]


def stable_id(*parts: object) -> str:
    """A deterministic 32-hex-digit id from the parts (so replays yield the same ids).

    >>> stable_id("CP1", 42) == stable_id("CP1", 42)
    True
    >>> len(stable_id("CP1", 42))
    32
    """
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def hash_identifier(value: str, secret: bytes) -> str:
    """Keyed hash (HMAC-SHA256, first 128 bits, hex) of a personal identifier.

    Used at ingest for idTags and card fingerprints so that no raw token leaves it. The same
    value and secret always give the same hash, so token history still works downstream.

    >>> hash_identifier("04A2B3C4", b"k") == hash_identifier("04A2B3C4", b"k")
    True
    >>> hash_identifier("04A2B3C4", b"k") == hash_identifier("04A2B3C4", b"other")
    False
    """
    if not secret:
        raise ValueError("hash secret must not be empty")
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()[:32]


def session_id_for(station_id: str, transaction_id: str | int) -> str:
    """The session id of an OCPP transaction: derived from the station and transaction id.

    The CSMS puts the station and transaction in the PSP payment's metadata, so a payment
    finds its session with the same function.

    >>> session_id_for("CP-1", 214988465) == session_id_for("CP-1", "214988465")
    True
    >>> session_id_for("CP-1", 7)
    's-...'
    """
    return "s-" + stable_id("session", station_id, str(transaction_id))
