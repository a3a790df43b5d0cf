"""All rules over a stream of session features and payment events, with their state.

Pure: :class:`Detector` keeps the token histories and terminal windows (what the keyed
stages keep in their tables) and returns new alerts, each alert id once. ``voltguard
replay`` runs it over a whole run; the detection stage runs the same units per key.

Examples
--------
>>> d = Detector()
>>> d.alerts_total
0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.rules import RuleConfig, TerminalWindow, TokenHistory, session_alerts
from topics.records import FraudAlert, PaymentEvent, SessionFeatures

__all__ = ["Detector"]


@dataclass
class Detector:
    """Session, token and terminal rules with their state; alerts deduplicated by id."""

    config: RuleConfig = field(default_factory=RuleConfig)
    tokens: dict[str, TokenHistory] = field(default_factory=dict)
    terminals: dict[str, TerminalWindow] = field(default_factory=dict)
    alerts: dict[str, FraudAlert] = field(default_factory=dict)
    token_features: dict[str, dict[str, float]] = field(default_factory=dict)

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
        """Session rules, then the token's history (when the session has a token)."""
        found = session_alerts(f, self.config)
        if f.token_hash:
            history = self.tokens.get(f.token_hash)
            if history is None:
                history = self.tokens[f.token_hash] = TokenHistory(token_hash=f.token_hash)
            token_alerts, features = history.observe(f, self.config)
            found += token_alerts
            self.token_features[f.session_id] = features
        return self._new(found)

    def on_payment(self, p: PaymentEvent) -> list[FraudAlert]:
        """Terminal rules (card testing) for payments made at a terminal."""
        if not p.terminal_id:
            return []
        window = self.terminals.get(p.terminal_id)
        if window is None:
            window = self.terminals[p.terminal_id] = TerminalWindow(terminal_id=p.terminal_id)
        return self._new(window.observe(p, self.config))
