"""The operator API's materialised view: SQLite (stdlib), with the consumed positions.

Why SQLite on a file: the view must outlive the topics' retention (session events are kept
7 days, bills and results 30) and a restart should not re-read everything. Each batch of
consumed messages is applied in **one SQLite transaction together with the next offset of
every partition it came from** (table ``positions``), so after a crash the follower resumes
exactly after the last applied message: nothing applied twice, nothing skipped. With
``api_db = ":memory:"`` the view is rebuilt from the topics at every start instead (what the
tests and a throwaway instance use).

What a row means is decided in :mod:`topics.operator_view` (pure); this module only stores
rows and runs the queries. One connection, guarded by a lock: the follower thread writes,
the aiohttp handlers read (every query is an indexed lookup or a bounded range).

Examples
--------
>>> store = ViewStore(":memory:")
>>> store.positions()
{}
>>> store.apply([], {("voltguard.fraud.alerts.v1", 0): 12})
>>> store.positions()
{('voltguard.fraud.alerts.v1', 0): 12}
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from topics.codec import decode, encode
from topics.operator_view import (
    AlertPage,
    AlertQuery,
    AlertRow,
    AlertView,
    BillRow,
    CaseRow,
    Delivery,
    DeliveryRow,
    EventRow,
    LabelRow,
    PaymentRow,
    ReconciliationView,
    ResultRow,
    SessionPicture,
    SummaryQuery,
    ViewRow,
    case_day,
    current_label,
    encode_cursor,
)
from topics.records import (
    AlertLabel,
    FraudAlert,
    PaymentEvent,
    ReconciliationResult,
    SessionBill,
    SessionEvent,
)
from topics.times import EPOCH, to_ms

__all__ = ["ViewStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, at_us INTEGER NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, at_us);
CREATE TABLE IF NOT EXISTS payments (
    event_id TEXT PRIMARY KEY, session_id TEXT, at_us INTEGER NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS payments_by_session ON payments (session_id, at_us);
CREATE TABLE IF NOT EXISTS bills (
    part INTEGER NOT NULL, off INTEGER NOT NULL, session_id TEXT NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (part, off));
CREATE INDEX IF NOT EXISTS bills_by_session ON bills (session_id, part, off);
CREATE TABLE IF NOT EXISTS results (
    part INTEGER NOT NULL, off INTEGER NOT NULL, result_id TEXT NOT NULL, session_id TEXT,
    doc BLOB NOT NULL, PRIMARY KEY (part, off));
CREATE INDEX IF NOT EXISTS results_by_session ON results (session_id, result_id, part, off);
CREATE INDEX IF NOT EXISTS results_by_id ON results (result_id, part, off);
CREATE TABLE IF NOT EXISTS cases (
    result_id TEXT PRIMARY KEY, day TEXT NOT NULL, currency TEXT, outcome TEXT NOT NULL,
    expected INTEGER NOT NULL, authorized INTEGER NOT NULL, captured INTEGER NOT NULL,
    refunded INTEGER NOT NULL, delta INTEGER NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS cases_by_day ON cases (day, currency);
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT NULL UNIQUE, at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL, severity TEXT NOT NULL, station_id TEXT, session_id TEXT,
    doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (at_ms DESC, seq DESC);
CREATE INDEX IF NOT EXISTS alerts_by_session ON alerts (session_id);
CREATE TABLE IF NOT EXISTS labels (
    event_id TEXT PRIMARY KEY, alert_id TEXT NOT NULL, at_us INTEGER NOT NULL,
    label TEXT NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS labels_by_alert ON labels (alert_id, at_us DESC, event_id DESC);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY, notice_key TEXT NOT NULL, destination TEXT NOT NULL,
    action TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL, at TEXT);
CREATE INDEX IF NOT EXISTS deliveries_by_notice ON deliveries (notice_key);
"""

_CURRENT_LABEL = (
    "(SELECT l.label FROM labels l WHERE l.alert_id = a.alert_id "
    "ORDER BY l.at_us DESC, l.event_id DESC LIMIT 1)"
)


def _us(moment: Any) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


