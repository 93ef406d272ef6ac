"""A small JSON response finished in one write: the same bytes, logs and hooks.

``write_json`` finishes a small response without the calls of ``finish()``'s path
when the class overrides none of them and nothing was written yet. Every case here
is answered twice on the same server: by a handler that takes that path, and by a
copy whose pass-through ``flush`` override makes it take ``finish()`` as before.
The raw responses (but the per-second ``Date``) and the access lines (but the
duration) must be identical, and the first must really have skipped ``finish()``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from typing import Any, Callable, Optional

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from tests.jsonio.conftest import through_finish
from tests.support import access_lines
from tornado_jsonservlet import (
    CancelOnDisconnectMixin,
    JsonErrorMixin,
    JsonResponseMixin,
    JsonServlet,
    LeanResponseMixin,
    RequestIdMixin,
    ServletRegistry,
)
from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.jsonio.codec import encode

pytestmark = pytest.mark.gen_test

DOC = {"id": 1, "name": "widget", "tags": ["a", "é"], "price": 9.5}
BIG_DOC = {"items": ["x" * 40] * 64}  # 2.6 KB: gzip compresses it
#: Handler class name -> how many times on_finish ran.
ON_FINISH: dict[str, int] = {}


class Plain(JsonServlet):
    PATTERNS = ("/plain",)

    async def on_GET(self) -> Any:
        return DOC

    def on_finish(self) -> None:
        name = type(self).__name__
        ON_FINISH[name] = ON_FINISH.get(name, 0) + 1


class Created(Plain):
    PATTERNS = ("/created",)

    def on_GET(self) -> Any:
        return 201, [1, 2, 3]


class Teapot(Plain):
    PATTERNS = ("/teapot",)

    def on_GET(self) -> Any:
        return 418, "short and stout"


class Touched(Plain):
    """Sets a header and a cookie before returning: Tornado's path adds the cookie."""

    PATTERNS = ("/touched",)

    def on_GET(self) -> Any:
        self.set_header("X-Extra", "1")
        self.add_header("Vary", "Accept")
        self.set_cookie("session", "abc")
        return DOC


class Written(Plain):
    """Writes part of the body itself, then returns the document."""

    PATTERNS = ("/written",)

    def on_GET(self) -> Any:
        self.write(b"[")
        return DOC


class LengthByHand(Plain):
    PATTERNS = ("/length",)

    def on_GET(self) -> Any:
        self.set_header("Content-Length", str(len(encode(DOC))))
        return DOC


class Big(Plain):
    PATTERNS = ("/big",)

    async def on_GET(self) -> Any:
        return BIG_DOC


class Tagged(Plain):
    PATTERNS = ("/etag",)
    json_etag = True


class Cors(Plain):
    PATTERNS = ("/cors",)
    cors_allow_origins = ("https://app.example",)


class WithRequestId(RequestIdMixin, Plain):
    PATTERNS = ("/request-id",)


class Stack(
    CancelOnDisconnectMixin,
    JsonErrorMixin,
    JsonResponseMixin,
    LeanResponseMixin,
    tornado.web.RequestHandler,
):
    """The hand-built mixin stack of the benchmarks."""

    async def get(self) -> None:
        await self.write_json(DOC)

    def on_finish(self) -> None:
        name = type(self).__name__
        ON_FINISH[name] = ON_FINISH.get(name, 0) + 1


class JsonOnly(JsonResponseMixin, tornado.web.RequestHandler):
    """write_json without the toolkit's core: plain Tornado semantics."""

    async def get(self) -> None:
        await self.write_json(DOC, 202)


SERVLETS = [Plain, Created, Teapot, Touched, Written, LengthByHand, Big, Tagged, Cors]
SERVLETS.append(WithRequestId)
HANDLERS = [Stack, JsonOnly]


@pytest.fixture
def app() -> tornado.web.Application:
    ON_FINISH.clear()
    registry = ServletRegistry()
    rules: list[Any] = []
    for servlet in SERVLETS:
        path = servlet.PATTERNS[0]
        registry.register(servlet, [path])
        registry.register(through_finish(servlet), ["/finishing" + path])
    for handler in HANDLERS:
        path = f"/{handler.__name__.lower()}"
        rules += [(path, handler), ("/finishing" + path, through_finish(handler))]
    return tornado.web.Application(rules + registry.urlspecs(catch_all=False))


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; return the whole response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        if request.startswith(b"HEAD") or b" 304 " in head.split(b"\r\n")[0]:
            body = b""
        elif length is not None:
            body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), 5)
        else:
            body = await asyncio.wait_for(reader.read(), 5)  # until the server closes
        return head + body
    finally:
        writer.close()


