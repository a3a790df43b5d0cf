"""Fraud rules: small pure units, each with its thresholds in :class:`RuleConfig`.

Three families, by the key their state is kept under (DESIGN.md "Fraud detection"):

* **session rules** (:func:`session_alerts`) look at one session's
  :class:`~topics.records.SessionFeatures`: meter integrity (register rollback or reset,
  meter stop below start, energy above what the connector can deliver), OCPP 2.0.1 seqNo
  gaps and replays, and money captured for a session that delivered nothing;
* **token rules** (:class:`TokenHistory`) keep a token's recent sessions: the same token in
  two overlapping sessions at different stations (a clone) or at two stations further apart
  than anyone could travel in the time between (impossible travel), and an offline session
  with a token never seen before;
* **card rules** (:class:`CardHistory`) keep what a card paid and got back per payment:
  refunds that add up to more than was captured (refund abuse), decided as soon as the
  payments' clock has passed the refund, without waiting for reconciliation's grace;
* **terminal rules** (:class:`TerminalWindow`) keep a payment terminal's recent
  authorisation attempts: card testing (a burst of small, mostly failed attempts).

Every alert has a deterministic id (a hash of the rule and what it is about, so replays and
redeliveries give the same id), a severity, a score, the values and thresholds behind it,
the event ids, and a one-line explanation.

Examples
--------
>>> from datetime import UTC, datetime, timedelta
>>> from topics.records import SessionFeatures
>>> f = SessionFeatures(event_id="f1", event_time=datetime(2024, 5, 6, tzinfo=UTC), source="x",
...     session_id="s1", station_id="CP1", features={"register_rollbacks": 1.0,
...     "rollback_wh": 420.0})
>>> [(a.kind, a.severity, a.explanation) for a in session_alerts(f, RuleConfig())]
[('meter_rollback', 'critical', 'meter register of CP1 went back 420 Wh during session s1')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import msgspec

from models.features import NIGHT_HOURS
from topics.identity import stable_id
from topics.records import FraudAlert, PaymentEvent, SessionFeatures
from topics.times import from_ms, to_ms

__all__ = [
    "RULE_KINDS",
    "CardHistory",
    "RuleConfig",
    "TerminalWindow",
    "TokenHistory",
    "TokenSession",
    "session_alerts",
]

Severity = Literal["info", "warning", "error", "critical"]
_SOURCE: Final = "voltguard-rules"

RULE_KINDS: Final = (
    "meter_rollback",
    "meter_reset",
    "meter_stop_below_start",
    "energy_above_capability",
    "seqno_gap",
    "offline_replay",
    "capture_zero_energy",
    "cloned_token_overlap",
    "cloned_token_impossible_travel",
    "offline_unknown_token",
    "card_testing",
    "refund_abuse",
)
"""Every alert kind the rules raise (the simulator's fault kinds use the same names)."""


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Thresholds of every rule (all configurable; defaults from the simulator and real data).

    Parameters
    ----------
    capability_tolerance
        Energy above ``tolerance x max connector power x duration`` is impossible.
    capability_slack_s
        Added before that comparison to the duration of a session whose start and end are
        both stamped to the whole minute: CSV exports and some CSMS keep minutes only, so
        such a session can have run up to a minute longer than its stamps say (real data:
        1.0 kWh "in 1 min" at a 50 kW rapid charger). Second-stamped sessions get none.
    min_seq_gaps
        Missing 2.0.1 seqNos that make a gap alert.
    zero_energy_wh
        At or below this much energy a session "delivered nothing".
    travel_kmh
        Faster than this between two sessions of one token is impossible travel.
    travel_min_km
        Stations closer than this are never impossible travel (GPS noise, same site).
    overlap_min_km
        Overlapping sessions of one token at stations closer than this (one site: the
        posts of a hub or a car park) are not a clone: real exports show fleet and household
        accounts charging two cars at one hub, and drivers moving to the next post before
        the first session closed (Dundee: 158 of 175 overlaps were at one site). A clone is
        used where its owner is not. Stations without a location are always compared.
    token_history
        Sessions kept per token.
    card_testing_window_s, card_testing_min_attempts, card_testing_max_amount_minor,
    card_testing_min_failed_share
        A terminal with at least ``min_attempts`` small (``<= max_amount``) attempts within
        the window, of which at least ``min_failed_share`` failed, is being card-tested.
    card_memory_days
        How long a card's payments are remembered after their last event (refunds and
        chargebacks come weeks after the capture).
    """

    capability_tolerance: float = 1.2
    capability_slack_s: float = 60.0
    min_seq_gaps: int = 1
    zero_energy_wh: float = 0.0
    travel_kmh: float = 150.0
    travel_min_km: float = 5.0
    overlap_min_km: float = 0.2
    token_history: int = 20
    card_testing_window_s: int = 900
    card_testing_min_attempts: int = 8
    card_testing_max_amount_minor: int = 300
    card_testing_min_failed_share: float = 0.5
    card_memory_days: int = 180


def _alert(
    kind: str,
    severity: Severity,
    score: float,
    *,
    subject_type: Literal["session", "token", "card", "station", "terminal", "payment"],
    subject_id: str,
    about: Sequence[str],
    at: datetime,
    explanation: str,
    evidence: dict[str, object],
    event_ids: Sequence[str],
    session_id: str | None = None,
    station_id: str | None = None,
) -> FraudAlert:
    return FraudAlert(
        event_id=stable_id("alert-event", kind, subject_id, *about),
        event_time=at,
        source=_SOURCE,
        alert_id=stable_id("alert", kind, subject_type, subject_id, *sorted(about)),
        kind=kind,
        severity=severity,
        score=score,
        subject_type=subject_type,
        subject_id=subject_id,
        session_id=session_id,
        station_id=station_id,
        evidence=evidence,
        evidence_event_ids=list(event_ids),
        explanation=explanation,
        detector="rules",
    )


# --------------------------------------------------------------------------- session rules


def _minute_stamped(f: SessionFeatures) -> bool:
    """Start and end both on a whole minute: the source keeps minutes only."""
    stamps = (f.started_at, f.event_time)
    return all(t is not None and t.second == 0 and t.microsecond == 0 for t in stamps)


def session_alerts(f: SessionFeatures, cfg: RuleConfig) -> list[FraudAlert]:
    """Alerts about one session from its features alone (meter, sequence, money)."""
    x = f.features
    out: list[FraudAlert] = []
    sid, station = f.session_id, f.station_id
    common = {
        "subject_type": "session",
        "subject_id": sid,
        "about": (sid,),
        "at": f.event_time,
        "event_ids": f.evidence_event_ids,
        "session_id": sid,
        "station_id": station,
    }
    if x.get("register_rollbacks", 0) >= 1:
        back = x.get("rollback_wh", 0.0)
        out.append(
            _alert(
                "meter_rollback", "critical", 1.0,
                explanation=f"meter register of {station} went back {back:.0f} Wh during session {sid}",
                evidence={"rollbacks": x["register_rollbacks"], "rollback_wh": back,
                          "anomalies": f.anomalies},
                **common,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    if x.get("register_resets", 0) >= 1:
        out.append(
            _alert(
                "meter_reset", "critical", 1.0,
                explanation=f"meter register of {station} restarted near zero during session {sid}",
                evidence={"resets": x["register_resets"], "anomalies": f.anomalies},
                **common,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    elif x.get("meter_stop_below_start", 0) >= 1 and not x.get("register_rollbacks", 0):
        out.append(
            _alert(
                "meter_stop_below_start", "error", 1.0,
                explanation=f"session {sid} at {station} ended below its start register",
                evidence={"anomalies": f.anomalies},
                **common,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    ratio = x.get("energy_over_capability", 0.0)
    minutes = x.get("duration_min", 0.0)
    slack_s = cfg.capability_slack_s if _minute_stamped(f) else 0.0
    ratio_slack = ratio * minutes / (minutes + slack_s / 60) if minutes > 0 else ratio
    if ratio_slack > cfg.capability_tolerance:
        out.append(
            _alert(
                "energy_above_capability", "critical", ratio,
                explanation=(
                    f"{x.get('energy_kwh', 0):.1f} kWh in {x.get('duration_min', 0):.0f} min is "
                    f"{ratio:.2f}x what a {x.get('connector_max_kw', 0):.0f} kW connector can deliver"
                ),
                evidence={"energy_kwh": x.get("energy_kwh"), "duration_min": x.get("duration_min"),
                          "connector_max_kw": x.get("connector_max_kw"), "ratio": ratio,
                          "threshold": cfg.capability_tolerance,
                          "slack_s": slack_s},
                **common,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    gaps = x.get("seq_gaps", 0)
    if gaps >= cfg.min_seq_gaps:
        out.append(
            _alert(
                "seqno_gap", "warning", gaps,
                explanation=f"{gaps:.0f} TransactionEvent(s) of session {sid} never arrived "
                            f"(seqNo {', '.join(map(str, f.seq_gaps[:5]))})",
                evidence={"missing_seq_nos": f.seq_gaps, "threshold": cfg.min_seq_gaps},
                **common,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    repeats = x.get("seq_repeats", 0)
    if repeats >= 1:
        out.append(
            _alert(
                "offline_replay", "error", repeats,
                explanation=f"{repeats:.0f} TransactionEvent(s) of session {sid} arrived twice "
                            "(a finished transaction re-sent)",
                evidence={"repeated_events": repeats},
                **common,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    energy_wh = x.get("energy_kwh", 0.0) * 1000
    captured = x.get("captured_minor", 0.0)
    if energy_wh <= cfg.zero_energy_wh and captured > 0 and x.get("price_minor", 0.0) <= 0:
        out.append(
            _alert(
                "capture_zero_energy", "error", captured,
                explanation=f"{captured:.0f} captured for session {sid}, which delivered no "
                            "energy and costs nothing",
                evidence={"energy_wh": energy_wh, "captured_minor": captured,
                          "price_minor": x.get("price_minor")},
                **common,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    return out


# --------------------------------------------------------------------------- token rules


class TokenSession(msgspec.Struct, array_like=True, frozen=True):
    """What a token's history keeps of one session."""

    session_id: str
    station_id: str
    start_ms: int
    end_ms: int
    lat: float | None
    lon: float | None
    offline: bool
    event_ids: list[str]
    night: bool = False
    """Started in the deep night (:data:`models.features.NIGHT_HOURS`, local time)."""


