"""Error rendering end to end: errors, JSON/HTML/negotiated mixins, handler registry, logs."""

from __future__ import annotations

import asyncio
import html.parser
import json
import logging
from typing import Any, Optional

import jinja2
import pytest
import tornado.web
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError

from tests.support import Probe, access_statuses, settle
from tornado_jsonservlet import (
    BadRequest,
    CancelOnDisconnectMixin,
    Conflict,
    CorsMixin,
    Forbidden,
    HtmlErrorMixin,
    JsonErrorMixin,
    MethodNotAllowed,
    NegotiatedErrorMixin,
    NotFound,
    PayloadTooLarge,
    RedirectError,
    ServletError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    errcode_for_status,
    uncancellable,
)
from tornado_jsonservlet.errors.rendering import preferred_media_type
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

XSS = "<script>alert('x')</script>"
#: Breaks out of an unquoted attribute unless spaces, = and ` are encoded too.
ATTRIBUTE_XSS = "x onmouseover=alert(1) autofocus\tonfocus=`a`\nstyle=x/><b>bold</b>&amp;'\""
#: Where the error mixins log: where Tornado itself logs HTTP errors and uncaught exceptions.
ERROR_LOGGERS = ("tornado.general", "tornado.application")

# What each raisable error is expected to produce: (factory, status, errcode).
ERROR_CASES: dict[str, tuple[Any, int, str]] = {
    "bad": (lambda: BadRequest(), 400, "BAD_REQUEST"),
    "unauth": (lambda: Unauthorized(), 401, "UNAUTHORIZED"),
    "forbidden": (lambda: Forbidden(), 403, "FORBIDDEN"),
    "notfound": (lambda: NotFound("No such user"), 404, "NOT_FOUND"),
    "method": (lambda: MethodNotAllowed(["get", "post", "GET"]), 405, "UNRECOGNIZED"),
    "conflict": (lambda: Conflict(), 409, "CONFLICT"),
    "large": (lambda: PayloadTooLarge(), 413, "TOO_LARGE"),
    "media": (lambda: UnsupportedMediaType(), 415, "UNSUPPORTED_MEDIA_TYPE"),
    "slow": (lambda: TooManyRequests(retry_after=1.5), 429, "LIMIT_EXCEEDED"),
    "custom": (lambda: ServletError(422, "Bad shape", "BAD_JSON", field="name"), 422, "BAD_JSON"),
    "gone": (lambda: ServletError(410, "Gone for good"), 410, "GONE"),
    "unavailable": (
        lambda: ServletError(503, "Try later", headers={"Retry-After": "3"}),
        503,
        "UNKNOWN",
    ),
    "http": (lambda: tornado.web.HTTPError(404, "secret %s", "internal-detail"), 404, "NOT_FOUND"),
    "http-reason": (lambda: tornado.web.HTTPError(400, reason="Missing name"), 400, "BAD_REQUEST"),
    "xss": (lambda: BadRequest(XSS), 400, "BAD_REQUEST"),
    "attr": (lambda: BadRequest(ATTRIBUTE_XSS), 400, "BAD_REQUEST"),
}


class DomainError(Exception):
    pass


class MissingThing(DomainError, KeyError):
    pass


class _Raiser(tornado.web.RequestHandler):
    def get(self, case: str) -> None:
        if case == "bug":
            raise RuntimeError("secret internal detail")
        if case == "redirect":
            raise RedirectError("/new", permanent=self.get_argument("p", "") == "1")
        if case == "redirect-keep":
            raise RedirectError("/new", keep_method=True)
        if case == "nocontent":
            raise ServletError(204, "nothing")
        if case == "keyerror":
            raise KeyError("k")
        if case == "indexerror":
            raise IndexError("i")
        if case == "domain":
            raise MissingThing("thing")
        if case == "selfwrite":
            raise DomainError("self-written")
        if case == "brokenhandler":
            raise ArithmeticError("x")
        if case == "after-headers":
            raise AssertionError("unreachable")  # see AfterHeaders
        raise ERROR_CASES[case][0]()

    head = get


def _lookup_to_404(handler: Any, error: BaseException) -> Optional[ServletError]:
    return NotFound("Lookup failed", "LOOKUP")


def _key_to_409(handler: Any, error: BaseException) -> Optional[ServletError]:
    return Conflict("Key clash", "KEY")


def _self_writer(handler: Any, error: BaseException) -> None:
    handler.set_status(418)
    handler.finish({"custom": True})


