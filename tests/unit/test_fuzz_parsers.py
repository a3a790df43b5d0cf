"""Fuzzing of every parser that reads outside input (issue 7, item 3), with hypothesis.

The property, for each parser: either a parsed value, or the project's own documented
rejection (:mod:`topics.exceptions`) with a non-empty reason -- never another exception
type. Inputs are arbitrary bytes/text and near-valid inputs: valid samples (real OCPP
captures and CSV session exports in tests/fixtures, the PSP payload factories, the
reference files in tests/data) with one or a few fields replaced, removed or added, or a
few bytes flipped, inserted or deleted.

Bounded: each test has ``max_examples`` from the active settings profile (``ci`` by
default, ``VOLTGUARD_FUZZ_PROFILE=slow`` for a long run) and ``deadline=None`` (a loaded
machine must not fail a test by being slow).

The operator API's bodies are not fuzzed here: that API is fuzzed with schemathesis
against its own OpenAPI document (issue 6, item 3).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.ingress import IngressConfig, make_app
from tests.fixtures.psp_payloads import (
    ADYEN_KEY,
    CREATED,
    adyen_item,
    adyen_notification,
    signed_adyen_item,
    stripe_charge,
    stripe_dispute,
    stripe_event,
    stripe_payment_intent,
)
from topics import records as rec
from topics import samples
from topics.adapters.csv_sessions import (
    ImportedSession,
    RowError,
    import_rows,
    load_shipped_mapping,
    read_rows,
)
from topics.adapters.ocpp import OcppAdapter, pending_key
from topics.adapters.psp import (
    adyen_event_id,
    map_adyen_item,
    map_generic,
    map_stripe_event,
    stripe_event_id,
)
from topics.adapters.reference import read_reference_file
from topics.adapters.signatures import (
    stripe_signature_header,
    verify_adyen_item,
    verify_stripe_header,
)
from topics.codec import decode, encode
from topics.exceptions import (
    AdapterError,
    RecordDecodeError,
    SignatureVerificationError,
    TopicsError,
    UnsupportedFrame,
    UnsupportedPspEvent,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SECRET = b"fuzz-secret"

settings.register_profile("ci", max_examples=120, deadline=None, derandomize=True)
settings.register_profile(
    "slow", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("VOLTGUARD_FUZZ_PROFILE", "ci"))


def rejected(exc: BaseException, *allowed: type[BaseException]) -> None:
    """An exception is only acceptable as a documented rejection with a reason."""
    if not isinstance(exc, allowed):
        raise AssertionError(f"{type(exc).__name__} is not a documented rejection") from exc
    assert str(exc).strip(), f"{type(exc).__name__} without a reason"


def outcome(call: Callable[[], Any], *allowed: type[BaseException]) -> Any:
    """``call()``'s value, or ``None`` when it raised one of ``allowed`` with a reason."""
    try:
        return call()
    except Exception as exc:  # the property: anything else fails the test
        rejected(exc, *allowed)
        return None


# ------------------------------------------------------------------------ strategies


def dumps(doc: Any) -> bytes:
    """JSON bytes of ``doc`` as any sender could write them: integers beyond 64 bits,
    ``NaN``/``Infinity`` and escaped lone surrogates included (orjson refuses those)."""
    return json.dumps(doc).encode()


leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", " ", "1e309", "NaN", "-1", "2024-02-30T25:61:00Z", "\x00", "\ud7ff"])
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _mutate_once(draw: st.DrawFn, doc: Any) -> Any:
    paths = list(_paths(doc))
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["replace", "delete", "add", "wrap"]))
    if not path:
        return draw(json_values) if op == "replace" else [doc] if op == "wrap" else doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "replace":
        parent[last] = draw(json_values)
    elif op == "delete":
        del parent[last]
    elif op == "wrap":
        parent[last] = draw(
            st.sampled_from([[parent[last]], {"v": parent[last]}, str(parent[last])])
        )
    elif isinstance(parent[last], dict):
        parent[last][draw(st.text(max_size=10))] = draw(json_values)
    elif isinstance(parent[last], list):
        parent[last].append(draw(json_values))
    else:
        parent[last] = draw(json_values)
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """A deep copy of the JSON document ``base`` with one to three mutations."""
    doc = copy.deepcopy(draw(base) if isinstance(base, st.SearchStrategy) else base)
    for _ in range(draw(st.integers(1, 3))):
        doc = _mutate_once(draw, doc)
    return doc


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes flipped, inserted or deleted, or cut short."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


