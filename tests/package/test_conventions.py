"""Servlets keep Tornado's conventions: XSRF, HEAD, the access log, early configuration errors."""

from __future__ import annotations

import contextlib
import html
import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Optional

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from tests.support import access_lines
from tornado_jsonservlet import (
    HtmlServlet,
    InMemoryMetrics,
    JsonServlet,
    NotFound,
    ServletRegistry,
)
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# Strings, not dicts: 200,000 container objects kept for the whole session would make
# every full garbage collection of every later test scan them, slowing the suite.
BIG_ITEMS = [f"item {i}" for i in range(200_000)]


class TokenServlet(JsonServlet):
    """GET hands out the XSRF token (and sets its cookie), as a page with a form would."""

    PATTERNS = ("/token",)

    def on_GET(self) -> Any:
        return {"token": self.xsrf_token.decode()}


class CommentServlet(JsonServlet):
    PATTERNS = ("/comments",)
    calls: list[str] = []

    def on_POST(self) -> Any:
        self.calls.append(self.get_argument("text", "") or str(self.request.body[:20]))
        return 201, {"saved": True}


class WebhookServlet(JsonServlet):
    """Exempt from XSRF the way Tornado documents: an override that does not check."""

    PATTERNS = ("/webhook",)

    def check_xsrf_cookie(self) -> None:
        pass

    def on_POST(self) -> Any:
        return {"received": True}


class PlainFormHandler(tornado.web.RequestHandler):
    """Plain Tornado, for reference: the form field works there."""

    def post(self) -> None:
        self.write({"saved": True})


class DocumentServlet(JsonServlet):
    PATTERNS = ("/doc/{kind}",)
    json_etag = True

    def on_GET(self, kind: str) -> Any:
        if kind == "big":
            return {"count": len(BIG_ITEMS), "items": BIG_ITEMS}
        if kind == "medium":  # one piece, above the 1 KB gzip threshold
            return [{"id": i, "name": f"item {i}"} for i in range(300)]
        if kind == "text":  # one piece, no list to estimate its size from
            return {"text": "x" * 5000}
        if kind == "missing":
            raise NotFound("No such document")
        if kind == "created":
            return 201, {"id": 7}
        return {}


class Page(HtmlServlet):
    PATTERNS = ("/page",)

    def on_GET(self) -> str:
        return "<p>" + "hello " * 500 + "</p>"


def make_app(**settings: Any) -> tornado.web.Application:
    registry = ServletRegistry(metrics=settings.pop("metrics", None))
    for servlet in (TokenServlet, CommentServlet, WebhookServlet, DocumentServlet, Page):
        registry.register(servlet)
    return tornado.web.Application(
        [(r"/plain-form", PlainFormHandler), *registry.urlspecs()], **settings
    )


@pytest.fixture
def app() -> tornado.web.Application:
    CommentServlet.calls = []
    return make_app(xsrf_cookies=True)


@contextlib.asynccontextmanager
async def serving(app: tornado.web.Application) -> AsyncIterator[str]:
    """``app`` on a loopback port of its own, for tests that need other settings."""
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    finally:
        server.stop()
        await server.close_all_connections()


async def fetch(http_client: Any, url: str, **kwargs: Any) -> Any:
    return await http_client.fetch(url, raise_error=False, **kwargs)


async def get_token(http_client: Any, base_url: str) -> tuple[str, str]:
    """``(token, cookie header)`` as a browser would hold them after loading a page."""
    response = await fetch(http_client, base_url + "/token")
    token = json.loads(response.body)["token"]
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    return token, cookie


def errcode(response: Any) -> str:
    return str(json.loads(response.body)["errcode"])


# -- XSRF ------------------------------------------------------------------------


async def test_xsrf_form_field_is_accepted(http_client, base_url):
    token, cookie = await get_token(http_client, base_url)
    body = urllib.parse.urlencode({"_xsrf": token, "text": "héllo"})
    headers = {**FORM, "Cookie": cookie}
    for path in ("/plain-form", "/comments"):
        response = await fetch(
            http_client, base_url + path, method="POST", body=body, headers=headers
        )
        assert response.code in (200, 201), (path, response.body)
    assert CommentServlet.calls == ["héllo"]


