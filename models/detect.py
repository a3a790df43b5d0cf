"""All rules and online detectors over a stream of session features and payment events.

Pure: :class:`Detector` keeps the token histories and terminal windows (what the keyed
stages keep in their tables) and the online scorers, and returns new alerts, each alert id
once. ``voltguard replay`` runs it over a whole run; the detection stage runs the same units
per key.

Online scoring (:class:`~models.online.OnlineScorer`, on unless ``online=False``) keeps one
scorer per partition of the station key, as the stage does: ``station_partition`` maps a
station id to its partition (the stage and ``voltguard replay`` use the CRC32 of
``b"station:" + station_id`` modulo the partition count; the default puts everything in
partition 0). A scorer sees the session features together with the token features the
token stage computed for them.

Examples
--------
>>> d = Detector()
>>> d.alerts_total, d.online
(0, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from models.online import OnlineConfig, OnlineScore, OnlineScorer
from models.rules import RuleConfig, TerminalWindow, TokenHistory, session_alerts
from topics.records import FraudAlert, PaymentEvent, SessionFeatures

__all__ = ["Detector"]


def one_partition(station_id: str) -> int:
    """Every station in partition 0 (the default ``station_partition``)."""
    return 0


@dataclass
class Detector:
    """Session, token and terminal rules and the online scorers with their state.

    Alerts are deduplicated by id. ``scores`` holds the latest online score of every session
    and ``token_features`` the token features of every session with a token.
    """

    config: RuleConfig = field(default_factory=RuleConfig)
    online: bool = True
    """Run the online detectors (one :class:`OnlineScorer` per station partition)."""
    online_config: OnlineConfig = field(default_factory=OnlineConfig)
    station_partition: Callable[[str], int] = one_partition
    """Station id -> the partition whose scorer scores its sessions."""
    tokens: dict[str, TokenHistory] = field(default_factory=dict)
    terminals: dict[str, TerminalWindow] = field(default_factory=dict)
    alerts: dict[str, FraudAlert] = field(default_factory=dict)
    token_features: dict[str, dict[str, float]] = field(default_factory=dict)
    scorers: dict[int, OnlineScorer] = field(default_factory=dict)
    scores: dict[str, OnlineScore] = field(default_factory=dict)

    @property
    def alerts_total(self) -> int:
        return len(self.alerts)

    def _new(self, alerts: list[FraudAlert]) -> list[FraudAlert]:
        out = []
        for a in alerts:
            if a.alert_id not in self.alerts:
                self.alerts[a.alert_id] = a
                out.append(a)
        return out

    def on_features(self, f: SessionFeatures) -> list[FraudAlert]:
        """Session rules, the token's history (when the session has a token), then the
        online scorer of the station's partition."""
        found = session_alerts(f, self.config)
        features: dict[str, float] = {}
        if f.token_hash:
            history = self.tokens.get(f.token_hash)
            if history is None:
                history = self.tokens[f.token_hash] = TokenHistory(token_hash=f.token_hash)
            token_alerts, features = history.observe(f, self.config)
            found += token_alerts
            self.token_features[f.session_id] = features
        if self.online:
            partition = self.station_partition(f.station_id)
            scorer = self.scorers.get(partition)
            if scorer is None:
                scorer = self.scorers[partition] = OnlineScorer(self.online_config)
            scored, online_alerts = scorer.observe_scored(f, features)
            self.scores[f.session_id] = scored
            found += online_alerts
        return self._new(found)

    def on_payment(self, p: PaymentEvent) -> list[FraudAlert]:
        """Terminal rules (card testing) for payments made at a terminal."""
        if not p.terminal_id:
            return []
        window = self.terminals.get(p.terminal_id)
        if window is None:
            window = self.terminals[p.terminal_id] = TerminalWindow(terminal_id=p.terminal_id)
        return self._new(window.observe(p, self.config))
