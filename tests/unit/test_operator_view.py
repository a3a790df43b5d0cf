"""The operator API's view: projection, parsing, cursors, summary, and the SQLite store."""

from __future__ import annotations

from datetime import date

import pytest

from streams.api_store import ViewStore
from tests.api_data import ALERTS, LABEL, messages, seeded_store
from topics.exceptions import RecordDecodeError
from topics.operator_view import (
    AlertQuery,
    BadRequest,
    BillRow,
    CaseRow,
    DeliveryRow,
    LabelRow,
    ResultRow,
    SummaryQuery,
    decode_cursor,
    encode_cursor,
    parse_alert_query,
    parse_datetime,
    parse_label_request,
    parse_summary_query,
    project,
    summarise,
)
from topics.records import AlertLabel

# --------------------------------------------------------------------------- projection


def test_project_maps_each_followed_topic_to_its_row() -> None:
    kinds = {}
    for offset, (short, key, value) in enumerate(messages()):
        row = project(short, key, value, 3, offset)
        kinds.setdefault(short, set()).add(type(row).__name__)
    assert kinds["session_events"] == {"EventRow", "NoneType"}  # the clock tick is skipped
    assert kinds["payment_events"] == {"PaymentRow"}
    assert kinds["session_bills"] == {"BillRow"}
    assert kinds["reconciliation"] == {"ResultRow"}
    assert kinds["fraud_alerts"] == {"AlertRow"}
    assert kinds["alert_labels"] == {"LabelRow"}
    assert kinds["alert_deliveries"] == {"DeliveryRow"}


def test_project_keeps_the_position_of_bills_and_results() -> None:
    short, key, value = next(m for m in messages() if m[0] == "reconciliation")
    row = project(short, key, value, 4, 17)
    assert isinstance(row, ResultRow) and row.position == (4, 17)
    short, key, value = next(m for m in messages() if m[0] == "session_bills")
    bill = project(short, key, value, 2, 9)
    assert isinstance(bill, BillRow) and bill.position == (2, 9)


def test_project_rejects_a_broken_record_with_the_field() -> None:
    with pytest.raises(RecordDecodeError, match=r"\$\.severity"):
        project(
            "fraud_alerts",
            b"a",
            b'{"event_id":"e","event_time":"2024-05-06T10:00:00Z",'
            b'"source":"d","alert_id":"a","kind":"k","severity":"loud","score":1,'
            b'"subject_type":"session","subject_id":"s","explanation":"x","detector":"r"}',
            0,
            0,
        )
    with pytest.raises(RecordDecodeError, match="not valid JSON"):
        project("session_bills", b"s", b"{nope", 0, 0)


def test_project_delivery_keys_split_from_the_right() -> None:
    row = project("alert_deliveries", b"rec|a|b|slack|resolve", b'{"status":"failed"}', 0, 0)
    assert row == DeliveryRow("rec|a|b", "slack", "resolve", "failed", 0, None)
    with pytest.raises(RecordDecodeError, match="notice\\|destination\\|action"):
        project("alert_deliveries", b"no-bars", b'{"status":"failed"}', 0, 0)
    assert project("alert_deliveries", b"a|b|c", None, 0, 0) is None  # a tombstone


def test_project_refuses_a_topic_it_does_not_follow() -> None:
    with pytest.raises(ValueError, match="does not follow"):
        project("meter_readings", b"s", b"{}", 0, 0)


# --------------------------------------------------------------------------- parsing


