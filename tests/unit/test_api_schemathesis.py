"""Schemathesis fuzzes a live operator API on 127.0.0.1 against the API's own OpenAPI document.

Every operation gets schema-generated requests (valid and invalid: schemathesis 4's
examples, coverage and fuzzing phases), with the bearer token; the default checks apply:
no 5xx, status codes, content types, headers and bodies conform to the document, invalid
input is rejected, a request without the token gets 401. The view is the seeded one of
``tests/api_data.py``; labels go to a recorder (the broker test covers the topic).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation

from streams.api import make_app
from streams.api_openapi import openapi_document
from streams.localkafka import find_free_port
from tests.api_data import TOKEN, seeded_store
from tests.unit.test_api_app import Recorder, _health

pytestmark = pytest.mark.slow


def _with_seeded_examples() -> dict:
    """The API's document plus examples naming ids the seeded view holds, so that the
    examples phase also reaches the 200 and 201 answers (random ids only meet 404)."""
    document = openapi_document()
    paths = document["paths"]
    paths["/v1/sessions/{session_id}"]["get"]["parameters"][0]["example"] = "s1"
    label = paths["/v1/alerts/{alert_id}/labels"]["post"]
    label["parameters"][0]["example"] = "alert-00"
    label["requestBody"]["content"]["application/json"]["example"] = {
        "label": "unsure",
        "comment": "from the fuzz test",
        "analyst": "schemathesis",
    }
    return document


schema = schemathesis.openapi.from_dict(_with_seeded_examples())


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = find_free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    app = make_app(seeded_store(), Recorder(), token=TOKEN, health=_health)
    runner = web.AppRunner(app, access_log=None)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, name="api-under-fuzz", daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case, base_url: str) -> None:
    headers: dict[str, str] | None = {"Authorization": f"Bearer {TOKEN}"}
    header = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    if header is not None and header.mode.is_negative:
        # the case is about its headers (e.g. the token left out): send them as generated,
        # not with the token put back, which would make the invalid request a valid one
        headers = None
    case.call_and_validate(base_url=base_url, headers=headers)