# ------------------------------------------------------------------------ OCPP-J frames

START = orjson.loads(samples.start_transaction(station_id="CP-1", unique_id="u1", id_tag="TAG-1"))
FRAMES_16 = [
    START,
    orjson.loads(
        samples.start_transaction_result(station_id="CP-1", unique_id="u1", transaction_id=7)
    ),
    orjson.loads(samples.meter_values(station_id="CP-1", transaction_id=7, seq=3, energy_wh=900)),
    orjson.loads(
        samples.stop_transaction(
            station_id="CP-1", unique_id="u2", transaction_id=7, meter_stop_wh=990
        )
    ),
]
TX_EVENT = {
    "station_id": "CP-2",
    "received_at": "2024-03-01T12:00:00Z",
    "protocol": "ocpp2.0.1",
    "frame": [2, "m1", "TransactionEvent", {
        "eventType": "Updated", "timestamp": "2024-03-01T12:01:00Z",
        "triggerReason": "MeterValuePeriodic", "seqNo": 1,
        "transactionInfo": {"transactionId": "tx-abc"},
        "idToken": {"idToken": "EMAID-DE-123", "type": "eMAID"},
        "evse": {"id": 2, "connectorId": 1},
        "meterValue": [{"timestamp": "2024-03-01T12:01:00Z", "sampledValue": [
            {"value": 10.5, "context": "Sample.Periodic",
             "unitOfMeasure": {"unit": "kWh", "multiplier": 0}},
            {"value": 11, "measurand": "Power.Active.Import",
             "unitOfMeasure": {"unit": "W", "multiplier": 3}},
            {"value": 230.1, "measurand": "Voltage", "phase": "L1-N"},
            {"value": 55, "measurand": "SoC"},
        ]}],
    }],
}  # fmt: skip


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def wrap(frame: bytes) -> bytes:
    """A frame's bytes (possibly malformed) in a CSMS envelope, as the ingest reads it."""
    return (
        b'{"station_id":"CP-1","received_at":"2024-03-01T08:00:00Z","protocol":"ocpp1.6","frame":'
        + frame
        + b"}"
    )


CAPTURED = [
    line.strip()
    for path in sorted((FIXTURES / "ocpp_captures" / "gnezdilov_v16").glob("*.txt"))
    for line in path.read_text().splitlines()
    if line.strip().startswith("[")
]
ENVELOPES = [*FRAMES_16, TX_EVENT]
CAPTURED_JSON = [orjson.loads(t) for t in CAPTURED if _is_json(t)]
PENDING = {pending_key("CP-1", "u1"): orjson.dumps({"action": "StartTransaction",
                                                   "payload": START["frame"][3]})}  # fmt: skip
ADAPTER = OcppAdapter(hash_secret=SECRET)


def adapt_frame(raw: bytes) -> None:
    """What the ingest does with a value of ``ocpp_frames``: decode, then adapt."""

    def run() -> Any:
        adapted = ADAPTER.adapt(decode(raw, rec.OcppFrame), pending=PENDING)
        for _, key, record in adapted.records:
            assert key and encode(record)
        return adapted

    outcome(run, RecordDecodeError, UnsupportedFrame)


def test_every_captured_and_sample_frame_parses_or_is_rejected_with_a_reason() -> None:
    for doc in ENVELOPES:
        adapt_frame(dumps(doc))
    for text in CAPTURED:  # as captured, some not even JSON: embedded byte for byte
        adapt_frame(wrap(text.encode()))


@given(st.binary(max_size=300))
def test_ocpp_arbitrary_bytes(raw: bytes) -> None:
    adapt_frame(raw)


@given(mutated(st.sampled_from(ENVELOPES)))
def test_ocpp_mutated_envelopes(doc: Any) -> None:
    adapt_frame(dumps(doc))


@given(st.sampled_from(CAPTURED_JSON).flatmap(mutated))
def test_ocpp_mutated_real_captures(frame: Any) -> None:
    adapt_frame(wrap(dumps(frame)))


@given(st.sampled_from(CAPTURED).flatmap(lambda t: mutated_bytes(t.encode())))
def test_ocpp_mutated_capture_bytes(frame: bytes) -> None:
    adapt_frame(wrap(frame))


