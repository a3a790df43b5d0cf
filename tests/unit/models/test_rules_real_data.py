"""Rule refinements that real session exports called for (docs/real-data.md)."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from models.rules import RuleConfig, TokenHistory, session_alerts
from tests.unit.models.test_rules import features

CFG = RuleConfig()


def _kinds(f) -> list[str]:
    return [a.kind for a in session_alerts(f, CFG)]


def _shift_seconds(f, seconds: int):
    """The same session stamped to the second instead of the whole minute."""
    return msgspec.structs.replace(
        f, started_at=f.started_at + timedelta(seconds=seconds),
        event_time=f.event_time + timedelta(seconds=seconds),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("ratio", "minutes", "minute_stamped", "fires"),
    [
        (1.21, 1, True, False),  # 1.0 kWh "in 1 min" at 50 kW: within the stamps' minute
        (1.21, 1, False, True),  # to the second, the same numbers are impossible
        (4.21, 2, True, True),  # 5.6 kWh in 2 min at 50 kW: impossible with any slack
        (1.3, 120, True, True),  # long sessions keep nearly the whole sensitivity
    ],
)
def test_capability_slack_only_for_minute_stamped_sessions(
    ratio: float, minutes: int, minute_stamped: bool, fires: bool
) -> None:
    f = features(minutes=minutes, energy_over_capability=ratio, duration_min=float(minutes))
    if not minute_stamped:
        f = _shift_seconds(f, 17)
    assert ("energy_above_capability" in _kinds(f)) is fires


def _overlap(lat2: float | None, lon2: float | None) -> list[str]:
    history = TokenHistory(token_hash="ab" * 16)
    history.observe(features("s1", "CP1", 0, 120), CFG)
    second = features("s2", "CP2", 30, 40, lat=lat2 or 0.0, lon=lon2 or 0.0)
    if lat2 is None:
        second = msgspec.structs.replace(second, lat=None, lon=None)
    return [a.kind for a in history.observe(second, CFG)[0]]


def test_overlap_at_one_site_is_not_a_clone_elsewhere_is() -> None:
    assert _overlap(52.5203, 13.4003) == []  # ~40 m away: the next post of the same hub
    assert _overlap(52.53, 13.40) == ["cloned_token_overlap"]  # ~1.1 km away
    assert _overlap(None, None) == ["cloned_token_overlap"]  # no location: cannot tell
