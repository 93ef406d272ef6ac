"""The demo's server-sent events: the counter endpoint and the page that shows it."""

from __future__ import annotations

import json

import pytest
import tornado.web

import demo_server
from tests.sse_client import StreamReader
from tests.support import access_statuses, settle

pytestmark = pytest.mark.gen_test

COUNTER = "/api/v1/events/counter"


@pytest.fixture
def app() -> tornado.web.Application:
    return demo_server.make_app()


@pytest.fixture(autouse=True)
def close_readers():
    yield
    while StreamReader.opened:
        StreamReader.opened.pop().close()


async def test_counter_resumes_after_last_event_id(port, caplog):
    reader = await StreamReader.open(
        port, f"{COUNTER}?every=0.01&drop_after=3&retry=250", headers={"Last-Event-ID": "41"}
    )
    assert reader.headers["Content-Type"] == "text/event-stream"
    events = [await reader.next_event() for _ in range(3)]
    await reader.read_until_complete()
    assert [e.id for e in events] == ["42", "43", "44"]
    assert [json.loads(e.data)["n"] for e in events] == [42, 43, 44]
    assert events[0].retry == 250
    assert events[1].retry is None
    await settle()
    assert access_statuses(caplog) == [200]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_counter_client_leaving(port, caplog, how):
    reader = await StreamReader.open(port, f"{COUNTER}?every=0.05")
    await reader.next_event()
    reader.close(how)
    for _ in range(100):
        if access_statuses(caplog):
            break
        await settle()
    assert access_statuses(caplog) == [499]


@pytest.mark.parametrize(
    ("query", "headers", "errcode"),
    [
        ("every=0", {}, "INVALID_PARAM"),
        ("every=nan", {}, "INVALID_PARAM"),
        ("drop_after=1e9", {}, "INVALID_PARAM"),
        ("retry=-5", {}, "INVALID_PARAM"),
        ("", {"Last-Event-ID": "abc"}, "INVALID_HEADER"),
        ("", {"Last-Event-ID": "9" * 40}, "INVALID_HEADER"),
        ("", {"Last-Event-ID": "x" * 60_000}, "INVALID_HEADER"),
    ],
)
async def test_counter_bad_input_is_a_json_400(http_client, base_url, query, headers, errcode):
    response = await http_client.fetch(
        f"{base_url}{COUNTER}?{query}", headers=headers, raise_error=False
    )
    assert response.code == 400
    assert json.loads(response.body)["errcode"] == errcode


async def test_events_page_has_no_inline_script_and_a_strict_policy(http_client, base_url):
    page = await http_client.fetch(f"{base_url}/events?every=%3Cscript%3E")
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == "default-src 'self'"
    body = page.body.decode()
    assert '<script src="/events/page.js" defer></script>' in body
    assert "<script>" not in body  # nothing inline, nothing reflected
    script = await http_client.fetch(f"{base_url}/events/page.js")
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert b"innerHTML" not in script.body  # data only ever goes in as text
    assert b"textContent" in script.body