@given(st.sampled_from(ENVELOPES).flatmap(lambda d: mutated_bytes(orjson.dumps(d))))
def test_ocpp_mutated_bytes(raw: bytes) -> None:
    adapt_frame(raw)


# ------------------------------------------------------------------------ records on topics

RECORD_SAMPLES: list[tuple[type, bytes]] = [
    (rec.OcppFrame, orjson.dumps(START)),
]


def _topic_samples() -> list[tuple[type, bytes]]:
    """Valid records of the types the stages decode from their input topics."""
    from topics.simulation.config import SimulationConfig
    from topics.simulation.engine import Simulation

    wanted = {
        "session_events": rec.SessionEvent,
        "meter_readings": rec.MeterReading,
        "payment_events": rec.PaymentEvent,
        "psp_payment_events": rec.PaymentEvent,
        "csms_session_events": rec.SessionEvent,
        "csms_meter_readings": rec.MeterReading,
        "stations": rec.Station,
        "tariffs": rec.Tariff,
    }
    found: dict[type, bytes] = {}
    for doc in FRAMES_16[1:]:  # canonical session events and readings, as the ingest makes
        adapted = ADAPTER.adapt(decode(orjson.dumps(doc), rec.OcppFrame), pending=PENDING)
        for _, _, record in adapted.records:
            found.setdefault(type(record), encode(record))
    sim = Simulation(SimulationConfig(seed=5, sessions=6, stations=2), hash_secret=SECRET)
    for short, _, value in sim.records():
        kind = wanted.get(short)
        if kind is not None and kind not in found:
            found[kind] = value
    return sorted(found.items(), key=lambda kv: kv[0].__name__)


TOPIC_SAMPLES = RECORD_SAMPLES + _topic_samples()


@given(st.sampled_from([t for t, _ in TOPIC_SAMPLES]), st.binary(max_size=200))
def test_record_decode_arbitrary_bytes(kind: type, raw: bytes) -> None:
    outcome(lambda: decode(raw, kind), RecordDecodeError)


@given(
    st.sampled_from(TOPIC_SAMPLES).flatmap(
        lambda s: st.tuples(st.just(s[0]), mutated(orjson.loads(s[1])))
    )
)
def test_record_decode_mutated(case: tuple[type, Any]) -> None:
    kind, doc = case
    value = outcome(lambda: decode(dumps(doc), kind), RecordDecodeError)
    if value is not None:
        assert decode(encode(value), kind) == value  # what was accepted re-encodes


def test_record_decode_samples_are_valid() -> None:
    assert {t for t, _ in TOPIC_SAMPLES} >= {rec.SessionEvent, rec.MeterReading, rec.PaymentEvent}
    for kind, raw in TOPIC_SAMPLES:
        decode(raw, kind)


# ------------------------------------------------------------------------ PSP webhooks

STRIPE_EVENTS = [
    stripe_event("payment_intent.amount_capturable_updated", stripe_payment_intent()),
    stripe_event("charge.captured", stripe_charge()),
    stripe_event("charge.refunded", stripe_charge(amount_refunded=500, refunded=False)),
    stripe_event("charge.dispute.created", stripe_dispute()),
    stripe_event("payment_intent.payment_failed", stripe_payment_intent(status="requires_payment_method")),
]  # fmt: skip
ADYEN_ITEMS = [
    adyen_item(),
    adyen_item(eventCode="CAPTURE", originalReference="7914073381342284", pspReference="88"),
    adyen_item(eventCode="REFUND", originalReference="7914073381342284", pspReference="89"),
    adyen_item(eventCode="CHARGEBACK", originalReference="7914073381342284", pspReference="90"),
    adyen_item(success="false", reason="Refused"),
]
GENERIC = {
    "event_id": "w-1", "event_time": "2024-03-01T10:00:00Z", "payment_id": "w-9",
    "psp": "wallet", "psp_reference": "w-9", "kind": "captured", "amount_minor": 700,
    "currency": "EUR", "method": "prepaid", "station_id": "CP-1", "transaction_id": 7,
    "card_fingerprint": "fp-1", "terminal_id": "T-1",
}  # fmt: skip
PSP_REJECTIONS = (AdapterError, UnsupportedPspEvent)