def km_between(a_lat: float, a_lon: float, b_lat: float, b_lon: float) -> float:
    """Great-circle distance in km (haversine).

    >>> round(km_between(52.52, 13.405, 48.137, 11.575))
    504
    """
    p1, p2 = math.radians(a_lat), math.radians(b_lat)
    dp, dl = p2 - p1, math.radians(b_lon - a_lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(min(1.0, h)))


def _same_site(a: TokenSession, b: TokenSession, cfg: RuleConfig) -> bool:
    """Both stations have a location and are closer than ``overlap_min_km``."""
    if None in (a.lat, a.lon, b.lat, b.lon):
        return False
    return km_between(a.lat, a.lon, b.lat, b.lon) < cfg.overlap_min_km  # type: ignore[arg-type]


class TokenHistory(msgspec.Struct, kw_only=True):
    """One token's recent sessions (a table row keyed by token hash) and its rules.

    :meth:`observe` adds a session (in any order: features arrive when bills do) and returns
    the alerts it causes together with the token features for models.
    """

    token_hash: str
    sessions: list[TokenSession] = []
    seen: int = 0
    alerted: list[str] = []
    """Ids of the alerts already raised (the latest 50), so a session seen again (its
    features are republished when payments follow the bill) raises nothing twice."""

    def observe(
        self, f: SessionFeatures, cfg: RuleConfig
    ) -> tuple[list[FraudAlert], dict[str, float]]:
        """Add one ended session of this token; its alerts and ``token_*`` features."""
        x = f.features
        start = to_ms(f.started_at) if f.started_at else to_ms(f.event_time)
        end = to_ms(f.event_time)
        new = TokenSession(
            f.session_id, f.station_id, start, end, f.lat, f.lon, bool(x.get("offline")),
            list(f.evidence_event_ids[:3]),
            NIGHT_HOURS[0] <= x.get("hour_of_day", -1.0) < NIGHT_HOURS[1],
        )  # fmt: skip
        if any(s.session_id == new.session_id for s in self.sessions):
            others = [s for s in self.sessions if s.session_id != new.session_id]
        else:
            others = list(self.sessions)
            self.seen += 1
        alerts: list[FraudAlert] = []
        overlapping = [s for s in others if s.start_ms < end and start < s.end_ms and
                       s.station_id != new.station_id and not _same_site(s, new, cfg)]  # fmt: skip
        for other in overlapping:
            alerts.append(self._pair("cloned_token_overlap", new, other, f, 0.0, 0.0))
        fastest: tuple[float, TokenSession, float, float] | None = None
        for other in others:
            if other in overlapping or None in (new.lat, new.lon, other.lat, other.lon):
                continue
            gap_ms = start - other.end_ms if other.end_ms <= start else other.start_ms - end
            if gap_ms < 0:
                continue
            km = km_between(new.lat, new.lon, other.lat, other.lon)  # type: ignore[arg-type]
            hours = max(gap_ms / 3_600_000, 1 / 60)
            if km >= cfg.travel_min_km and km / hours > cfg.travel_kmh:
                speed = km / hours
                if fastest is None or speed > fastest[0]:
                    fastest = (speed, other, km, hours)
        if fastest is not None:
            speed, other, km, hours = fastest
            alerts.append(
                self._pair("cloned_token_impossible_travel", new, other, f, km, hours, cfg)
            )
        if new.offline and not others and self.seen == 1 and x.get("offline_start", 0) >= 1:
            alerts.append(
                _alert(
                    "offline_unknown_token", "error", 1.0,
                    subject_type="token", subject_id=self.token_hash, about=(f.session_id,),
                    at=f.event_time, session_id=f.session_id, station_id=f.station_id,
                    explanation=f"offline session {f.session_id} at {f.station_id} with a token "
                                "never seen before",
                    evidence={"offline": True, "token_sessions_before": 0},
                    event_ids=f.evidence_event_ids,
                )
            )  # fmt: skip
        features = self._features(new, others)
        self.sessions = sorted([*others, new], key=lambda s: s.start_ms)[-cfg.token_history :]
        fresh = [a for a in alerts if a.alert_id not in self.alerted]
        self.alerted = [*self.alerted, *(a.alert_id for a in fresh)][-50:]
        return fresh, features

    def _pair(
        self,
        kind: str,
        new: TokenSession,
        other: TokenSession,
        f: SessionFeatures,
        km: float,
        hours: float,
        cfg: RuleConfig | None = None,
    ) -> FraudAlert:
        first, second = sorted((new, other), key=lambda s: (s.start_ms, s.session_id))
        if kind == "cloned_token_overlap":
            text = (
                f"token used at {first.station_id} and {second.station_id} at the same time "
                f"(sessions {first.session_id}, {second.session_id})"
            )
            evidence: dict[str, object] = {"sessions": [first.session_id, second.session_id],
                                           "stations": [first.station_id, second.station_id]}  # fmt: skip
        else:
            speed = km / hours if hours else math.inf
            text = (
                f"token at {first.station_id} then {second.station_id}, {km:.0f} km apart "
                f"{hours * 60:.0f} min later ({speed:.0f} km/h > {cfg.travel_kmh if cfg else 0:.0f})"
            )
            evidence = {"sessions": [first.session_id, second.session_id], "km": round(km, 1),
                        "hours": round(hours, 3), "kmh": round(speed, 1),
                        "threshold_kmh": cfg.travel_kmh if cfg else None}  # fmt: skip
        # About the pair, whichever came second: the later of the two to end.
        later = max((new, other), key=lambda s: (s.end_ms, s.session_id))
        return _alert(
            kind, "critical", 1.0,
            subject_type="token", subject_id=self.token_hash,
            about=(first.session_id, second.session_id),
            at=from_ms(later.end_ms),
            session_id=later.session_id, station_id=later.station_id,
            explanation=text, evidence=evidence,
            event_ids=[*first.event_ids, *second.event_ids],
        )  # fmt: skip

    def _features(self, new: TokenSession, others: list[TokenSession]) -> dict[str, float]:
        before = [s for s in others if s.start_ms < new.start_ms]
        prev = max(before, key=lambda s: s.end_ms, default=None)
        out = {
            "token_sessions_before": float(len(before)),
            "token_new": float(not before),
            "token_overlapping": float(
                any(s.start_ms < new.end_ms and new.start_ms < s.end_ms for s in others)
            ),
            "token_hours_since_prev": -1.0,
            "token_km_from_prev": -1.0,
            "token_kmh_from_prev": -1.0,
        }
        nights = sum(s.night for s in others) + new.night
        out["token_night_share"] = nights / (len(others) + 1)
        out["token_night_sessions"] = float(nights)
        if prev is not None:
            hours = max(0.0, (new.start_ms - prev.end_ms) / 3_600_000)
            out["token_hours_since_prev"] = hours
            if None not in (new.lat, new.lon, prev.lat, prev.lon):
                km = km_between(new.lat, new.lon, prev.lat, prev.lon)  # type: ignore[arg-type]
                out["token_km_from_prev"] = km
                out["token_kmh_from_prev"] = km / max(hours, 1 / 60)
        return out


