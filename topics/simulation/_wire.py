"""What the OCPP builders need to know about a session, and the envelope encoder.

A :class:`WireSession` is the session *as the station reports it*: timestamps from the
station's clock (possibly drifting), register values as its meter shows them (possibly
faulty), and when the CSMS received each sample's message (possibly late). The builders in
:mod:`~topics.simulation.ocpp16` and :mod:`~topics.simulation.ocpp201` turn it into frames.

>>> entry = envelope("CP-1", 1_500, "ocpp1.6", [3, "1", {}])
>>> entry[0], entry[1], entry[2]
(1500, 'ocpp_frames', 'CP-1')
>>> entry[3]
b'{"station_id":"CP-1","received_at":"1970-01-01T00:00:01.500Z","protocol":"ocpp1.6","frame":[3,"1",{}],"schema_version":1}'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from topics.simulation._time import iso_ms
from topics.simulation.world import StationProfile

__all__ = ["Entry", "Frames", "WireSession", "envelope", "kwh_text"]

Entry = tuple[int, str, str, bytes]
"""``(emit_ms, topic_short, key, value_bytes)``; emit time is receive time for frames."""

_encode = msgspec.json.Encoder().encode


def envelope(station_id: str, received_ms: int, protocol: str, frame: list[object]) -> Entry:
    """One :class:`~topics.records.OcppFrame` envelope, encoded, as a stream entry."""
    value = _encode(
        {
            "station_id": station_id,
            "received_at": iso_ms(received_ms),
            "protocol": protocol,
            "frame": frame,
            "schema_version": 1,
        }
    )
    return (received_ms, "ocpp_frames", station_id, value)


def kwh_text(wh: int) -> str:
    """Exact decimal kWh text of an integer Wh value.

    >>> kwh_text(12345), kwh_text(7), kwh_text(-1500)
    ('12.345', '0.007', '-1.500')
    """
    sign = "-" if wh < 0 else ""
    whole, frac = divmod(abs(wh), 1000)
    return f"{sign}{whole}.{frac:03d}"


def response_latency_ms(uid: int) -> int:
    """Deterministic CSMS answer latency (12-51 ms) of the call with numeric id ``uid``."""
    return 12 + (uid * 7919) % 40


@dataclass(slots=True)
class WireSession:
    """A session as the station reports it (see the module docstring).

    Sample lists are parallel; index 0 is Transaction.Begin and the last Transaction.End.
    ``skip`` holds sample indices whose messages never arrive (seqNo gap);
    ``offline_from`` the first sample index sent with ``offline: true`` (2.0.1); ``replay``
    re-sends the messages of samples ``replay[0]..`` from ``replay[1]`` ms on (2.0.1).
    """

    station: StationProfile
    evse_id: int
    id_tag: str
    id_token_type: str
    transaction_id: str
    times_ms: list[int]
    recv_ms: list[int]
    contexts: list[str]
    register_wh: list[int]
    power_w: list[float]
    soc_pct: list[float] | None
    voltage_v: list[float]
    charge_end_index: int
    stop_reason: str
    stop_with_token: bool
    auth_status: str = "Accepted"
    offline_from: int | None = None
    skip: frozenset[int] = frozenset()
    replay: tuple[int, int] | None = None


@dataclass(slots=True)
class Frames:
    """Built frames: stream entries, the uniqueId carrying each sample, replayed uniqueIds."""

    entries: list[Entry]
    sample_uids: list[str | None]
    replay_uids: list[str] = field(default_factory=list)
    next_uid: int = 0