def stripe_pipeline(event: Any) -> None:
    """What the ingress does with a verified Stripe body, after parsing it as JSON."""
    if not isinstance(event, dict):
        return  # the ingress answers 400 itself (``$: expected a JSON object``)
    outcome(lambda: stripe_event_id(event), AdapterError)
    outcome(lambda: map_stripe_event(event, hash_secret=SECRET), *PSP_REJECTIONS)


def test_psp_samples_map() -> None:
    for event in STRIPE_EVENTS:
        map_stripe_event(event, hash_secret=SECRET)
    for item in ADYEN_ITEMS:
        map_adyen_item(item, hash_secret=SECRET)
    map_generic(orjson.dumps(GENERIC), hash_secret=SECRET)


@given(mutated(st.sampled_from(STRIPE_EVENTS)))
def test_stripe_mutated_events(event: Any) -> None:
    stripe_pipeline(event)


@given(json_values)
def test_stripe_arbitrary_json(event: Any) -> None:
    stripe_pipeline(event)


@given(mutated(st.sampled_from(ADYEN_ITEMS)))
def test_adyen_mutated_items(item: Any) -> None:
    if not isinstance(item, dict):
        return  # the ingress rejects non-object items itself
    outcome(lambda: adyen_event_id(item), AdapterError)
    outcome(lambda: map_adyen_item(item, hash_secret=SECRET), *PSP_REJECTIONS)
    outcome(lambda: verify_adyen_item(item, hmac_key_hex=ADYEN_KEY), SignatureVerificationError)


@given(mutated(GENERIC))
def test_generic_mutated_bodies(body: Any) -> None:
    outcome(lambda: map_generic(dumps(body), hash_secret=SECRET), AdapterError)


@given(st.one_of(st.binary(max_size=200), mutated_bytes(orjson.dumps(GENERIC))))
def test_generic_arbitrary_bytes(raw: bytes) -> None:
    outcome(lambda: map_generic(raw, hash_secret=SECRET), AdapterError)


BODY = orjson.dumps(STRIPE_EVENTS[1])
GOOD_HEADER = stripe_signature_header(BODY, secret="whsec_a", timestamp=CREATED)


@given(
    st.one_of(
        st.none(),
        st.text(max_size=120),
        mutated_bytes(GOOD_HEADER.encode()).map(lambda b: b.decode("utf-8", "replace")),
        st.lists(
            st.sampled_from(["t=", "v1=", "v0=", ",", "=", str(CREATED), "abc", " ", "t=1e9"]),
            max_size=8,
        ).map("".join),
    )
)
def test_stripe_signature_headers(header: str | None) -> None:
    def verify() -> None:
        verify_stripe_header(BODY, header, secrets=("whsec_a",), now=CREATED + 1, tolerance_s=300)

    try:
        verify()
    except SignatureVerificationError as exc:
        assert str(exc).strip() and exc.reason.strip()
    except Exception as exc:
        rejected(exc, SignatureVerificationError)


# ---------------------------------------------------------------- the ingress end points

TOKEN = "fuzz-bearer-token-0123456789"
CONFIG = IngressConfig(
    hash_secret=SECRET, stripe_secrets=("whsec_a",), adyen_hmac_key=ADYEN_KEY,
    api_token=TOKEN, max_body_bytes=64 * 1024, dedupe_ids=10,
)  # fmt: skip


class NullProducer:
    async def send_many(self, messages: Any) -> None:
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def ingress() -> Iterator[Callable[[str, bytes, dict[str, str]], tuple[int, str]]]:
    """POST to the ingress app (aiohttp's test server, no Kafka): (status, body text)."""
    loop = asyncio.new_event_loop()
    app = make_app(CONFIG, NullProducer(), clock=lambda: CREATED + 5)
    client = TestClient(TestServer(app), loop=loop)
    loop.run_until_complete(client.start_server())

    async def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        resp = await client.post(path, data=body, headers=headers)
        return resp.status, await resp.text()

    yield lambda path, body, headers: loop.run_until_complete(post(path, body, headers))
    loop.run_until_complete(client.close())
    loop.close()


def explained(status: int, text: str) -> None:
    """A reply the ingress documents: accepted, or a 4xx that says why."""
    assert status in (200, 400, 401, 413), (status, text)
    if status != 200:
        assert text.strip(), "a rejection without a reason"