def test_alert_query_parses_every_filter() -> None:
    q = parse_alert_query(
        {
            "kind": "card_testing",
            "severity": "warning",
            "station": "CP2",
            "session": "s9",
            "since": "2024-05-06T10:00:00Z",
            "until": "2024-05-06T12:00:00.5+02:00",
            "labelled": "true",
            "label": "fraud",
            "limit": "500",
            "cursor": "1714989600000.7",
        }
    )
    assert q == AlertQuery(
        kind="card_testing",
        severity="warning",
        station="CP2",
        session="s9",
        since_ms=1714989600000,
        until_ms=1714989600500,
        labelled=True,
        label="fraud",
        limit=500,
        after=(1714989600000, 7),
    )


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"severity": "loud"}, "severity"),
        ({"label": "maybe"}, "label"),
        ({"labelled": "yes"}, "labelled"),
        ({"limit": "501"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "\u0661"}, "limit"),  # an Arabic-Indic digit is not an integer here
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-05-06T10:00:00"}, "since"),  # no offset: ambiguous
        ({"until": "2024-02-30T10:00:00Z"}, "until"),
        ({"until": "2024-05-06T10:00:00+25:00"}, "until"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "1.2\n"}, "cursor"),
        ({"kind": ""}, "kind"),
        ({"station": "x" * 257}, "station"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_alert_query_names_the_bad_parameter(params: dict[str, str], name: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_alert_query(params)
    assert info.value.parameter == name


def test_datetime_accepts_a_leap_second_and_lower_case() -> None:
    assert parse_datetime("since", "2016-12-31t23:59:60z") == parse_datetime(
        "since", "2016-12-31T23:59:59Z"
    )


def test_summary_query_defaults_to_the_last_30_days() -> None:
    q = parse_summary_query({}, today=date(2024, 5, 31))
    assert (q.first, q.last, q.currency) == (date(2024, 5, 2), date(2024, 5, 31), None)
    q = parse_summary_query({"to": "2024-05-06", "currency": "GBP"}, today=date(2030, 1, 1))
    assert (q.first, q.last, q.currency) == (date(2024, 4, 7), date(2024, 5, 6), "GBP")
    for bad in ({"from": "2024-5-6"}, {"to": "2024-13-01"}, {"currency": "eur"}, {"x": "1"}):
        with pytest.raises(BadRequest):
            parse_summary_query(bad, today=date(2024, 5, 31))


def test_label_request_forbids_unknown_fields_and_bad_labels() -> None:
    body = parse_label_request(b'{"label": "unsure", "comment": "odd", "analyst": "bo"}')
    assert (body.label, body.comment, body.analyst) == ("unsure", "odd", "bo")
    assert parse_label_request(b'{"label": "fraud"}').analyst == "operator-api"
    for bad in (b'{"label": "maybe"}', b'{"label": "fraud", "note": "x"}', b"[]", b"{", b""):
        with pytest.raises(BadRequest):
            parse_label_request(bad)


def test_cursor_round_trips() -> None:
    assert decode_cursor(encode_cursor(1714989600000, 12)) == (1714989600000, 12)


# --------------------------------------------------------------------------- summary


def test_summary_counts_latest_verdicts_per_day_and_currency() -> None:
    rows = [
        CaseRow("2024-05-07", None, "unrated", 0, 0, 0, 0, 0),
        CaseRow("2024-05-06", "EUR", "missing_payment", 500, 0, 0, 0, -500),
        CaseRow("2024-05-06", "GBP", "refund_exceeds_capture", 100, 100, 100, 150, -150),
        CaseRow("2024-05-06", "EUR", "matched", 200, 200, 200, 0, 0),
    ]
    eur, gbp, unknown = summarise(rows)
    assert (eur.day, eur.currency, eur.cases) == ("2024-05-06", "EUR", 2)
    assert eur.outcomes == {"matched": 1, "missing_payment": 1}
    assert (eur.billed_minor, eur.captured_minor, eur.leakage_minor) == (700, 200, 500)
    assert eur.unreconciled_minor == 500
    assert (gbp.refunded_minor, gbp.leakage_minor, gbp.unreconciled_minor) == (150, 0, 150)
    assert (unknown.day, unknown.currency, unknown.cases) == ("2024-05-07", None, 1)
    assert summarise([]) == []


# --------------------------------------------------------------------------- store


def test_store_session_picture_has_everything_in_order() -> None:
    store = seeded_store()
    picture = store.session("s1")
    assert picture is not None
    assert [e.kind for e in picture.events] == ["started", "ended"]
    assert [p.amount_minor for p in picture.payments] == [300]
    assert picture.bill is not None and picture.bill.total_minor == 500
    assert [b.total_minor for b in picture.bill_revisions] == [400, 500]
    (case,) = picture.reconciliation
    assert [r.outcome for r in case.revisions] == ["missing_payment", "undercharged"]
    assert case.result.outcome == "undercharged" and case.result.delta_minor == -200
    (view,) = picture.alerts
    assert view.alert.alert_id == "alert-00"
    assert view.label == LABEL and view.labels == [LABEL]
    assert [(d.destination, d.action, d.status) for d in view.deliveries] == [
        ("pager", "trigger", "delivered")
    ]
    assert store.session("nobody") is None


def test_store_alert_pages_are_stable_and_complete() -> None:
    store = seeded_store()
    seen, cursor = [], None
    while True:
        page = store.alerts(AlertQuery(limit=2, after=decode_cursor(cursor) if cursor else None))
        seen.extend(v.alert.alert_id for v in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["alert-04", "alert-03", "alert-02", "alert-01", "alert-00"]
    # an alert arriving between pages never shifts the next page
    first = store.alerts(AlertQuery(limit=2))
    store.apply([project("fraud_alerts", b"n", _late_alert(), 0, 99)], {})  # type: ignore[list-item]
    second = store.alerts(AlertQuery(limit=2, after=decode_cursor(first.next_cursor or "")))
    assert [v.alert.alert_id for v in second.items] == ["alert-02", "alert-01"]


def _late_alert() -> bytes:
    from msgspec import structs

    from topics.codec import encode

    return encode(structs.replace(ALERTS[3], alert_id="alert-late", event_id="late"))


def test_store_alert_filters() -> None:
    store = seeded_store()

    def ids(**kw: object) -> list[str]:
        return [v.alert.alert_id for v in store.alerts(AlertQuery(**kw)).items]  # type: ignore[arg-type]

    assert ids(kind="card_testing") == ["alert-02", "alert-01"]
    assert ids(severity="critical") == ["alert-04", "alert-00"]
    assert ids(station="CP1") == ["alert-03", "alert-00"]
    assert ids(session="s3") == ["alert-04"]
    assert ids(labelled=True) == ["alert-00"]
    assert ids(labelled=False) == ["alert-04", "alert-03", "alert-02", "alert-01"]
    assert ids(label="fraud") == ["alert-00"]
    since = parse_datetime("since", "2024-05-06T10:40:00Z")
    until = parse_datetime("until", "2024-05-06T10:55:00Z")
    assert ids(since_ms=since, until_ms=until) == ["alert-02", "alert-01"]
    assert ids(since_ms=until, until_ms=since) == []


def test_store_latest_label_wins_whatever_the_order_it_arrives_in() -> None:
    store = seeded_store()
    later = AlertLabel(
        event_id="label-2",
        event_time=LABEL.event_time.replace(hour=23),
        source="api",
        alert_id="alert-00",
        label="legitimate",
        analyst="bo",
    )
    store.apply([LabelRow(later), LabelRow(LABEL)], {})  # the older one again, last
    picture = store.session("s1")
    assert picture is not None and picture.alerts[0].label == later
    assert [v.alert.alert_id for v in store.alerts(AlertQuery(label="fraud")).items] == []


def test_store_cases_keep_the_first_day_and_the_latest_verdict() -> None:
    store = seeded_store()
    q = SummaryQuery(date(2024, 5, 6), date(2024, 5, 7))
    eur, gbp = summarise(store.cases(q))
    assert (eur.day, eur.currency, eur.cases) == ("2024-05-06", "EUR", 2)
    assert eur.outcomes == {"matched": 1, "undercharged": 1}
    assert (eur.billed_minor, eur.captured_minor) == (900, 700)
    assert (eur.leakage_minor, eur.unreconciled_minor) == (200, 200)
    assert (gbp.day, gbp.currency, gbp.outcomes) == ("2024-05-07", "GBP", {"overcharged": 1})
    assert (gbp.leakage_minor, gbp.unreconciled_minor) == (0, 100)
    assert summarise(store.cases(SummaryQuery(date(2024, 5, 6), date(2024, 5, 7), "GBP"))) == [gbp]


def test_store_file_keeps_rows_and_positions_in_one_transaction(tmp_path) -> None:
    path = str(tmp_path / "view.sqlite3")
    store = ViewStore(path)
    rows = [project(s, k, v, 0, i) for i, (s, k, v) in enumerate(messages())]
    store.apply([r for r in rows if r is not None], {("t", 0): 41, ("t", 1): 7})

    class Boom(Exception):
        pass

    class Exploding:
        def __iter__(self):
            yield LabelRow(LABEL)
            raise Boom

    with pytest.raises(Boom):
        store.apply(Exploding(), {("t", 0): 99})
    store.close()
    again = ViewStore(path)
    assert again.positions() == {("t", 0): 41, ("t", 1): 7}  # the failed batch left nothing
    assert again.counts()["alerts"] == len(ALERTS)
    assert again.session("s2") is not None
    again.close()
