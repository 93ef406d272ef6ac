"""The adapter's per-request shortcuts answer what Tornado's public API answers.

``has_no_body`` reads the header names as Tornado stores them, and a request
routed without a body gets one shared, already-received body instead of a
future of its own. Both are checked here against the public API; the servlet
suites check them end to end.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import tornado.httpserver
import tornado.httputil
import tornado.web
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.support import wait_until
from tornado_jsonservlet import JsonServlet, ServletRegistry
from tornado_jsonservlet import tornado_adapter as tornado_internals


def _framing_by_public_api(headers: tornado.httputil.HTTPHeaders) -> bool:
    return "Transfer-Encoding" not in headers and headers.get("Content-Length") in (None, "0")


def _parsed(lines: list[str]) -> tornado.httputil.HTTPHeaders:
    return tornado.httputil.HTTPHeaders.parse("".join(f"{line}\r\n" for line in lines))


@pytest.mark.parametrize(
    "lines",
    [
        [],
        ["Host: x"],
        ["content-length: 0"],
        ["CONTENT-LENGTH: 0"],
        ["Content-Length: 00"],
        ["Content-Length: 5"],
        ["Content-Length: 0", "Content-Length: 0"],  # combined: "0,0" is a body
        ["transfer-encoding: chunked"],
        ["Transfer-Encoding: identity", "Content-Length: 0"],
        ["Content-Length:  0 "],
        ["Content-Length: " + "0" * 60_000],
        ["Content-Length: +0"],
        ["Content-Length: \xb2"],  # a Latin-1 superscript two, as Tornado decodes bytes
        ["X-Transfer-Encoding: chunked"],
    ],
)
def test_has_no_body_answers_as_the_public_api(lines: list[str]) -> None:
    headers = _parsed(lines)
    assert tornado_internals.has_no_body(headers) is _framing_by_public_api(headers)


_NAMES = st.sampled_from(
    ["Content-Length", "content-length", "Transfer-Encoding", "TRANSFER-ENCODING", "Host", "X-A"]
)
_VALUES = st.one_of(
    st.sampled_from(["0", "00", "1", "chunked", "", "0, 0"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30),
)


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=5))
def test_has_no_body_fuzzed(fields: list[tuple[str, str]]) -> None:
    raw = "".join(f"{name}: {value}\r\n" for name, value in fields)
    try:
        headers = tornado.httputil.HTTPHeaders.parse(raw)
    except tornado.httputil.HTTPInputError:
        assume(False)  # Tornado refuses these headers before any routing
    assert tornado_internals.has_no_body(headers) is _framing_by_public_api(headers)


def test_the_shared_received_body_is_a_done_awaitable() -> None:
    received = tornado_internals._RECEIVED_BODY

    async def awaited() -> Any:
        return await received  # type: ignore[misc]

    assert received.done()
    assert not received.cancelled()
    assert received.result() is None
    assert received.exception() is None
    assert asyncio.run(awaited()) is None
    assert asyncio.run(awaited()) is None  # any number of times, on any loop


class Leaves(JsonServlet):
    PATTERNS = ("/leaves",)

    async def on_GET(self) -> Any:
        seen.append(self.request._body_future)  # type: ignore[attr-defined]
        await asyncio.sleep(30)  # cancelled when the client leaves
        return {}

    def on_connection_close(self) -> None:
        closed.append(self.request._body_future.done())  # type: ignore[attr-defined]
        super().on_connection_close()


seen: list[Any] = []
closed: list[bool] = []


@pytest.mark.gen_test(timeout=10)
async def test_a_bodiless_get_whose_client_leaves_ends_quietly(caplog: Any) -> None:
    registry = ServletRegistry()
    registry.register(Leaves)
    server = tornado.httpserver.HTTPServer(
        tornado.web.Application(registry.urlspecs(catch_all=False))
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    server.add_sockets([sock])
    seen.clear()
    closed.clear()
    try:
        for number in (1, 2):
            _, writer = await asyncio.open_connection(*sock.getsockname())
            writer.write(b"GET /leaves HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_until(lambda n=number: len(seen) == n, what="the request to start")
            writer.close()
            await wait_until(lambda n=number: len(closed) == n, what="the close to be handled")
        # Both requests shared the one received body, and Tornado's close handling
        # read it as done (nothing left to fail).
        assert seen == [tornado_internals._RECEIVED_BODY] * 2
        assert closed == [True, True]
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
    finally:
        server.stop()
        await server.close_all_connections()