def signed(body: bytes) -> dict[str, str]:
    header = stripe_signature_header(body, secret="whsec_a", timestamp=CREATED)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        mutated(st.sampled_from(STRIPE_EVENTS)).map(dumps),
        st.sampled_from(STRIPE_EVENTS).flatmap(lambda e: mutated_bytes(orjson.dumps(e))),
        st.binary(max_size=100),
    )
)
def test_ingress_stripe_signed_fuzzed_bodies(ingress, body: bytes) -> None:  # type: ignore[no-untyped-def]
    explained(*ingress("/webhooks/stripe", body, signed(body)))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        mutated(adyen_notification(signed_adyen_item())),
        mutated(st.sampled_from(ADYEN_ITEMS)).map(lambda i: adyen_notification(i)),
        json_values,
    )
)
def test_ingress_adyen_fuzzed_bodies(ingress, doc: Any) -> None:  # type: ignore[no-untyped-def]
    body = dumps(doc)
    explained(*ingress("/webhooks/adyen", body, {"Content-Type": "application/json"}))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(mutated(GENERIC).map(dumps), mutated_bytes(orjson.dumps(GENERIC))))
def test_ingress_payments_fuzzed_bodies(ingress, body: bytes) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    explained(*ingress("/payments", body, headers))


# ------------------------------------------------------------------------ CSV session rows

CSV_SAMPLES = {
    "dundee_sample.csv": "dundee",
    "dundee_ddmm_sample.csv": "dundee",
    "perth_kinross_sample.csv": "perth_kinross",
    "boulder_sample.csv": "boulder",
    "norway_residential_sample.csv": "norway_residential",
    "paris_belib_sample.csv": "paris_belib",
    "workplace_dataverse_sample.csv": "workplace_dataverse",
}


def _csv_rows(sample: str) -> tuple[str, list[dict[str, str]]]:
    mapping = load_shipped_mapping(CSV_SAMPLES[sample])
    with (FIXTURES / "real_sessions" / sample).open(encoding=mapping.encoding, newline="") as fh:
        return CSV_SAMPLES[sample], [r.fields for r in read_rows(fh, mapping) if r.problem is None]


CSV_ROWS = {sample: _csv_rows(sample) for sample in CSV_SAMPLES}
cell_text = st.one_of(
    st.text(max_size=24),
    st.text(alphabet="0123456789-+:.,/ TZe", max_size=24),
    st.sampled_from(["", "NA", "-0", "1e400", "nan", "inf", "9" * 30, "1970-01-01 00:00",
                     "2017-13-45T00:00:00", "24:00", "Fri Apr 14 2017 00:49:24 GMT+9900 (X)"]),
)  # fmt: skip


def import_checked(rows: list[dict[str, str]], mapping_name: str) -> None:
    mapping = load_shipped_mapping(mapping_name)

    def run() -> None:
        for result in import_rows(rows, mapping, hash_secret=SECRET):
            assert isinstance(result, ImportedSession | RowError), type(result)
            if isinstance(result, RowError):
                assert result.reason.strip() and result.kind.strip()

    outcome(run, AdapterError)


@st.composite
def mutated_csv_rows(draw: st.DrawFn) -> tuple[str, list[dict[str, str]]]:
    sample = draw(st.sampled_from(sorted(CSV_ROWS)))
    mapping_name, rows = CSV_ROWS[sample]
    picked = [dict(r) for r in draw(st.lists(st.sampled_from(rows), min_size=1, max_size=6))]
    for _ in range(draw(st.integers(1, 6))):
        row = draw(st.sampled_from(picked))
        column = draw(st.sampled_from(sorted(row)))
        if draw(st.integers(0, 5)) == 0:
            del row[column]
        else:
            row[column] = draw(cell_text)
    return mapping_name, picked


@given(mutated_csv_rows())
def test_csv_mutated_real_rows(case: tuple[str, list[dict[str, str]]]) -> None:
    import_checked(case[1], case[0])


@given(st.sampled_from(sorted(CSV_SAMPLES)), st.data())
def test_csv_mutated_file_text(sample: str, data: st.DataObject) -> None:
    """The whole file as text, a few characters changed: read_rows, then import_rows."""
    mapping = load_shipped_mapping(CSV_SAMPLES[sample])
    raw = (FIXTURES / "real_sessions" / sample).read_bytes()[:1500]
    text = data.draw(mutated_bytes(raw)).decode(mapping.encoding, "replace")

    def run() -> None:
        for result in import_rows(
            read_rows(text.splitlines(keepends=True), mapping), mapping, hash_secret=SECRET
        ):
            if isinstance(result, RowError):
                assert result.reason.strip()

    outcome(run, AdapterError)


