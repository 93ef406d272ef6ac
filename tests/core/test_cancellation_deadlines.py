"""Deadlines: a request that outlives its deadline is cancelled, then answered 504."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Optional

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from hypothesis import given
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient

from tests.support import Probe, ProbeHandler, access_statuses, settle
from tornado_jsonservlet import CancelOnDisconnectMixin, JsonErrorMixin, current_cancel_token
from tornado_jsonservlet.core import context as request_context
from tornado_jsonservlet.core.cancellation import _header_deadline
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

HEADER = "X-Envoy-Expected-Rq-Timeout-Ms"


class SlowHandler(ProbeHandler):
    request_deadline = 0.1

    async def get(self) -> None:
        self.probe.values["remaining"] = self.deadline_remaining()
        self.probe.values["context-remaining"] = request_context.deadline_remaining()

        async def child() -> Optional[float]:
            return request_context.deadline_remaining()

        self.probe.values["child-remaining"] = await self.spawn(child())
        try:
            self.probe.suspended.set()
            await asyncio.sleep(float(self.get_argument("wait", "5")))
            self.probe.hit("completed")
            self.write({"done": True})
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise
        finally:
            self.probe.hit("finally")

    async def post(self) -> None:
        await asyncio.sleep(0.3)
        self.probe.hit("completed")
        self.write({"posted": True})


class NoDeadlineHandler(SlowHandler):
    request_deadline = None  # wins over the application setting


class FromSettingsHandler(ProbeHandler):
    async def get(self) -> None:
        self.probe.values["remaining"] = self.deadline_remaining()
        await asyncio.sleep(float(self.get_argument("wait", "0")))
        self.write("ok")


class JsonErrorsHandler(JsonErrorMixin, SlowHandler):
    pass


class AppRenderedHandler(SlowHandler):
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(f"<p>app page {status_code}</p>")


class ShieldedHandler(ProbeHandler):
    request_deadline = 0.05

    async def get(self) -> None:
        async with self.shielded():
            await asyncio.sleep(0.2)
            self.probe.hit("shield-completed")
        self.probe.hit("after-shield")


class StreamingHandler(ProbeHandler):
    request_deadline = 0.1

    async def get(self) -> None:
        self.write("partial ")
        await self.flush()
        await asyncio.sleep(5)


class ThreadHandler(ProbeHandler):
    request_deadline = 0.1

    async def get(self) -> None:
        def blocking() -> str:
            self.probe.values["thread-remaining"] = request_context.deadline_remaining()
            token = current_cancel_token()
            stop = time.monotonic() + 3
            while not token.cancelled and time.monotonic() < stop:
                time.sleep(0.005)
            self.probe.values["thread-saw-cancel"] = token.cancelled
            self.probe.values["thread-done"].set()
            return "finished"

        self.probe.values["thread-done"] = threading.Event()
        await self.run_in_executor(blocking)
        self.probe.hit("completed")


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    routes: list[Any] = [
        ("/thread", ThreadHandler),
        ("/slow", SlowHandler),
        ("/none", NoDeadlineHandler),
        ("/settings", FromSettingsHandler),
        ("/json", JsonErrorsHandler),
        ("/app-rendered", AppRenderedHandler),
        ("/shielded", ShieldedHandler),
        ("/streaming", StreamingHandler),
    ]
    return tornado.web.Application(
        [(path, handler, {"probe": probe}) for path, handler in routes],
        request_deadline=2.0,
        accept_deadline_header=True,
    )


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_deadline_cancels_the_work_and_answers_504(http_client, base_url, probe, caplog):
    started = time.monotonic()
    response = await http_client.fetch(base_url + "/slow", raise_error=False)
    elapsed = time.monotonic() - started
    assert response.code == 504
    assert json.loads(response.body)["errcode"] == "DEADLINE_EXCEEDED"
    assert response.headers["Content-Type"].startswith("application/json")
    assert elapsed < 1.0
    assert probe.count("cancelled") == 1
    assert probe.count("finally") == 1
    assert probe.count("completed") == 0
    assert access_statuses(caplog) == [504]
    access = [r for r in caplog.records if r.name == "tornado.access"]
    assert access[0].levelno == logging.WARNING
    assert not error_records(caplog)


async def test_deadline_is_visible_to_the_handler_its_children_and_context(
    http_client, base_url, probe
):
    await http_client.fetch(base_url + "/slow?wait=0", raise_error=False)
    for key in ("remaining", "context-remaining", "child-remaining"):
        remaining = probe.values[key]
        assert remaining is not None
        assert 0 < remaining <= 0.1, key


async def test_mutating_request_is_not_cancelled_by_its_deadline(http_client, base_url, probe):
    response = await http_client.fetch(base_url + "/slow", method="POST", body=b"")
    assert response.code == 200
    assert json.loads(response.body) == {"posted": True}
    assert probe.count("completed") == 1


async def test_class_attribute_wins_over_the_setting(http_client, base_url, probe):
    response = await http_client.fetch(base_url + "/none?wait=0.01")
    assert response.code == 200
    assert probe.values["remaining"] is None


async def test_application_setting_applies(http_client, base_url, probe):
    response = await http_client.fetch(base_url + "/settings")
    assert response.code == 200
    assert 1.5 < probe.values["remaining"] <= 2.0


async def test_inbound_header_shortens_the_deadline(http_client, base_url, probe, caplog):
    response = await http_client.fetch(
        base_url + "/settings?wait=5", headers={HEADER: "80"}, raise_error=False
    )
    assert response.code == 504
    assert 0 < probe.values["remaining"] <= 0.08
    assert not error_records(caplog)


async def test_inbound_header_never_lengthens_the_deadline(http_client, base_url, probe):
    await http_client.fetch(base_url + "/settings", headers={HEADER: "900000"})
    assert probe.values["remaining"] <= 2.0


BAD_HEADER_VALUES = {
    "60KB": b"9" * 60_000,
    "arabic-digits": "\u0661\u0660\u0660".encode(),
    "superscript": "\u00b2".encode("latin-1"),
    "overflow": b"9" * 30,
    "negative": b"-50",
    "exponent": b"1e3",
    "zero": b"0",
    "inner-space": b"5 0",
    "fraction": b"50.5",
    "hex": b"0x50",
}


@pytest.mark.parametrize("value", BAD_HEADER_VALUES.values(), ids=BAD_HEADER_VALUES.keys())
async def test_bad_inbound_header_values_are_ignored(port, probe, value, caplog):
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(
        b"GET /settings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + HEADER.encode()
        + b": "
        + value
        + b"\r\n\r\n"
    )
    raw = await conn.read_until_close(timeout=3)
    assert raw.startswith(b"HTTP/1.1 200")
    assert 1.5 < probe.values["remaining"] <= 2.0
    assert not error_records(caplog)


@pytest.mark.parametrize("value", ["50\r", "50\r\nX-Injected: 1", "\r\n50", "5\n0"])
def test_header_parser_refuses_cr_and_lf(value: str) -> None:
    assert _header_deadline(value) is None


async def test_raw_cr_in_the_header_never_gives_a_5xx_or_an_error(port, probe, caplog):
    # Tornado 6.6 refuses the request line; older versions strip the CR. Either
    # way the toolkit sees at most the digits, and nothing fails.
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(
        b"GET /settings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + HEADER.encode()
        + b": 5000\r\r\n\r\n"
    )
    raw = await conn.read_until_close(timeout=3)
    status_line = raw.split(b"\r\n", 1)[0]
    assert not status_line.startswith(b"HTTP/1.1 5")
    assert not error_records(caplog)


@given(st.text(max_size=40))
def test_header_parser_never_raises_and_returns_a_sane_deadline(value: str) -> None:
    seconds = _header_deadline(value)
    assert seconds is None or 0 < seconds <= 10_000_000


async def test_application_error_rendering_is_used(http_client, base_url):
    response = await http_client.fetch(base_url + "/app-rendered", raise_error=False)
    assert response.code == 504
    assert response.body == b"<p>app page 504</p>"


async def test_error_mixin_renders_the_deadline(http_client, base_url, caplog):
    response = await http_client.fetch(base_url + "/json", raise_error=False)
    assert response.code == 504
    body = json.loads(response.body)
    assert body["errcode"] == "DEADLINE_EXCEEDED"
    assert not error_records(caplog)


async def test_shielded_block_completes_before_the_deadline_lands(http_client, base_url, probe):
    response = await http_client.fetch(base_url + "/shielded", raise_error=False)
    assert response.code == 504
    assert probe.count("shield-completed") == 1
    assert probe.count("after-shield") == 0


async def test_deadline_after_the_headers_went_out_cuts_the_response(port, probe, caplog):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", "/streaming")
    raw = await conn.read_until_close(timeout=3)
    assert raw.startswith(b"HTTP/1.1 200")
    assert not raw.endswith(b"0\r\n\r\n"), "a cut response must not look complete"
    await probe.wait_finished()
    await settle()
    # The status the client got, at WARNING: the toolkit cut the response.
    assert access_statuses(caplog) == [200]
    assert [r.levelno for r in caplog.records if r.name == "tornado.access"] == [logging.WARNING]
    assert not error_records(caplog)


def test_bad_class_deadline_is_refused_at_class_creation() -> None:
    for bad in (0, -1, float("nan"), float("inf"), "5", True):
        with pytest.raises(ValueError, match="request_deadline"):
            type("Bad", (CancelOnDisconnectMixin,), {"request_deadline": bad})


@pytest.mark.allow_error_log(r"Ignoring the request_deadline setting")
async def test_bad_application_setting_is_reported_once_and_ignored(caplog):
    class Handler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
        def get(self) -> None:
            self.write(str(self.deadline_remaining()))

    app = tornado.web.Application([("/", Handler)], request_deadline="soon")
    server = tornado.httpserver.HTTPServer(app)
    sock, port = tornado.testing.bind_unused_port()
    server.add_socket(sock)
    try:
        client = AsyncHTTPClient()
        for _ in range(3):
            response = await client.fetch(f"http://127.0.0.1:{port}/")
            assert response.body == b"None"
    finally:
        server.stop()
    errors = [r for r in error_records(caplog) if "request_deadline" in r.getMessage()]
    assert len(errors) == 1


async def test_thread_work_sees_the_deadline_and_is_told_when_it_passes(
    http_client, base_url, probe, caplog
):
    response = await http_client.fetch(base_url + "/thread", raise_error=False)
    assert response.code == 504
    assert probe.count("completed") == 0
    await asyncio.get_running_loop().run_in_executor(None, probe.values["thread-done"].wait, 3)
    assert probe.values["thread-saw-cancel"] is True
    assert 0 < probe.values["thread-remaining"] <= 0.1
    assert not error_records(caplog)
