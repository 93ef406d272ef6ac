"""Configuration mistakes raise when a class is created or the URL table is built,
and the servlet XSRF check never answers hostile tokens with a 5xx (Hypothesis)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import jinja2
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.package.test_conventions import FORM, NamedTemplatePage, make_app
from tornado_jsonservlet import CorsMixin, HtmlErrorMixin, JsonServlet, ServletRegistry


def test_named_error_template_needs_settings_at_urlspecs():
    registry = ServletRegistry()
    registry.register(NamedTemplatePage)
    with pytest.raises(ValueError, match=r"NamedTemplatePage\.error_template.*settings"):
        registry.urlspecs()
    with pytest.raises(ValueError, match="no template_path setting"):
        registry.urlspecs(settings={})


def test_missing_error_template_file_fails_at_urlspecs(tmp_path):
    registry = ServletRegistry()
    registry.register(NamedTemplatePage)
    with pytest.raises(ValueError, match=r"cannot be loaded from template_path.*errors/page\.html"):
        registry.urlspecs(settings={"template_path": str(tmp_path)})


def test_check_settings_for_handlers_routed_by_hand(tmp_path):
    class Handler(HtmlErrorMixin, tornado.web.RequestHandler):
        error_template = "oops.html"

    with pytest.raises(ValueError, match="no template_path"):
        Handler.check_settings({})
    (tmp_path / "oops.html").write_text("{{ code }}")
    Handler.check_settings({"template_path": str(tmp_path)})

    class Inline(HtmlErrorMixin, tornado.web.RequestHandler):
        error_template = jinja2.Template("{{ code }}")

    Inline.check_settings({})  # nothing to load


@pytest.mark.parametrize("template", [42, b"page.html", ""])
def test_bad_error_template_fails_at_class_creation(template):
    with pytest.raises((TypeError, ValueError), match="error_template"):

        class Broken(HtmlErrorMixin, tornado.web.RequestHandler):
            error_template = template


def test_unknown_cors_setting_fails_at_class_creation():
    with pytest.raises(TypeError, match="unknown CORS setting cors_allow_origin "):

        class Typo(CorsMixin, tornado.web.RequestHandler):
            cors_allow_origin = {"https://app.example"}


def test_cors_origins_given_as_a_string_fail_at_class_creation():
    with pytest.raises(ValueError, match="cors_allow_origins must be a collection"):

        class Stringy(CorsMixin, tornado.web.RequestHandler):
            cors_allow_origins = "https://app.example"


def test_cors_wildcard_with_credentials_fails_at_class_creation():
    with pytest.raises(ValueError, match="credentials"):

        class Wild(JsonServlet):
            cors_allow_origins = {"*"}
            cors_allow_credentials = True


# -- fuzzing the XSRF check ---------------------------------------------------------------


@pytest.fixture(scope="module")
def threaded_port() -> Iterator[int]:
    """The XSRF app in a thread with its own loop, for blocking hypothesis examples."""
    started = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            server = tornado.httpserver.HTTPServer(make_app(xsrf_cookies=True))
            server.add_sockets(sockets)
            state["port"] = sockets[0].getsockname()[1]
            state["loop"] = asyncio.get_running_loop()
            state["stop"] = asyncio.Event()
            started.set()
            await state["stop"].wait()
            server.stop()
            await server.close_all_connections()

        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield int(state["port"])
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(10)


def raw_post(port: int, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    head = "POST /comments HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    status = int(raw.split(b" ", 2)[1])
    return status, raw.partition(b"\r\n\r\n")[2]


header_safe = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters=";,"), max_size=200
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    field=st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=300)),
    header=st.one_of(st.none(), header_safe),
    cookie=st.one_of(st.none(), header_safe),
)
def test_fuzzed_xsrf_tokens_are_403_never_5xx(threaded_port, field, header, cookie):
    headers = {**FORM}
    if header is not None:
        headers["X-XSRFToken"] = header
    if cookie is not None:
        headers["Cookie"] = f"_xsrf={cookie}"
    body = b"text=fuzz"
    if field is not None:
        value = field if isinstance(field, bytes) else field.encode("utf-8", "surrogatepass")
        body += b"&_xsrf=" + urllib.parse.quote_from_bytes(value).encode()
    status, payload = raw_post(threaded_port, headers, body)
    assert status in (201, 400, 403), (status, payload)
    if status == 403:
        assert json.loads(payload)["errcode"] in {
            "XSRF_MISSING",
            "XSRF_COOKIE_MISSING",
            "XSRF_MISMATCH",
        }


# -- typed composition, at run time too ------------------------------------------------------


class _Home(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("home")


class _Ping(JsonServlet):
    PATTERNS = ("/ping",)

    def on_GET(self) -> Any:
        return {"pong": True}


def test_urlspecs_concatenate_with_plain_rule_lists_on_either_side():
    registry = ServletRegistry()
    registry.register(_Ping)
    rules = [(r"/", _Home)]
    after = registry.urlspecs("/api") + rules
    before = rules + registry.urlspecs("/api")
    assert after[-1] == (r"/", _Home)
    assert before[0] == (r"/", _Home)
    assert len(after) == len(before) == 3  # the servlet, the catch-all, the home page
    for table in (after, before):
        app = tornado.web.Application(table)
        assert app.reverse_url("_Ping") == "/api/ping"


def test_route_returns_the_function_itself():
    registry = ServletRegistry()

    def health(handler: JsonServlet) -> dict[str, bool]:
        return {"ok": True}

    assert registry.route("/health")(health) is health