# ------------------------------------------------------------------------ reference files

NOW = datetime(2024, 5, 1, tzinfo=UTC)
REFERENCE = {
    kind: (ROOT / "tests" / "data" / f"{kind}.csv").read_bytes() for kind in ("stations", "tariffs")
}


def _as_json(kind: str) -> list[Any]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{kind}.csv"
        path.write_bytes(REFERENCE[kind])
        load = read_reference_file(kind, path, now=NOW)
        return [orjson.loads(msgspec.json.encode(r)) for r in load.records]


REFERENCE_JSON = {kind: _as_json(kind) for kind in REFERENCE}


def read_reference(kind: str, fmt: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{kind}.{fmt}"
        path.write_bytes(data)

        def run() -> None:
            load = read_reference_file(kind, path, now=NOW)
            for location, reason in load.rejected:
                assert location and reason.strip(), (location, reason)

        outcome(run, AdapterError)


def test_reference_samples_load() -> None:
    assert REFERENCE_JSON["stations"] and REFERENCE_JSON["tariffs"]


@given(st.sampled_from(sorted(REFERENCE)), st.data())
def test_reference_csv_mutated(kind: str, data: st.DataObject) -> None:
    read_reference(kind, "csv", data.draw(mutated_bytes(REFERENCE[kind])))


@given(st.sampled_from(sorted(REFERENCE)), st.data())
def test_reference_json_mutated(kind: str, data: st.DataObject) -> None:
    docs = data.draw(mutated(REFERENCE_JSON[kind]))
    fmt = data.draw(st.sampled_from(["json", "jsonl"]))
    if fmt == "jsonl" and isinstance(docs, list):
        raw = b"\n".join(dumps(d) for d in docs)
    else:
        raw = dumps(docs)
    read_reference(kind, fmt, raw)


@given(st.sampled_from(sorted(REFERENCE)), st.sampled_from(["csv", "json", "jsonl"]),
       st.binary(max_size=200))  # fmt: skip
def test_reference_arbitrary_bytes(kind: str, fmt: str, raw: bytes) -> None:
    read_reference(kind, fmt, raw)


def test_topics_error_is_the_root_of_the_rejections() -> None:
    for exc in (AdapterError, RecordDecodeError, SignatureVerificationError, UnsupportedFrame,
                UnsupportedPspEvent):  # fmt: skip
        assert issubclass(exc, TopicsError)


# ------------------------------------------------------------------------ found by fuzzing


def test_regression_non_ascii_stripe_signature_is_unparseable() -> None:
    """Found by test_stripe_signature_headers: ``t=0,v1=\\x80`` made hmac.compare_digest
    raise TypeError (non-ASCII str), a 500 from the ingress instead of a 401."""
    with pytest.raises(SignatureVerificationError) as info:
        verify_stripe_header(
            BODY, "t=0,v1=\x80", secrets=("whsec_a",), now=CREATED, tolerance_s=300
        )
    assert info.value.reason == "unparseable"


def test_regression_ingress_answers_401_to_a_non_ascii_signature(ingress) -> None:  # type: ignore[no-untyped-def]
    headers = {"Stripe-Signature": f"t={CREATED},v1=é", "Content-Type": "application/json"}
    status, text = ingress("/webhooks/stripe", BODY, headers)
    assert status == 401 and "unparseable" in text


@pytest.mark.parametrize(
    "event",
    [
        stripe_event("charge.captured", stripe_charge(payment_method_details={"type": []})),
        stripe_event(
            "payment_intent.amount_capturable_updated",
            stripe_payment_intent(latest_charge=None, payment_method_types=[["card"]]),
        ),
    ],
)
def test_regression_stripe_method_type_of_the_wrong_type(event: dict[str, Any]) -> None:
    """Found by test_stripe_mutated_events: a list where the payment method type belongs
    raised TypeError (unhashable, looked up in the set of wallets) instead of mapping."""
    assert map_stripe_event(event, hash_secret=SECRET).method == "card"