def _broken(handler: Any, error: BaseException) -> None:
    raise ValueError("handler bug")


def _catch_all(handler: Any, error: BaseException) -> ServletError:
    return ServletError(500, "caught by Exception handler", "CATCH_ALL")


class JsonRaiser(JsonErrorMixin, _Raiser):
    error_handlers = {LookupError: _lookup_to_404, KeyError: _key_to_409, DomainError: _self_writer}


JsonRaiser.add_error_handler(ArithmeticError, _broken)


class LaterWins(JsonRaiser):
    error_handlers = {KeyError: _lookup_to_404}


LaterWins.add_error_handler(IndexError, _key_to_409)
LaterWins.add_error_handler(IndexError, _lookup_to_404)


class CatchAll(JsonErrorMixin, _Raiser):
    error_handlers = {Exception: _catch_all}


class HtmlRaiser(HtmlErrorMixin, _Raiser):
    pass


class FormatTemplateRaiser(HtmlErrorMixin, _Raiser):
    error_template = "<p>{code}|{msg}|{errcode}</p>"


class JinjaTemplateRaiser(HtmlErrorMixin, _Raiser):
    # Compiled WITHOUT autoescape: values must still arrive escaped.
    error_template = jinja2.Template("<b>{{ code }} {{ msg }}</b>")


# Every context the README allows: text, double-, single- and unquoted attributes.
CONTEXTS = "<p class={msg} title='{msg}' data-x=\"{msg}\">{msg}</p>"


class AttributeFormatRaiser(HtmlErrorMixin, _Raiser):
    error_template = CONTEXTS


class AttributeJinjaRaiser(HtmlErrorMixin, _Raiser):
    # Without autoescape, and with the value in an unquoted attribute.
    error_template = jinja2.Template(CONTEXTS.replace("{msg}", "{{ msg }}"))


class NamedTemplateRaiser(HtmlErrorMixin, _Raiser):
    error_template = "custom_error.html"


class NegotiatedRaiser(NegotiatedErrorMixin, _Raiser):
    pass


class CorsRaiser(CorsMixin, JsonErrorMixin, _Raiser):
    cors_allow_origins = {"https://app.example"}


class CorsOk(CorsMixin, JsonErrorMixin, tornado.web.RequestHandler):
    cors_allow_origins = {"https://app.example"}

    def get(self) -> None:
        self.write({"ok": True})


class AfterHeaders(JsonErrorMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write("partial ")
        await self.flush()
        raise RuntimeError("boom after headers")


class DisconnectedRaiser(CancelOnDisconnectMixin, JsonErrorMixin, tornado.web.RequestHandler):
    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    @uncancellable
    async def get(self, kind: str) -> None:
        self.probe.suspended.set()
        await self.wait_for_disconnect()
        if kind == "bug":
            raise RuntimeError("bug after disconnect")
        raise NotFound("nobody is listening")

    def on_finish(self) -> None:
        self.probe.finished.set()


@pytest.fixture
def template_dir(tmp_path: Any) -> str:
    (tmp_path / "custom_error.html").write_text("<i>custom {{ code }} {{ msg }}</i>")
    return str(tmp_path)


@pytest.fixture
def app(probe: Probe, template_dir: str, request: pytest.FixtureRequest) -> tornado.web.Application:
    settings = getattr(request, "param", {})
    return tornado.web.Application(
        [
            (r"/json/(.*)", JsonRaiser),
            (r"/later/(.*)", LaterWins),
            (r"/catchall/(.*)", CatchAll),
            (r"/html/(.*)", HtmlRaiser),
            (r"/fmt/(.*)", FormatTemplateRaiser),
            (r"/jinja/(.*)", JinjaTemplateRaiser),
            (r"/named/(.*)", NamedTemplateRaiser),
            (r"/attr-fmt/(.*)", AttributeFormatRaiser),
            (r"/attr-jinja/(.*)", AttributeJinjaRaiser),
            (r"/neg/(.*)", NegotiatedRaiser),
            (r"/cors/(.*)", CorsRaiser),
            (r"/cors-ok", CorsOk),
            (r"/after-headers", AfterHeaders),
            (r"/gone/(.*)", DisconnectedRaiser, {"probe": probe}),
        ],
        template_path=template_dir,
        **settings,
    )


async def fetch(http_client: Any, url: str, **kwargs: Any) -> Any:
    return await http_client.fetch(url, raise_error=False, **kwargs)


def our_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name in ERROR_LOGGERS]


