"""Request IDs: validated or generated, returned, in error bodies, in logs, in child tasks."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import pytest
import tornado.web
from hypothesis import given
from hypothesis import strategies as st

from tests.support import access_lines, wait_until
from tornado_jsonservlet import (
    CancelOnDisconnectMixin,
    JsonErrorMixin,
    JsonServlet,
    NotFound,
    RequestIdLogFilter,
    RequestIdMixin,
    ServletRegistry,
    current_request_id,
)
from tornado_jsonservlet.production.request_id import valid_request_id
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

GENERATED = re.compile(r"[0-9a-f]{32}\Z")
app_log = logging.getLogger("request_id_test")


class Handler(RequestIdMixin, CancelOnDisconnectMixin, JsonErrorMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        if self.get_argument("fail", None):
            raise NotFound("No such thing")
        app_log.info("handling")
        child = await self.spawn(self._child())
        self.write({"id": self.request_id, "seen": current_request_id(), "child": child})

    async def _child(self) -> str | None:
        await asyncio.sleep(0)
        return current_request_id()


class Slow(RequestIdMixin, CancelOnDisconnectMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        app_log.info("slow started")
        await asyncio.sleep(10)


class Untrusting(Handler):
    trust_request_id = False


class Plain(JsonErrorMixin, tornado.web.RequestHandler):
    def get(self) -> None:
        raise NotFound("No such thing")


class IdServlet(RequestIdMixin, JsonServlet):
    PATTERNS = ("/thing/{n:int}",)

    def on_GET(self, n: int) -> dict[str, int]:
        return {"n": n}


class OwnDefaultHeaders(RequestIdMixin, tornado.web.RequestHandler):
    """An application's base handler whose set_default_headers skips super()."""

    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")

    def get(self) -> None:
        if self.get_argument("fail", ""):
            raise tornado.web.HTTPError(418)
        self.write({"id": self.request_id})


@pytest.fixture
def app() -> tornado.web.Application:
    registry = ServletRegistry()
    registry.register(IdServlet)
    return tornado.web.Application(
        [
            (r"/", Handler),
            (r"/slow", Slow),
            (r"/untrusting", Untrusting),
            (r"/plain", Plain),
            (r"/own-headers", OwnDefaultHeaders),
            *registry.urlspecs("/api"),
        ]
    )


async def fetch(http_client, base_url, path="/", **headers):
    return await http_client.fetch(f"{base_url}{path}", headers=headers, raise_error=False)


async def test_a_generated_id_is_returned_and_seen_by_the_handler_and_its_children(
    http_client, base_url
):
    response = await fetch(http_client, base_url)
    request_id = response.headers["X-Request-ID"]
    assert GENERATED.match(request_id)
    assert json.loads(response.body) == {"id": request_id, "seen": request_id, "child": request_id}
    other = await fetch(http_client, base_url)
    assert other.headers["X-Request-ID"] != request_id


@pytest.mark.parametrize("incoming", ["abc", "0f" * 16, "req-1.2_3:4", "A" * 128])
async def test_a_valid_incoming_id_is_kept(http_client, base_url, incoming):
    response = await fetch(http_client, base_url, **{"X-Request-ID": incoming})
    assert response.headers["X-Request-ID"] == incoming
    assert json.loads(response.body)["id"] == incoming


@pytest.mark.parametrize(
    "incoming",
    [
        "A" * 129,  # overflow by one
        "x" * 60_000,  # 60 KB
        "ünïcode",  # non-ASCII (arrives as latin-1 text)
        "id with spaces",
        "a,b",  # two X-Request-ID headers are joined with a comma
        "<script>",
        "%0d%0aSet-Cookie:x",
    ],
)
async def test_an_invalid_incoming_id_is_replaced_never_echoed(http_client, base_url, incoming):
    response = await fetch(http_client, base_url, **{"X-Request-ID": incoming})
    request_id = response.headers["X-Request-ID"]
    assert GENERATED.match(request_id)
    assert incoming.encode("utf-8") not in response.body
    assert response.code == 200


@pytest.mark.parametrize(
    "raw_header",
    [
        b"X-Request-ID: abc\rSet-Cookie: x=1",  # bare CR
        b"X-Request-ID: abc\r\n def",  # obsolete line folding
        b"X-Request-ID: \xff\xfe\x00abc",  # invalid UTF-8 and NUL
    ],
)
async def test_control_characters_never_reach_the_response(port, raw_header):
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + raw_header + b"\r\n\r\n"
    )
    response = await conn.read_until_close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status in (200, 400)  # Tornado may refuse the header outright; never a 500
    if status == 200:
        (line,) = [h for h in head.split(b"\r\n") if h.lower().startswith(b"x-request-id:")]
        assert GENERATED.match(line.split(b":", 1)[1].strip().decode())
        assert b"Set-Cookie" not in head
        assert b"abc" not in body


async def test_an_untrusting_handler_ignores_incoming_ids(http_client, base_url):
    response = await fetch(http_client, base_url, "/untrusting", **{"X-Request-ID": "abc"})
    assert GENERATED.match(response.headers["X-Request-ID"])