class ViewStore:
    """The view's tables on one SQLite database (a path, or ``:memory:``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ writes

    def apply(self, rows: Iterable[ViewRow], positions: Mapping[tuple[str, int], int]) -> None:
        """Apply ``rows`` and record ``positions`` (next offset per topic and partition) in
        one transaction: either all of it is in the view after a crash, or none."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    self._apply(row)
                db.executemany(
                    "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                    "DO UPDATE SET next_offset = excluded.next_offset",
                    [(t, p, o) for (t, p), o in positions.items()],
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _apply(self, row: ViewRow) -> None:
        db = self._db
        if isinstance(row, EventRow):
            r = row.record
            db.execute(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)",
                (r.event_id, r.session_id, _us(r.event_time), encode(r)),
            )
        elif isinstance(row, PaymentRow):
            p = row.record
            db.execute(
                "INSERT OR REPLACE INTO payments VALUES (?, ?, ?, ?)",
                (p.event_id, p.session_id, _us(p.event_time), encode(p)),
            )
        elif isinstance(row, BillRow):
            b = row.record
            db.execute(
                "INSERT OR REPLACE INTO bills VALUES (?, ?, ?, ?)",
                (*row.position, b.session_id, encode(b)),
            )
        elif isinstance(row, ResultRow):
            self._apply_result(row)
        elif isinstance(row, AlertRow):
            a = row.record
            session = a.session_id or (a.subject_id if a.subject_type == "session" else None)
            db.execute(
                "INSERT INTO alerts (alert_id, at_ms, kind, severity, station_id, session_id, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO UPDATE SET "
                "at_ms = excluded.at_ms, kind = excluded.kind, severity = excluded.severity, "
                "station_id = excluded.station_id, session_id = excluded.session_id, "
                "doc = excluded.doc",
                (
                    a.alert_id,
                    to_ms(a.event_time),
                    a.kind,
                    a.severity,
                    a.station_id,
                    session,
                    encode(a),
                ),
            )
        elif isinstance(row, LabelRow):
            label = row.record
            db.execute(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?)",
                (label.event_id, label.alert_id, _us(label.event_time), label.label, encode(label)),
            )
        elif isinstance(row, DeliveryRow):
            db.execute(
                "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    f"{row.notice_key}|{row.destination}|{row.action}",
                    row.notice_key,
                    row.destination,
                    row.action,
                    row.status,
                    row.attempts,
                    row.at,
                ),
            )
        else:  # pragma: no cover - ViewRow is closed
            raise TypeError(f"not a view row: {row!r}")

    def _apply_result(self, row: ResultRow) -> None:
        r = row.record
        part, off = row.position
        self._db.execute(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
            (part, off, r.result_id, r.session_id, encode(r)),
        )
        case = CaseRow.of(r, case_day(r))
        # the day is the first verdict's; a later revision (higher position) replaces the rest
        self._db.execute(
            "INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (result_id) DO UPDATE SET currency = excluded.currency, "
            "outcome = excluded.outcome, expected = excluded.expected, "
            "authorized = excluded.authorized, captured = excluded.captured, "
            "refunded = excluded.refunded, delta = excluded.delta, part = excluded.part, "
            "off = excluded.off WHERE (excluded.part, excluded.off) > (cases.part, cases.off)",
            (
                r.result_id,
                case.day,
                case.currency,
                case.outcome,
                case.expected_minor,
                case.authorized_minor,
                case.captured_minor,
                case.refunded_minor,
                case.delta_minor,
                part,
                off,
            ),
        )

    # ------------------------------------------------------------------ reads

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to consume per (topic, partition), as last committed."""
        with self._lock:
            rows = self._db.execute("SELECT topic, partition, next_offset FROM positions")
            return {(t, p): o for t, p, o in rows}

    def counts(self) -> dict[str, int]:
        """Rows per table (for /healthz)."""
        tables = ("events", "payments", "bills", "results", "cases", "alerts", "labels")
        with self._lock:
            return {
                t: self._db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in (*tables, "deliveries")
            }

    def alert_exists(self, alert_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM alerts WHERE alert_id = ?", (alert_id,))
            return row.fetchone() is not None

    def session(self, session_id: str) -> SessionPicture | None:
        """The session's picture, or None when the view knows nothing about it."""
        with self._lock:
            db = self._db
            events = _docs(
                db.execute(
                    "SELECT doc FROM events WHERE session_id = ? ORDER BY at_us, event_id",
                    (session_id,),
                ),
                SessionEvent,
            )
            payments = _docs(
                db.execute(
                    "SELECT doc FROM payments WHERE session_id = ? ORDER BY at_us, event_id",
                    (session_id,),
                ),
                PaymentEvent,
            )
            bills = _docs(
                db.execute(
                    "SELECT doc FROM bills WHERE session_id = ? ORDER BY part, off", (session_id,)
                ),
                SessionBill,
            )
            results = _docs(
                db.execute(
                    "SELECT doc FROM results WHERE session_id = ? ORDER BY part, off",
                    (session_id,),
                ),
                ReconciliationResult,
            )
            alerts = [
                (seq, decode(doc, FraudAlert))
                for seq, doc in db.execute(
                    "SELECT seq, doc FROM alerts WHERE session_id = ? ORDER BY at_ms, seq",
                    (session_id,),
                )
            ]
            if not (events or payments or bills or results or alerts):
                return None
            by_case: dict[str, list[ReconciliationResult]] = {}
            for r in results:
                by_case.setdefault(r.result_id, []).append(r)
            deliveries = self._deliveries([*by_case, *(a.alert_id for _, a in alerts)])
            return SessionPicture(
                session_id=session_id,
                events=events,
                payments=payments,
                bill=bills[-1] if bills else None,
                bill_revisions=bills,
                reconciliation=[
                    ReconciliationView(
                        result=revs[-1], revisions=revs, deliveries=deliveries.get(rid, [])
                    )
                    for rid, revs in by_case.items()
                ],
                alerts=self._views([a for _, a in alerts], deliveries),
            )

    def alerts(self, q: AlertQuery) -> AlertPage:
        """One page of alerts matching ``q``, newest first (event time, then arrival)."""
        where, args = [], []
        for column, value in (
            ("kind", q.kind),
            ("severity", q.severity),
            ("station_id", q.station),
            ("session_id", q.session),
        ):
            if value is not None:
                where.append(f"a.{column} = ?")
                args.append(value)
        if q.since_ms is not None:
            where.append("a.at_ms >= ?")
            args.append(q.since_ms)
        if q.until_ms is not None:
            where.append("a.at_ms < ?")
            args.append(q.until_ms)
        if q.labelled is not None:
            exists = "EXISTS (SELECT 1 FROM labels l WHERE l.alert_id = a.alert_id)"
            where.append(exists if q.labelled else f"NOT {exists}")
        if q.label is not None:
            where.append(f"{_CURRENT_LABEL} = ?")
            args.append(q.label)
        if q.after is not None:
            where.append("(a.at_ms, a.seq) < (?, ?)")
            args.extend(q.after)
        sql = "SELECT a.seq, a.at_ms, a.doc FROM alerts a"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY a.at_ms DESC, a.seq DESC LIMIT ?"
        args.append(q.limit + 1)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
            more = len(rows) > q.limit
            rows = rows[: q.limit]
            alerts = [decode(doc, FraudAlert) for _, _, doc in rows]
            deliveries = self._deliveries([a.alert_id for a in alerts])
            items = self._views(alerts, deliveries)
        cursor = encode_cursor(rows[-1][1], rows[-1][0]) if more and rows else None
        return AlertPage(items=items, next_cursor=cursor)

    def cases(self, q: SummaryQuery) -> list[CaseRow]:
        """The latest verdict of every case counted on a day of ``q`` (and its currency)."""
        sql = (
            "SELECT day, currency, outcome, expected, authorized, captured, refunded, delta "
            "FROM cases WHERE day BETWEEN ? AND ?"
        )
        args: list[Any] = [q.first.isoformat(), q.last.isoformat()]
        if q.currency is not None:
            sql += " AND currency = ?"
            args.append(q.currency)
        with self._lock:
            return [CaseRow(*row) for row in self._db.execute(sql, args)]

    # ------------------------------------------------------------------ helpers (locked)

    def _deliveries(self, keys: list[str]) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for notice, dest, action, status, attempts, at in self._db.execute(
                "SELECT notice_key, destination, action, status, attempts, at FROM deliveries "
                f"WHERE notice_key IN ({marks}) ORDER BY notice_key, destination, action",
                chunk,
            ):
                out.setdefault(notice, []).append(Delivery(dest, action, status, attempts, at))
        return out

    def _views(
        self, alerts: list[FraudAlert], deliveries: Mapping[str, list[Delivery]]
    ) -> list[AlertView]:
        labels: dict[str, list[AlertLabel]] = {}
        ids = [a.alert_id for a in alerts]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for alert_id, doc in self._db.execute(
                f"SELECT alert_id, doc FROM labels WHERE alert_id IN ({marks}) "
                "ORDER BY at_us, event_id",
                chunk,
            ):
                labels.setdefault(alert_id, []).append(decode(doc, AlertLabel))
        return [
            AlertView(
                alert=a,
                label=current_label(labels.get(a.alert_id, [])),
                labels=labels.get(a.alert_id, []),
                deliveries=deliveries.get(a.alert_id, []),
            )
            for a in alerts
        ]


def _docs(rows: Iterable[tuple[bytes]], record_type: type[T]) -> list[T]:
    return [decode(doc, record_type) for (doc,) in rows]