async def test_xsrf_multipart_form_field_is_accepted(http_client, base_url):
    token, cookie = await get_token(http_client, base_url)
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="_xsrf"\r\n\r\n{token}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\nmulti\r\n'
        f"--{boundary}--\r\n"
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Cookie": cookie}
    response = await fetch(
        http_client, base_url + "/comments", method="POST", body=body, headers=headers
    )
    assert response.code == 201
    assert CommentServlet.calls == ["multi"]


async def test_xsrf_header_is_accepted_with_a_json_body(http_client, base_url):
    token, cookie = await get_token(http_client, base_url)
    headers = {"Content-Type": "application/json", "Cookie": cookie, "X-XSRFToken": token}
    response = await fetch(
        http_client, base_url + "/comments", method="POST", body='{"text": 1}', headers=headers
    )
    assert response.code == 201
    assert len(CommentServlet.calls) == 1


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no token", "XSRF_MISSING"),
        ("no cookie", "XSRF_COOKIE_MISSING"),
        ("other token", "XSRF_MISMATCH"),
        ("garbage", "XSRF_MISMATCH"),
        ("60 KB", "XSRF_MISMATCH"),
        ("non-ASCII", "XSRF_MISMATCH"),
        ("CR/LF", "XSRF_MISMATCH"),
    ],
)
async def test_xsrf_failures_are_403_with_an_errcode(http_client, base_url, case, expected):
    token, cookie = await get_token(http_client, base_url)
    other, _ = await get_token(http_client, base_url)
    fields = {
        "no token": {},
        "no cookie": {"_xsrf": token},
        "other token": {"_xsrf": other},
        "garbage": {"_xsrf": "2|zz|!!|x"},
        "60 KB": {"_xsrf": "a" * 60_000},
        "non-ASCII": {"_xsrf": "jeton-é-漢字"},
        "CR/LF": {"_xsrf": token[:10] + "\r\nX-Evil: 1"},
    }[case]
    headers = {**FORM} if case == "no cookie" else {**FORM, "Cookie": cookie}
    response = await fetch(
        http_client,
        base_url + "/comments",
        method="POST",
        body=urllib.parse.urlencode({**fields, "text": "x"}),
        headers=headers,
    )
    assert response.code == 403
    assert response.headers["Content-Type"].startswith("application/json")
    assert errcode(response) == expected
    assert "XSRF" in json.loads(response.body)["error"]
    assert CommentServlet.calls == []  # the method never ran


async def test_xsrf_is_checked_for_every_unsafe_method_only(http_client, base_url):
    response = await fetch(http_client, base_url + "/comments", method="PUT", body="")
    assert response.code == 403
    assert errcode(response) == "XSRF_MISSING"
    response = await fetch(http_client, base_url + "/doc/small")
    assert response.code == 200  # GET is never checked


async def test_an_override_still_exempts_a_servlet(http_client, base_url):
    response = await fetch(http_client, base_url + "/webhook", method="POST", body="{}")
    assert response.code == 200


async def test_without_xsrf_cookies_nothing_is_checked(http_client, base_url):
    CommentServlet.calls = []
    app = make_app()
    async with serving(app) as url:
        response = await fetch(
            http_client,
            url + "/comments",
            method="POST",
            body="text=hi",
            headers=FORM,
        )
        assert response.code == 201


# -- HEAD ------------------------------------------------------------------------


async def test_head_headers_match_get_and_content_length_is_left_out(http_client, base_url):
    for kind in ("big", "medium", "text", "small", "missing", "created"):
        get = await fetch(http_client, f"{base_url}/doc/{kind}")
        head = await fetch(http_client, f"{base_url}/doc/{kind}", method="HEAD")
        assert head.code == get.code, kind
        assert head.body == b"", kind
        assert head.headers["Content-Type"] == get.headers["Content-Type"], kind
        if get.code < 400:
            assert "Content-Length" not in head.headers, kind
            if kind not in ("big", "created"):  # no ETag on a streamed GET or a 201
                assert "Etag" in get.headers, kind  # json_etag = True on this servlet
            assert "Etag" not in head.headers, kind  # it would be the hash of nothing