# -- errors.py ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "errcode"),
    [
        (400, "BAD_REQUEST"),
        (401, "UNAUTHORIZED"),
        (403, "FORBIDDEN"),
        (404, "NOT_FOUND"),
        (405, "UNRECOGNIZED"),
        (409, "CONFLICT"),
        (413, "TOO_LARGE"),
        (415, "UNSUPPORTED_MEDIA_TYPE"),
        (429, "LIMIT_EXCEEDED"),
        (410, "GONE"),
        (499, "UNKNOWN"),
        (500, "UNKNOWN"),
        (503, "UNKNOWN"),
    ],
)
def test_errcode_defaults_from_status(status, errcode):
    assert errcode_for_status(status) == errcode
    assert ServletError(status, "m").errcode == errcode


def test_extra_fields_cannot_shadow_the_error_shape():
    with pytest.raises(ValueError, match="error"):
        ServletError(400, "m", error="shadowed")


def test_error_is_an_http_error_with_readable_text():
    error = NotFound("No such user")
    assert isinstance(error, tornado.web.HTTPError)
    assert error.status_code == 404
    assert str(error) == "404 NOT_FOUND: No such user"


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({}, 302),
        ({"permanent": True}, 301),
        ({"keep_method": True}, 307),
        ({"permanent": True, "keep_method": True}, 308),
    ],
)
def test_redirect_statuses(kwargs, status):
    assert RedirectError("/x", **kwargs).code == status


def test_redirect_rejects_header_injection():
    with pytest.raises(ValueError, match="CR, LF"):
        RedirectError("/x\r\nSet-Cookie: a=b")


def test_too_many_requests_rejects_negative_retry():
    with pytest.raises(ValueError, match="non-negative"):
        TooManyRequests(retry_after=-1)


# -- JSON rendering -------------------------------------------------------------------


@pytest.mark.allow_error_log(r"^5\d\d GET /json/")  # Tornado's access log; ours is checked below
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
async def test_json_error_status_errcode_and_headers(http_client, base_url, case, caplog):
    _, status, errcode = ERROR_CASES[case]
    response = await fetch(http_client, f"{base_url}/json/{case}")
    assert response.code == status
    body = json.loads(response.body)
    assert body["errcode"] == errcode
    assert isinstance(body["error"], str)
    assert body["error"]
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert response.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "internal-detail" not in response.body.decode()
    if status >= 500:
        assert not [r for r in our_records(caplog) if r.levelno >= logging.ERROR]


async def test_json_error_extra_fields_and_headers(http_client, base_url):
    slow = await fetch(http_client, f"{base_url}/json/slow")
    assert slow.headers["Retry-After"] == "2"
    assert json.loads(slow.body) == {
        "errcode": "LIMIT_EXCEEDED",
        "error": "Too many requests",
        "retry_after_ms": 1500,
    }
    custom = await fetch(http_client, f"{base_url}/json/custom")
    assert json.loads(custom.body) == {"errcode": "BAD_JSON", "error": "Bad shape", "field": "name"}
    method = await fetch(http_client, f"{base_url}/json/method")
    assert method.headers["Allow"] == "GET, POST"


async def test_http_error_shows_reason_never_log_message(http_client, base_url, caplog):
    response = await fetch(http_client, f"{base_url}/json/http")
    assert json.loads(response.body) == {"errcode": "NOT_FOUND", "error": "Not Found"}
    reason = await fetch(http_client, f"{base_url}/json/http-reason")
    assert json.loads(reason.body)["error"] == "Missing name"
    # The internal detail is for the log line only.
    assert any("secret internal-detail" in r.getMessage() for r in our_records(caplog))


@pytest.mark.allow_error_log(r"Uncaught exception GET /json/bug", r"^500 GET /json/bug")
async def test_unexpected_exception_is_a_bare_500_logged_once(http_client, base_url, caplog):
    response = await fetch(http_client, f"{base_url}/json/bug")
    assert response.code == 500
    assert json.loads(response.body) == {"errcode": "UNKNOWN", "error": "Internal server error"}
    assert b"secret" not in response.body
    assert b"Traceback" not in response.body
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name != "tornado.access"
    ]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "secret internal detail" in str(errors[0].exc_info[1])