# --------------------------------------------------------------------------- card rules


class _Paid(msgspec.Struct, array_like=True):
    """One payment of a card: what was captured and refunded, and when last."""

    session_id: str | None
    captured_minor: int = 0
    refunded_minor: int = 0
    currency: str = ""
    last_ms: int = 0
    event_ids: list[str] = []
    alerted: bool = False


class CardHistory(msgspec.Struct, kw_only=True):
    """One card's payments (a table row keyed by card fingerprint hash) and its rules.

    A payment's events come from one session's partition, in order; the verdict waits for
    the payments' clock (:meth:`advance`) to pass the refund, so a capture that the PSP
    reported a little after its refund is not mistaken for abuse.
    """

    card_hash: str
    payments: dict[str, _Paid] = {}

    def observe(self, p: PaymentEvent, cfg: RuleConfig) -> list[FraudAlert]:
        """Add one captured or refunded event of this card (alerts come from advance)."""
        if p.kind not in ("captured", "refunded"):
            return []
        paid = self.payments.get(p.payment_id)
        if paid is None:
            paid = self.payments[p.payment_id] = _Paid(p.session_id, currency=p.currency)
        if p.event_id in paid.event_ids:
            return []
        paid.event_ids = [*paid.event_ids, p.event_id][-20:]
        if p.kind == "captured":
            paid.captured_minor += p.amount_minor
        else:
            paid.refunded_minor += p.amount_minor
        paid.last_ms = max(paid.last_ms, to_ms(p.event_time))
        paid.session_id = paid.session_id or p.session_id
        horizon = paid.last_ms - cfg.card_memory_days * 86_400_000
        if any(x.last_ms < horizon for x in self.payments.values()):
            self.payments = {k: x for k, x in self.payments.items() if x.last_ms >= horizon}
        return []

    @property
    def pending(self) -> bool:
        """A refund above its capture waits for the clock."""
        return any(not p.alerted and p.refunded_minor > p.captured_minor
                   for p in self.payments.values())  # fmt: skip

    def advance(self, watermark_ms: int, cfg: RuleConfig) -> list[FraudAlert]:
        """Every payment event before ``watermark_ms`` has arrived: decide what that allows."""
        out: list[FraudAlert] = []
        for payment_id, paid in sorted(self.payments.items()):
            if paid.alerted or paid.last_ms >= watermark_ms:
                continue
            if paid.refunded_minor > paid.captured_minor:
                paid.alerted = True
                over = paid.refunded_minor - paid.captured_minor
                out.append(
                    _alert(
                        "refund_abuse", "error", over,
                        subject_type="card", subject_id=self.card_hash, about=(payment_id,),
                        at=from_ms(paid.last_ms),
                        session_id=paid.session_id,
                        explanation=(
                            f"{paid.refunded_minor} {paid.currency} refunded on payment "
                            f"{payment_id}, which captured {paid.captured_minor} (+{over})"
                        ),
                        evidence={"payment_id": payment_id,
                                  "captured_minor": paid.captured_minor,
                                  "refunded_minor": paid.refunded_minor,
                                  "currency": paid.currency},
                        event_ids=paid.event_ids,
                    )
                )  # fmt: skip
        return out