async def test_json_errors_carry_the_request_id(http_client, base_url):
    response = await fetch(http_client, base_url, "/?fail=1", **{"X-Request-ID": "trace-42"})
    assert response.code == 404
    assert response.headers["X-Request-ID"] == "trace-42"  # also after send_error's clear()
    assert json.loads(response.body) == {
        "errcode": "NOT_FOUND",
        "error": "No such thing",
        "request_id": "trace-42",
    }


async def test_servlets_and_their_automatic_errors_carry_it_too(http_client, base_url):
    ok = await fetch(http_client, base_url, "/api/thing/7", **{"X-Request-ID": "s-1"})
    assert (ok.code, ok.headers["X-Request-ID"], json.loads(ok.body)) == (200, "s-1", {"n": 7})
    missing = await fetch(http_client, base_url, "/api/thing/x", **{"X-Request-ID": "s-2"})
    assert missing.code == 404  # the catch-all is not an IdServlet: no ID there
    bad_method = await http_client.fetch(
        f"{base_url}/api/thing/7",
        method="DELETE",
        headers={"X-Request-ID": "s-3"},
        raise_error=False,
    )
    assert bad_method.code == 405
    assert json.loads(bad_method.body)["request_id"] == "s-3"


async def test_handlers_without_the_mixin_are_unchanged(http_client, base_url):
    response = await fetch(http_client, base_url, "/plain", **{"X-Request-ID": "abc"})
    assert "X-Request-ID" not in response.headers
    assert json.loads(response.body) == {"errcode": "NOT_FOUND", "error": "No such thing"}


async def test_the_log_filter_puts_the_id_on_application_and_access_lines(
    http_client, base_url, caplog
):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(logging.Formatter("%(request_id)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        await fetch(http_client, base_url, **{"X-Request-ID": "log-7"})
        app_log.info("outside any request")
    finally:
        root.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert "log-7 request_id_test handling" in lines
    assert any(line.startswith("log-7 tornado.access 200 GET / ") for line in lines)
    assert "- request_id_test outside any request" in lines
    # Tornado's own access-log format is unchanged: the ID is only in our formatter.
    assert access_lines(caplog)[0].startswith("200 GET / (127.0.0.1) ")
    assert "log-7" not in access_lines(caplog)[0]


async def test_the_id_is_on_the_access_line_of_a_request_whose_client_left(port, caplog):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
    access = logging.getLogger("tornado.access")
    access.addHandler(handler)
    try:
        conn = await RawHTTPConnection.open(port)
        await conn.send_request("GET", "/slow", headers={"X-Request-ID": "gone-1"})
        await wait_until(
            lambda: "slow started" in [r.getMessage() for r in caplog.records],
            what="the handler started",
        )
        conn.close("rst")
        await wait_until(lambda: "gone-1" in stream.getvalue(), what="the 499 logged with its ID")
    finally:
        access.removeHandler(handler)
    assert stream.getvalue().startswith("gone-1 499 GET /slow ")


@given(st.text(max_size=300))
def test_valid_request_id_accepts_only_the_documented_syntax(value: str) -> None:
    accepted = valid_request_id(value)
    if accepted is None:
        assert not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", value)
    else:
        assert accepted == value
        assert 1 <= len(value) <= 128
        assert value.isascii()
        assert not any(c in value for c in "\r\n\0 ,;\"'<>")


class EchoIdUpstream(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"seen": self.request.headers.get("X-Request-ID")})


class ForwardingHandler(RequestIdMixin, CancelOnDisconnectMixin, tornado.web.RequestHandler):
    def initialize(self, upstream: str) -> None:
        self.upstream = upstream

    async def get(self) -> None:
        from tornado_jsonservlet.outbound import CancellableHTTPClient

        client = CancellableHTTPClient(force_instance=True)
        try:
            own = await client.fetch(self.upstream)
            chosen = await client.fetch(self.upstream, headers={"X-Request-ID": "chosen-by-me"})
        finally:
            client.close()
        self.write(
            {
                "mine": self.request_id,
                "forwarded": json.loads(own.body)["seen"],
                "kept": json.loads(chosen.body)["seen"],
            }
        )


async def test_the_cancellable_client_forwards_the_request_id(http_client):
    import tornado.httpserver
    import tornado.testing

    sock, port = tornado.testing.bind_unused_port()
    upstream = f"http://127.0.0.1:{port}/echo"
    app = tornado.web.Application(
        [("/echo", EchoIdUpstream), ("/forward", ForwardingHandler, {"upstream": upstream})]
    )
    server = tornado.httpserver.HTTPServer(app)
    server.add_socket(sock)
    try:
        response = await http_client.fetch(
            f"http://127.0.0.1:{port}/forward", headers={"X-Request-ID": "abc-123"}
        )
    finally:
        server.stop()
    body = json.loads(response.body)
    assert body == {"mine": "abc-123", "forwarded": "abc-123", "kept": "chosen-by-me"}


@pytest.mark.parametrize("query", ["", "?fail=1"])
async def test_the_header_is_sent_when_set_default_headers_skips_super(
    http_client, base_url, query
):
    response = await http_client.fetch(f"{base_url}/own-headers{query}", raise_error=False)
    assert response.code == (418 if query else 200)
    assert response.headers["X-Frame-Options"] == "DENY"
    request_id = response.headers.get("X-Request-ID")
    assert request_id
    if not query:
        assert json.loads(response.body) == {"id": request_id}