@pytest.mark.allow_error_log(r"Uncaught exception GET /json/bug", r"^500 GET /json/bug")
@pytest.mark.parametrize("app", [{"serve_traceback": True}, {"debug": True}], indirect=True)
async def test_traceback_member_only_in_development(app, http_client, base_url):
    response = await fetch(http_client, f"{base_url}/json/bug")
    body = json.loads(response.body)
    assert body["errcode"] == "UNKNOWN"
    assert any("RuntimeError: secret internal detail" in line for line in body["traceback"])


async def test_redirects_have_location_and_no_body(http_client, base_url):
    for path, status in [("redirect", 302), ("redirect?p=1", 301), ("redirect-keep", 307)]:
        response = await fetch(http_client, f"{base_url}/json/{path}", follow_redirects=False)
        assert response.code == status
        assert response.headers["Location"] == "/new"
        assert response.body == b""


async def test_head_and_204_have_no_body(http_client, base_url):
    head = await fetch(http_client, f"{base_url}/json/notfound", method="HEAD")
    assert head.code == 404
    assert head.body == b""
    nocontent = await fetch(http_client, f"{base_url}/json/nocontent")
    assert nocontent.code == 204
    assert nocontent.body == b""


# -- error-handler registry ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "errcode"),
    [
        ("/json/keyerror", 409, "KEY"),  # KeyError handler beats LookupError handler
        ("/json/indexerror", 404, "LOOKUP"),  # falls back along the MRO to LookupError
        ("/later/keyerror", 404, "LOOKUP"),  # subclass table overrides parent's
        ("/later/indexerror", 404, "LOOKUP"),  # later add_error_handler wins
        ("/catchall/notfound", 404, "NOT_FOUND"),  # a handler for Exception never eats HTTPErrors
    ],
)
async def test_most_specific_handler_wins(http_client, base_url, path, status, errcode, caplog):
    response = await fetch(http_client, base_url + path)
    assert response.code == status
    assert json.loads(response.body)["errcode"] == errcode


async def test_handler_that_writes_the_response_itself(http_client, base_url):
    # MissingThing is both a DomainError and a KeyError; DomainError comes first in its MRO.
    response = await fetch(http_client, f"{base_url}/json/domain")
    assert response.code == 418
    assert json.loads(response.body) == {"custom": True}


@pytest.mark.allow_error_log(r"Error handler .* failed", r"^500 GET /json/brokenhandler")
async def test_broken_handler_gives_a_plain_500(http_client, base_url, caplog):
    response = await fetch(http_client, f"{base_url}/json/brokenhandler")
    assert response.code == 500
    assert json.loads(response.body)["errcode"] == "UNKNOWN"
    errors = [r for r in our_records(caplog) if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "handler bug" in str(errors[0].exc_info[1])


def test_add_error_handler_rejects_non_exceptions():
    with pytest.raises(TypeError):
        JsonRaiser.add_error_handler(int, _broken)  # type: ignore[arg-type]


# -- logging policy -----------------------------------------------------------------


async def test_4xx_is_one_info_line(http_client, base_url, caplog):
    await fetch(http_client, f"{base_url}/json/notfound")
    records = our_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "404 NOT_FOUND: No such user" in records[0].getMessage()


@pytest.mark.allow_error_log(r"^503 GET /json/unavailable")
async def test_deliberate_5xx_is_one_warning(http_client, base_url, caplog):
    response = await fetch(http_client, f"{base_url}/json/unavailable")
    assert response.headers["Retry-After"] == "3"
    records = our_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING]


@pytest.mark.allow_error_log(r"Uncaught exception GET /after-headers", r"^500 GET /after-headers")
async def test_exception_after_headers_aborts_the_connection(http_client, base_url, caplog):
    with pytest.raises((HTTPClientError, StreamClosedError)):
        await http_client.fetch(f"{base_url}/after-headers")
    await settle()
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name != "tornado.access"
    ]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert access_statuses(caplog) == [500]


@pytest.mark.allow_error_log(r"Uncaught exception GET /after-headers", r"^500 GET /after-headers")
async def test_exception_after_headers_never_looks_like_success(http_server, http_port, caplog):
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("GET", "/after-headers")
    raw = await conn.read_until_close()
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n"), "the chunked body was terminated as if complete"