# --------------------------------------------------------------------------- terminal rules


class _Attempt(msgspec.Struct, array_like=True, frozen=True):
    event_id: str
    at_ms: int
    amount_minor: int
    failed: bool


class TerminalWindow(msgspec.Struct, kw_only=True):
    """A payment terminal's recent small authorisation attempts (a table row by terminal).

    Attempts reach a terminal from many input partitions, so not in time order. The rule is
    therefore decided on a watermark (:meth:`advance`, event time below which every attempt
    has arrived) over the attempts sorted by time, and its verdict does not depend on the
    order they came in: from the earliest attempt not yet covered, a burst is the first
    prefix of attempts within the window that has enough attempts with enough of them
    failed; the alert is about its first attempt. Attempts up to one window after a
    burst's last attempt belong to the same burst (it goes on).
    """

    terminal_id: str
    attempts: list[_Attempt] = []
    """Small attempts not yet decided on, sorted by time (and id)."""
    alerted_until_ms: int = -1
    scanned_ms: int = -1
    """Attempts at or before this time have been decided on."""
    station_id: str | None = None

    def observe(self, p: PaymentEvent, cfg: RuleConfig) -> list[FraudAlert]:
        """Add one payment event of this terminal (alerts come from :meth:`advance`)."""
        if p.kind not in ("authorized", "failed"):
            return []
        if p.amount_minor > cfg.card_testing_max_amount_minor:
            return []
        if any(a.event_id == p.event_id for a in self.attempts):
            return []
        at = to_ms(p.event_time)
        if at <= self.scanned_ms:
            return []  # later than the watermark allowed: decided without it
        self.attempts = sorted(
            [*self.attempts, _Attempt(p.event_id, at, p.amount_minor, p.kind == "failed")],
            key=lambda a: (a.at_ms, a.event_id),
        )
        self.station_id = self.station_id or p.station_id
        return []

    @property
    def pending(self) -> bool:
        """Attempts wait for the clock."""
        return bool(self.attempts)

    def advance(self, watermark_ms: int, cfg: RuleConfig) -> list[FraudAlert]:
        """Every attempt before ``watermark_ms`` has arrived: decide what that allows."""
        window = cfg.card_testing_window_s * 1000
        out: list[FraudAlert] = []
        attempts = self.attempts
        i = 0
        while i < len(attempts) and attempts[i].at_ms < watermark_ms:
            first = attempts[i]
            if first.at_ms <= self.alerted_until_ms:
                self.alerted_until_ms = first.at_ms + window  # the same burst goes on
                self.scanned_ms = first.at_ms
                i += 1
                continue
            verdict = self._burst(attempts, i, watermark_ms, window, cfg)
            if verdict is None:
                break  # undecided until the watermark reaches the end of its window
            if verdict:
                burst = attempts[i:verdict]
                out.append(self._alert(burst, cfg))
                self.alerted_until_ms = burst[-1].at_ms + window
                self.scanned_ms = burst[-1].at_ms
                i = verdict
            else:
                self.scanned_ms = first.at_ms
                i += 1
        self.attempts = attempts[i:]
        return out

    def _burst(
        self, attempts: list[_Attempt], i: int, watermark_ms: int, window: int, cfg: RuleConfig
    ) -> int | None:
        """From attempt ``i``: the end index of the first qualifying prefix, 0 when there is
        none within the window, None when the watermark does not tell yet."""
        start = attempts[i].at_ms
        failed = 0
        for n, j in enumerate(range(i, len(attempts)), 1):
            a = attempts[j]
            if a.at_ms > start + window:
                return 0
            if a.at_ms >= watermark_ms:
                return None
            failed += a.failed
            if (
                n >= cfg.card_testing_min_attempts
                and failed / n >= cfg.card_testing_min_failed_share
            ):
                return j + 1
        return 0 if watermark_ms > start + window else None

    def _alert(self, burst: list[_Attempt], cfg: RuleConfig) -> FraudAlert:
        first, last = burst[0], burst[-1]
        n, failed = len(burst), sum(a.failed for a in burst)
        return _alert(
            "card_testing", "critical", failed / n,
            subject_type="terminal", subject_id=self.terminal_id, about=(first.event_id,),
            at=from_ms(last.at_ms), station_id=self.station_id,
            explanation=(
                f"{n} small authorisations in {(last.at_ms - first.at_ms) / 60_000:.0f} min at "
                f"terminal {self.terminal_id}, {failed} failed"
            ),
            evidence={"attempts": n, "failed": failed, "window_s": cfg.card_testing_window_s,
                      "min_attempts": cfg.card_testing_min_attempts,
                      "min_failed_share": cfg.card_testing_min_failed_share,
                      "max_amount_minor": cfg.card_testing_max_amount_minor},
            event_ids=[a.event_id for a in burst],
        )  # fmt: skip