async def test_head_under_gzip_announces_what_get_sends(http_client, base_url):
    app = make_app(compress_response=True)
    gzip = {"Accept-Encoding": "gzip"}
    async with serving(app) as url:
        for kind in ("big", "medium", "small", "text"):
            get = await fetch(
                http_client, f"{url}/doc/{kind}", headers=gzip, decompress_response=False
            )
            head = await fetch(
                http_client,
                f"{url}/doc/{kind}",
                method="HEAD",
                headers=gzip,
                decompress_response=False,
            )
            get_encoding = get.headers.get("Content-Encoding")
            head_encoding = head.headers.get("Content-Encoding")
            if kind == "text":
                # One piece, size known only once encoded: HEAD leaves the header out
                # rather than guess, as RFC 9110 allows for values found while
                # generating the content.
                assert (get_encoding, head_encoding) == ("gzip", None)
            else:
                assert head_encoding == get_encoding, kind
                assert get_encoding == (None if kind == "small" else "gzip"), kind
            assert head.headers["Content-Type"] == get.headers["Content-Type"]
            assert "Content-Length" not in head.headers


async def test_head_of_a_big_document_costs_what_an_empty_one_costs(http_client, base_url):
    async def best_of_three(kind: str, method: str) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            response = await fetch(http_client, f"{base_url}/doc/{kind}", method=method)
            times.append(time.perf_counter() - started)
            assert response.code == 200
        return min(times)

    get_big = await best_of_three("big", "GET")
    head_big = await best_of_three("big", "HEAD")
    head_empty = await best_of_three("empty", "HEAD")
    print(
        f"\nGET big {get_big * 1000:.1f} ms, HEAD big {head_big * 1000:.1f} ms, "
        f"HEAD empty {head_empty * 1000:.1f} ms"
    )
    assert head_big < get_big / 5
    assert head_big < head_empty + 0.05


async def test_connection_stays_usable_after_a_head(http_server, http_port):
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("HEAD", "/doc/big")
    await conn.send_request("GET", "/doc/small", headers={"Connection": "close"})
    raw = await conn.read_until_close()
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.endswith(b"{}")


async def test_html_servlet_head_is_tornados(http_client, base_url):
    get = await fetch(http_client, base_url + "/page")
    head = await fetch(http_client, base_url + "/page", method="HEAD")
    assert head.body == b""
    for name in ("Content-Type", "Content-Length", "Etag"):
        assert head.headers[name] == get.headers[name]


# -- access log ----------------------------------------------------------------------


TORNADO_LINE = re.compile(r"^\d{3} [A-Z]+ \S+ \(127\.0\.0\.1\) \d+\.\d{2}ms$")


async def test_access_log_lines_have_tornados_format(http_client, base_url, caplog):
    await fetch(http_client, base_url + "/doc/small")
    await fetch(http_client, base_url + "/doc/missing")
    await fetch(http_client, base_url + "/no/such/path")
    lines = access_lines(caplog)
    assert len(lines) == 3
    for line in lines:
        assert TORNADO_LINE.match(line), line
    assert lines[0].startswith("200 GET /doc/small (127.0.0.1) ")
    assert lines[1].startswith("404 GET /doc/missing (127.0.0.1) ")


async def test_servlet_name_reaches_log_function_and_metrics(http_client):
    seen: list[tuple[int, str, Optional[str]]] = []

    def log_function(handler: tornado.web.RequestHandler) -> None:
        seen.append(
            (
                handler.get_status(),
                handler._request_summary(),
                getattr(handler, "servlet_name", None),
            )
        )

    metrics = InMemoryMetrics()
    app = make_app(log_function=log_function, metrics=metrics)
    async with serving(app) as url:
        await fetch(http_client, url + "/doc/small")
        await fetch(http_client, url + "/plain-form", method="POST", body="")
    assert seen[0] == (200, "GET /doc/small (127.0.0.1)", "DocumentServlet")
    assert seen[1][2] is None  # a plain handler has no servlet name
    assert metrics.count("DocumentServlet", 200) == 1


# -- configuration errors surface early -------------------------------------------------


class NamedTemplatePage(HtmlServlet):
    PATTERNS = ("/named",)
    error_template = "errors/page.html"

    def on_GET(self) -> str:
        raise NotFound("No page here")


async def test_named_error_template_is_served_when_settings_fit(http_client, tmp_path: Path):
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "page.html").write_text("<h1>{{ code }}: {{ msg }}</h1>")
    settings = {"template_path": str(tmp_path)}
    registry = ServletRegistry()
    registry.register(NamedTemplatePage)
    app = tornado.web.Application(registry.urlspecs(settings=settings), **settings)
    async with serving(app) as url:
        response = await fetch(http_client, url + "/named")
    assert response.code == 404
    # Values are encoded for any context (spaces as &#32;); a browser reads the same.
    assert html.unescape(response.body.decode()) == "<h1>404: No page here</h1>"