@pytest.mark.parametrize("kind", ["notfound", "bug"])
async def test_errors_after_disconnect_are_not_rendered_or_logged_as_errors(
    http_server, http_port, probe, caplog, kind
):
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("GET", f"/gone/{kind}")
    await probe.wait_suspended()
    conn.close("rst")
    await probe.wait_finished()
    assert access_statuses(caplog) == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- HTML ---------------------------------------------------------------------------------


async def test_html_error_page_escapes_and_forbids_framing(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/html/xss")
    text = response.body.decode()
    assert response.code == 400
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text


@pytest.mark.parametrize("prefix", ["fmt", "jinja", "named"])
async def test_custom_templates_still_escape(http_client, base_url, prefix):
    response = await fetch(http_client, f"{base_url}/{prefix}/xss")
    text = response.body.decode()
    assert response.code == 400
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    expected_wrapper = {"fmt": "<p>400|", "jinja": "<b>400 ", "named": "<i>custom 400 "}[prefix]
    assert expected_wrapper in text


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, Optional[str]]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.mark.parametrize("prefix", ["attr-fmt", "attr-jinja"])
async def test_values_stay_values_in_every_allowed_context(http_client, base_url, prefix):
    # The value, placed in text and in double-quoted, single-quoted and unquoted
    # attributes, comes back from an HTML parser as exactly that value: no
    # attribute added, no element opened.
    response = await fetch(http_client, f"{base_url}/{prefix}/attr")
    assert response.code == 400
    parser = _Tags()
    parser.feed(response.body.decode())
    parser.close()
    assert parser.tags == [
        ("p", [("class", ATTRIBUTE_XSS), ("title", ATTRIBUTE_XSS), ("data-x", ATTRIBUTE_XSS)])
    ]
    assert "".join(parser.text) == ATTRIBUTE_XSS


@pytest.mark.allow_error_log(r"Uncaught exception GET /html/bug", r"^500 GET /html/bug")
async def test_html_500_leaks_nothing(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/html/bug")
    assert response.code == 500
    assert b"secret" not in response.body
    assert b"Traceback" not in response.body
    assert b"Internal server error" in response.body


def test_broken_format_template_fails_at_class_creation():
    with pytest.raises(ValueError, match="error_template"):

        class Broken(HtmlErrorMixin, tornado.web.RequestHandler):
            error_template = "<p>{nonsense}</p>"


# -- negotiation ------------------------------------------------------------------------

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        ("text/html", "text/html"),
        (BROWSER, "text/html"),
        ("text/html;q=0.5, application/json;q=0.9", "application/json"),
        ("application/json;q=0.1, text/html;q=0.2", "text/html"),
        ("text/*", "text/html"),
        ("application/*;q=0.3, text/*;q=0.2", "application/json"),
        ("text/html;q=0, */*", "application/json"),
        ("image/png", "application/json"),
        ("text/html;q=bogus, application/json;q=0.1", "application/json"),
        ("TEXT/HTML", "text/html"),
    ],
)
async def test_accept_matrix(http_client, base_url, accept, expected):
    headers = {} if accept is None else {"Accept": accept}
    response = await fetch(http_client, f"{base_url}/neg/notfound", headers=headers)
    assert response.code == 404
    assert response.headers["Content-Type"].startswith(expected)
    assert "Accept" in response.headers.get_list("Vary")
    assert preferred_media_type(accept, ("application/json", "text/html")) == expected


# -- CORS on errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("https://app.example", True), ("https://evil.example", False), (None, False)],
)
async def test_error_responses_carry_cors_headers(http_client, base_url, origin, allowed):
    headers = {} if origin is None else {"Origin": origin}
    error = await fetch(http_client, f"{base_url}/cors/notfound", headers=headers)
    ok = await fetch(http_client, f"{base_url}/cors-ok", headers=headers)
    assert error.code == 404
    assert ok.code == 200
    for response in (error, ok):
        assert ("Access-Control-Allow-Origin" in response.headers) is allowed
        if allowed:
            assert response.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.allow_error_log(r"Uncaught exception GET /cors/bug", r"^500 GET /cors/bug")
async def test_500_also_carries_cors_headers(http_client, base_url):
    response = await fetch(
        http_client, f"{base_url}/cors/bug", headers={"Origin": "https://app.example"}
    )
    assert response.code == 500
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_loop_is_clean_after_errors(http_client, base_url):
    before = asyncio.all_tasks()
    for case in ("notfound", "bad", "custom"):
        await fetch(http_client, f"{base_url}/json/{case}")
    await settle()
    assert asyncio.all_tasks() <= before