def without_date(response: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", response)


def without_duration(lines: list[str]) -> list[str]:
    return [re.sub(r" [\d.]+ms$", "", line) for line in lines]


def finish_calls() -> tuple[Callable[[], int], Callable[[], None]]:
    """Count the calls of Tornado's own ``RequestHandler.finish`` from now on."""
    code = tornado.web.RequestHandler.finish.__code__
    calls = [0]
    previous = sys.getprofile()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is code:
            calls[0] += 1

    sys.setprofile(profile)
    return (lambda: calls[0]), (lambda: sys.setprofile(previous))


def request(method: str, path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


#: (path, extra request headers, method, HTTP version)
CASES: list[tuple[str, tuple[str, ...], str, str]] = [
    ("/plain", (), "GET", "1.1"),
    ("/plain", ("Connection: close",), "GET", "1.1"),
    ("/plain", (), "GET", "1.0"),
    ("/plain", ("Connection: keep-alive",), "GET", "1.0"),
    ("/plain", ('If-None-Match: "x", *',), "GET", "1.1"),
    ("/plain", (), "HEAD", "1.1"),
    ("/created", (), "GET", "1.1"),
    ("/teapot", (), "GET", "1.1"),
    ("/touched", (), "GET", "1.1"),
    ("/written", (), "GET", "1.1"),
    ("/length", (), "GET", "1.1"),
    ("/big", (), "GET", "1.1"),
    ("/etag", (), "GET", "1.1"),
    ("/cors", ("Origin: https://app.example",), "GET", "1.1"),
    ("/cors", ("Origin: https://evil.example",), "GET", "1.1"),
    ("/request-id", ("X-Request-ID: abc-123",), "GET", "1.1"),
    ("/stack", (), "GET", "1.1"),
    ("/jsononly", (), "GET", "1.1"),
]


@pytest.mark.parametrize(("path", "headers", "method", "version"), CASES)
async def test_same_response_and_access_line_as_through_finish(
    http_server: Any,
    http_port: int,
    caplog: pytest.LogCaptureFixture,
    path: str,
    headers: tuple[str, ...],
    method: str,
    version: str,
) -> None:
    caplog.set_level(logging.INFO, logger="tornado.access")
    responses = []
    for prefix in ("", "/finishing"):
        raw = await exchange(http_port, request(method, prefix + path, *headers, version=version))
        responses.append(without_date(raw))
    assert responses[0] == responses[1]
    assert responses[0].startswith(b"HTTP/1.1 ")
    lines = without_duration(access_lines(caplog))
    assert len(lines) == 2
    assert lines[0] == lines[1].replace("/finishing", "", 1)


@pytest.mark.parametrize(
    ("path", "takes_one_write"),
    [
        ("/plain", True),
        ("/created", True),
        ("/teapot", True),
        ("/stack", True),
        ("/jsononly", True),
        ("/big", True),
        ("/cors", True),
        ("/touched", False),  # a cookie: Tornado's flush adds Set-Cookie
        ("/written", False),  # the body was started by hand
        ("/length", False),  # a Content-Length set by hand must be checked by Tornado
        ("/etag", False),  # json_etag: Tornado computes the ETag
        ("/request-id", False),  # RequestIdMixin overrides flush
    ],
)
async def test_one_write_skips_finish_only_when_nothing_could_differ(
    http_server: Any, http_port: int, path: str, takes_one_write: bool
) -> None:
    count, stop = finish_calls()
    try:
        raw = await exchange(http_port, request("GET", path))
    finally:
        stop()
    assert raw.startswith(b"HTTP/1.1 ")
    assert (count() == 0) is takes_one_write, count()


@pytest.mark.parametrize("accept", ["gzip", "identity"])
async def test_with_compress_response_tornado_finishes_it(accept: str) -> None:
    """An output transform (``compress_response``) may rewrite the headers and the
    body: Tornado's ``finish()`` runs, and the response is the same either way."""
    app = tornado.web.Application(
        [("/big", Big), ("/finishing/big", through_finish(Big))], compress_response=True
    )
    server = tornado.httpserver.HTTPServer(app)
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    port = sock.getsockname()[1]
    try:
        count, stop = finish_calls()
        try:
            raw = await exchange(port, request("GET", "/big", f"Accept-Encoding: {accept}"))
        finally:
            stop()
        assert count() == 1
        assert (b"\r\nContent-Encoding: gzip\r\n" in raw) is (accept == "gzip")
        other = await exchange(port, request("GET", "/finishing/big", f"Accept-Encoding: {accept}"))
        assert without_date(raw) == without_date(other)
    finally:
        server.stop()
        await server.close_all_connections()


async def test_on_finish_runs_once_per_request(http_server: Any, http_port: int) -> None:
    for path in ("/plain", "/finishing/plain", "/stack", "/finishing/stack"):
        await exchange(http_port, request("GET", path))
    assert ON_FINISH == {"Plain": 1, "FinishingPlain": 1, "Stack": 1, "FinishingStack": 1}


class OverridesSetHeader(Plain):
    def set_header(self, name: str, value: Any) -> None:
        super().set_header(name, value)


class OverridesComputeEtag(Plain):
    def compute_etag(self) -> Optional[str]:
        return None


@pytest.mark.parametrize("name", tornado_internals.FINISH_PATH_METHODS)
def test_any_override_on_finishs_path_turns_it_off(name: str) -> None:
    def passthrough(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(super(cls, self), name)(*args, **kwargs)

    cls = type(f"Overrides_{name}", (Plain,), {name: passthrough, "PATTERNS": ()})
    assert tornado_internals.finishes_in_one_write(Plain)
    assert not tornado_internals.finishes_in_one_write(cls)


def test_classes_that_finish_in_one_write() -> None:
    assert tornado_internals.finishes_in_one_write(JsonServlet)
    assert tornado_internals.finishes_in_one_write(Stack)
    assert tornado_internals.finishes_in_one_write(JsonOnly)
    assert not tornado_internals.finishes_in_one_write(WithRequestId)
    assert not tornado_internals.finishes_in_one_write(OverridesSetHeader)
    assert not tornado_internals.finishes_in_one_write(OverridesComputeEtag)
