"""Servlets and the registry, end to end against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web

from tests.support import Probe, access_statuses, settle
from tornado_jsonservlet import (
    HtmlServlet,
    InMemoryMetrics,
    JsonServlet,
    NotFound,
    ServletMetrics,
    ServletRegistry,
    cancellable,
    uncancellable,
)
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test


class UserServlet(JsonServlet):
    PATTERNS = ("/users/{user_id}",)

    def on_GET(self, user_id: str) -> Any:
        if user_id == "missing":
            raise NotFound("No such user")
        return {"user_id": user_id}

    async def on_POST(self, user_id: str) -> Any:
        await asyncio.sleep(0)
        return 201, {"user_id": user_id, "body": self.json_body}


class TypedServlet(JsonServlet):
    PATTERNS = (
        "/items/{item_id:int}",
        "/prices/{amount:float}",
        "/things/{thing:uuid}",
        "/files/{rest:path}",
    )

    def on_GET(self, **params: Any) -> Any:
        return {name: [type(value).__name__, str(value)] for name, value in params.items()}


class RawServlet(JsonServlet):
    PATTERNS = (r"^/raw/(?P<year>[0-9]{4})/(?P<slug>[a-z-]+)$",)

    def on_GET(self, year: str, slug: str) -> Any:
        return {"year": year, "slug": slug}


class SelfWriting(JsonServlet):
    PATTERNS = ("/self",)

    def on_GET(self) -> None:
        self.set_header("X-Custom", "1")
        self.write("raw text")


class SlowServlet(JsonServlet):
    PATTERNS = ("/slow",)

    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def on_GET(self) -> Any:
        try:
            self.probe.suspended.set()
            await asyncio.sleep(5)
            self.probe.hit("after-await")
            return {"late": True}
        finally:
            self.probe.hit("finally")

    def on_finish(self) -> None:
        self.probe.finished.set()


class Page(HtmlServlet):
    PATTERNS = ("/page/{name}",)

    def on_GET(self, name: str) -> str:
        return f"<p>{tornado.escape.xhtml_escape(name)}</p>"


class CorsServlet(JsonServlet):
    PATTERNS = ("/cors",)
    cors_allow_origins = {"https://app.example"}

    def on_GET(self) -> Any:
        return {"ok": True}

    def on_PUT(self) -> Any:
        return {"put": True}


def plain_route(handler: JsonServlet, n: int) -> Any:
    return {"n": n, "kind": "plain"}


async def async_route(handler: JsonServlet, n: int) -> Any:
    await asyncio.sleep(0)
    return {"n": n, "kind": "async"}


@cancellable
async def marked_before_route(handler: JsonServlet) -> Any:
    return {"marked": "before"}


def scaled(handler: JsonServlet, n: int, *, factor: int) -> Any:
    return {"n": n * factor}


async def scaled_async(handler: JsonServlet, n: int, *, factor: int) -> Any:
    await asyncio.sleep(0)
    return {"n": n * factor}


class Service:
    """Bound methods as routes: not plain functions, so they are wrapped."""

    def __init__(self, label: str) -> None:
        self.label = label

    @uncancellable
    async def lookup(self, handler: JsonServlet, n: int) -> Any:
        await asyncio.sleep(0)
        return {"service": self.label, "n": n}

    def count(self, handler: JsonServlet, n: int) -> Any:
        return {"service": self.label, "count": n}


SERVICE = Service("svc")
SCALED_BY_10 = cancellable(functools.partial(scaled_async, factor=10))
SCALED_BY_3 = functools.partial(scaled, factor=3)


def waiting_route(probe: Probe, delay: float) -> Any:
    """A route that reports when it is suspended, and what ran after its client left."""

    async def waiting(handler: JsonServlet) -> Any:
        try:
            probe.suspended.set()
            await asyncio.sleep(delay)
            probe.hit("after-await")
            return {"late": True}
        finally:
            probe.hit("finally")
            probe.finished.set()

    return waiting


def make_registry(probe: Probe, metrics: InMemoryMetrics) -> ServletRegistry:
    registry = ServletRegistry(metrics=metrics)
    registry.register(UserServlet)
    registry.register(TypedServlet, name="typed")
    registry.register(RawServlet)
    registry.register(SelfWriting)
    registry.register(SlowServlet, probe=probe)
    registry.register(Page)
    registry.register(CorsServlet)

    @registry.route("/fn/{n:int}")
    def read_fn(handler: JsonServlet, n: int) -> Any:
        return {"n": n, "method": handler.request.method}

    @registry.route("/fn/{n:int}", methods=("DELETE",))
    async def delete_fn(handler: JsonServlet, n: int) -> Any:
        await asyncio.sleep(0)
        return 202, {"deleted": n}

    registry.route("/plain/{n:int}")(plain_route)
    registry.route("/async/{n:int}", methods=("GET", "POST"))(async_route)
    registry.route("/marked/before", methods=("POST",))(marked_before_route)
    # Marks applied after route(), i.e. written above @registry.route: route() returns
    # the function unchanged, so the mark lands on the servlet's own method.
    cancellable(
        registry.route("/marked/post", methods=("POST",), name="marked_post")(
            waiting_route(probe, 2.0)
        )
    )
    uncancellable(registry.route("/marked/get", name="marked_get")(waiting_route(probe, 0.2)))
    registry.route("/bound/{n:int}", name="bound")(SERVICE.lookup)
    registry.route("/bound/{n:int}", methods=("POST",))(SERVICE.count)
    registry.route("/partial/{n:int}", name="partial_async")(SCALED_BY_10)
    registry.route("/partial/{n:int}", methods=("PUT",))(SCALED_BY_3)
    return registry


@pytest.fixture
def metrics() -> InMemoryMetrics:
    return InMemoryMetrics()


@pytest.fixture
def app(probe: Probe, metrics: InMemoryMetrics) -> tornado.web.Application:
    registry = make_registry(probe, metrics)
    return tornado.web.Application(
        [(r"/other", OtherHandler), *registry.urlspecs("/api/v1")],
        template_path=".",
    )


class OtherHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("other")


async def fetch(http_client: Any, url: str, **kwargs: Any) -> Any:
    return await http_client.fetch(url, raise_error=False, **kwargs)


def body(response: Any) -> Any:
    return json.loads(response.body)


# -- parameters and conversion ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/ada", "ada"),
        ("/users/caf%C3%A9", "café"),
        ("/users/%E6%97%A5%E6%9C%AC", "日本"),
        ("/users/a%20b", "a b"),
        ("/users/100%25", "100%"),
    ],
)
async def test_str_parameter_is_percent_decoded(http_client, base_url, path, expected):
    response = await fetch(http_client, base_url + "/api/v1" + path)
    assert response.code == 200
    assert body(response) == {"user_id": expected}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/items/42", {"item_id": ["int", "42"]}),
        ("/items/-7", {"item_id": ["int", "-7"]}),
        ("/prices/9.5", {"amount": ["float", "9.5"]}),
        (
            "/things/6f1c6a4e-8d6b-4c59-9c41-1d0f6e1f2a3b",
            {"thing": ["UUID", "6f1c6a4e-8d6b-4c59-9c41-1d0f6e1f2a3b"]},
        ),
        ("/files/a/b/c%2Fd.txt", {"rest": ["str", "a/b/c/d.txt"]}),
    ],
)
async def test_converters(http_client, base_url, path, expected):
    response = await fetch(http_client, base_url + "/api/v1" + path)
    assert response.code == 200
    assert body(response) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/items/abc",
        "/items/4.5",
        "/items/",
        "/prices/x",
        "/things/not-a-uuid",
        "/users/a/b",
        "/users/a%2Fb",
    ],
)
async def test_converter_failures_are_json_404s(http_client, base_url, path):
    response = await fetch(http_client, base_url + "/api/v1" + path)
    assert response.code == 404
    assert body(response)["errcode"] in ("UNRECOGNIZED", "NOT_FOUND")


async def test_invalid_utf8_in_path_is_a_4xx_not_a_500(http_client, base_url):
    response = await fetch(http_client, base_url + "/api/v1/users/%FF%FE")
    assert response.code == 400
    assert body(response)["errcode"] == "BAD_REQUEST"


async def test_raw_regex_pattern(http_client, base_url):
    response = await fetch(http_client, base_url + "/api/v1/raw/2024/hello-world")
    assert body(response) == {"year": "2024", "slug": "hello-world"}
    miss = await fetch(http_client, base_url + "/api/v1/raw/24/hello")
    assert miss.code == 404


async def test_patterns_are_anchored(http_client, base_url):
    for path in ("/api/v1/users/ada/extra", "/prefix/api/v1/users/ada", "/api/v1/items/42x"):
        response = await fetch(http_client, base_url + path)
        assert response.code == 404, path


# -- return values, sync and async ----------------------------------------------------------


async def test_return_value_forms(http_client, base_url):
    created = await fetch(
        http_client,
        base_url + "/api/v1/users/ada",
        method="POST",
        body=b'{"x": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert created.code == 201
    assert body(created) == {"user_id": "ada", "body": {"x": 1}}
    wrote = await fetch(http_client, base_url + "/api/v1/self")
    assert wrote.body == b"raw text"
    assert wrote.headers["X-Custom"] == "1"


async def test_function_routes_share_a_template(http_client, base_url):
    read = await fetch(http_client, base_url + "/api/v1/fn/3")
    assert body(read) == {"n": 3, "method": "GET"}
    deleted = await fetch(http_client, base_url + "/api/v1/fn/3", method="DELETE")
    assert deleted.code == 202
    assert body(deleted) == {"deleted": 3}
    options = await fetch(http_client, base_url + "/api/v1/fn/3", method="OPTIONS")
    assert options.headers["Allow"] == "GET, HEAD, DELETE, OPTIONS"


async def test_servlet_error_is_rendered_as_json(http_client, base_url):
    response = await fetch(http_client, base_url + "/api/v1/users/missing")
    assert response.code == 404
    assert body(response) == {"errcode": "NOT_FOUND", "error": "No such user"}


async def test_html_servlet(http_client, base_url):
    response = await fetch(http_client, base_url + "/api/v1/page/%3Cscript%3E")
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert response.body == b"<p>&lt;script&gt;</p>"


# -- route(): the servlet's method is the user's function --------------------------------------


def route_servlet(app: tornado.web.Application, name: str) -> Any:
    """The servlet class the application serves under the URLSpec ``name``."""
    return app.wildcard_router.named_rules[name].target


@pytest.mark.parametrize(
    ("fn", "path", "methods"),
    [
        (plain_route, "/plain/4", ("GET",)),
        (async_route, "/async/4", ("GET", "POST")),
    ],
)
async def test_route_method_is_the_users_function(http_client, base_url, app, fn, path, methods):
    servlet = route_servlet(app, fn.__name__)
    for method in methods:
        on_method = getattr(servlet, f"on_{method}")
        assert on_method is fn
        assert inspect.unwrap(on_method) is fn
        assert on_method.__qualname__ == fn.__qualname__ == fn.__name__
        assert on_method.__code__ is fn.__code__
        assert inspect.iscoroutinefunction(on_method) is (fn is async_route)
        response = await fetch(
            http_client, base_url + "/api/v1" + path, method=method, allow_nonstandard_methods=True
        )
        assert response.code == 200
        assert body(response) == {"n": 4, "kind": "plain" if fn is plain_route else "async"}


async def test_functions_sharing_a_template_are_each_served_as_they_are(app):
    from tornado_jsonservlet.routing import registry as registry_module

    servlet = route_servlet(app, "read_fn")
    read_fn, delete_fn = servlet.on_GET, servlet.on_DELETE
    assert read_fn.__qualname__ == "make_registry.<locals>.read_fn"
    assert delete_fn.__qualname__ == "make_registry.<locals>.delete_fn"
    assert not inspect.iscoroutinefunction(read_fn)
    assert inspect.iscoroutinefunction(delete_fn)
    assert not hasattr(delete_fn, "__wrapped__")
    assert delete_fn.__module__ == __name__ != registry_module.__name__


async def test_marks_set_before_route_are_on_the_servlet_method(http_client, base_url, app):
    on_post = route_servlet(app, "marked_before_route").on_POST
    assert on_post is marked_before_route
    assert on_post._tornado_jsonservlet_cancel is True
    response = await fetch(http_client, base_url + "/api/v1/marked/before", method="POST", body=b"")
    assert body(response) == {"marked": "before"}


async def test_marks_set_after_route_are_on_the_servlet_method(app):
    assert route_servlet(app, "marked_post").on_POST._tornado_jsonservlet_cancel is True
    assert route_servlet(app, "marked_get").on_GET._tornado_jsonservlet_cancel is False


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_cancellable_set_after_route_cancels_a_post(
    http_server, http_port, probe, caplog, how
):
    # A POST runs to completion by default; @cancellable (above @route) opts it in.
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("POST", "/api/v1/marked/post", body=b"{}")
    await probe.wait_suspended()
    conn.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.count("after-await") == 0
    assert probe.count("finally") == 1
    assert access_statuses(caplog) == [499]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_uncancellable_set_after_route_lets_a_get_finish(
    http_server, http_port, probe, caplog, how
):
    # A GET is cancelled by default; @uncancellable (above @route) opts it out.
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("GET", "/api/v1/marked/get")
    await probe.wait_suspended()
    conn.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.count("after-await") == 1
    assert probe.count("finally") == 1
    assert access_statuses(caplog) == [499]


@pytest.mark.parametrize(
    ("name", "method", "fn", "is_async", "mark"),
    [
        ("bound", "GET", SERVICE.lookup, True, False),
        ("bound", "POST", SERVICE.count, False, None),
        ("partial_async", "GET", SCALED_BY_10, True, True),
        ("partial_async", "PUT", SCALED_BY_3, False, None),
    ],
)
def test_other_callables_get_a_functools_wraps_wrapper(app, name, method, fn, is_async, mark):
    on_method = getattr(route_servlet(app, name), f"on_{method}")
    assert on_method.__wrapped__ == fn  # a bound method is a new object at each access
    assert inspect.iscoroutinefunction(on_method) is is_async
    assert getattr(on_method, "_tornado_jsonservlet_cancel", None) is mark
    if inspect.ismethod(fn):
        assert on_method.__qualname__ == fn.__qualname__ == f"Service.{fn.__name__}"
    else:  # a partial has no __qualname__: the wrapper shows the function it calls
        assert on_method.__qualname__ == fn.func.__qualname__ == fn.func.__name__


async def test_wrapped_callables_are_served(http_client, base_url):
    url = base_url + "/api/v1"
    assert body(await fetch(http_client, url + "/bound/2")) == {"service": "svc", "n": 2}
    counted = await fetch(http_client, url + "/bound/2", method="POST", body=b"")
    assert body(counted) == {"service": "svc", "count": 2}
    assert body(await fetch(http_client, url + "/partial/2")) == {"n": 20}
    assert body(await fetch(http_client, url + "/partial/2", method="PUT", body=b"")) == {"n": 6}


def test_a_callable_without_a_name_needs_one():
    registry = ServletRegistry()
    with pytest.raises(TypeError, match="has no __name__: pass name="):
        registry.route("/p")(SCALED_BY_3)


# -- methods ---------------------------------------------------------------------------------


async def test_missing_method_is_405_with_allow(http_client, base_url):
    response = await fetch(http_client, base_url + "/api/v1/users/ada", method="DELETE")
    assert response.code == 405
    assert response.headers["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert body(response)["errcode"] == "UNRECOGNIZED"


async def test_unknown_http_method_is_405_with_allow(http_server, http_port):
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("PROPFIND", "/api/v1/users/ada", headers={"Connection": "close"})
    raw = await conn.read_until_close()
    assert raw.startswith(b"HTTP/1.1 405")
    assert b"Allow: GET, HEAD, POST, OPTIONS" in raw


async def test_head_is_served_by_get_without_body(http_client, base_url):
    get = await fetch(http_client, base_url + "/api/v1/items/5")
    head = await fetch(http_client, base_url + "/api/v1/items/5", method="HEAD")
    assert head.code == 200
    assert head.body == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    # The document is not encoded for HEAD, so its length is not known: left out.
    assert "Content-Length" in get.headers
    assert "Content-Length" not in head.headers


async def test_options_and_cors_preflight(http_client, base_url):
    plain = await fetch(http_client, base_url + "/api/v1/items/5", method="OPTIONS")
    assert plain.code == 204
    assert plain.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert "Access-Control-Allow-Methods" not in plain.headers
    preflight = await fetch(
        http_client,
        base_url + "/api/v1/cors",
        method="OPTIONS",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"},
    )
    assert preflight.code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, HEAD, PUT, OPTIONS"


# -- URL table ---------------------------------------------------------------------------------


async def test_catch_all_is_json_404_and_leaves_other_rules_alone(http_client, base_url):
    for path in ("/api/v1", "/api/v1/", "/api/v1/nothing/here", "/api/v1/users"):
        response = await fetch(http_client, base_url + path)
        assert response.code == 404, path
        assert body(response) == {"errcode": "UNRECOGNIZED", "error": "Unrecognized request"}
    other = await fetch(http_client, base_url + "/other")
    assert other.body == b"other"


def test_reverse_urls(app):
    assert app.reverse_url("UserServlet", "ada") == "/api/v1/users/ada"
    assert app.reverse_url("typed", 42) == "/api/v1/items/42"
    assert app.reverse_url("typed#4", "a/b") == "/api/v1/files/a/b"
    assert app.reverse_url("read_fn", 7) == "/api/v1/fn/7"
    thing = uuid.UUID("6f1c6a4e-8d6b-4c59-9c41-1d0f6e1f2a3b")
    assert app.reverse_url("typed#3", str(thing)) == f"/api/v1/things/{thing}"


def test_the_whole_url_table_comes_from_the_registry(probe, metrics):
    specs = make_registry(probe, metrics).urlspecs()
    assert all(isinstance(spec, tornado.web.URLSpec) for spec in specs)
    assert specs[-1].regex.pattern == "^(?:/.*)?$"
    tornado.web.Application(specs)


# -- registration errors -------------------------------------------------------------------------


def test_duplicate_method_and_pattern_names_both_servlets():
    registry = ServletRegistry()
    registry.register(UserServlet)

    class Impostor(JsonServlet):
        def on_GET(self, user_id: str) -> Any:
            return {}

    with pytest.raises(
        ValueError,
        match=r"GET '/users/\{user_id\}' is registered twice: by UserServlet and by Impostor",
    ):
        registry.register(Impostor, ["/users/{user_id}"])


def test_same_pattern_by_another_servlet_is_refused():
    registry = ServletRegistry()
    registry.register(UserServlet)

    class Deleter(JsonServlet):
        def on_DELETE(self, name: str) -> Any:
            return {}

    with pytest.raises(ValueError, match="already served by UserServlet"):
        registry.register(Deleter, ["/users/{name}"])


def test_registering_the_same_servlet_twice_raises():
    registry = ServletRegistry()
    registry.register(UserServlet)
    with pytest.raises(ValueError, match="registered twice: by UserServlet and by UserServlet"):
        registry.register(UserServlet, name="again")
    with pytest.raises(ValueError, match="same pattern is given twice"):
        registry.register(RawServlet, ["/r/{a}", "/r/{b}"])


def test_duplicate_name_raises():
    registry = ServletRegistry()
    registry.register(UserServlet)
    with pytest.raises(ValueError, match="name 'UserServlet' is used by both"):
        registry.register(RawServlet, name="UserServlet")


def test_duplicate_function_route_method_raises():
    registry = ServletRegistry()

    @registry.route("/x")
    def first(handler: Any) -> Any:
        return {}

    with pytest.raises(ValueError, match="registered twice: by first and by second"):

        @registry.route("/x")
        def second(handler: Any) -> Any:
            return {}


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/a/{id:nope}", "unknown converter 'nope'"),
        ("/a/{1bad}", "must be identifiers"),
        ("/a/{x}/{x}", "appears twice"),
        ("/a/{x", "unbalanced"),
        ("^/a/(?P<x>[a-z]+", "missing \\)"),
        ("^/a/([a-z]+)", "only use named groups"),
        ("no-slash", "must start with '/'"),
    ],
)
def test_bad_patterns_name_the_servlet_and_pattern(pattern, message):
    registry = ServletRegistry()
    with pytest.raises(ValueError, match=f"UserServlet: invalid pattern .*{message}"):
        registry.register(UserServlet, [pattern])


def test_other_registration_mistakes():
    registry = ServletRegistry()
    with pytest.raises(ValueError, match="no patterns"):
        registry.register(JsonServlet)
    with pytest.raises(TypeError, match="initialize"):
        registry.register(UserServlet, database="x")
    with pytest.raises(TypeError, match="list of strings"):
        registry.register(UserServlet, "/users/{id}")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="methods must be among"):
        registry.route("/x", methods=("BREW",))
    with pytest.raises(ValueError, match="prefix"):
        registry.urlspecs("api/")


# -- cancellation and metrics ---------------------------------------------------------


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_disconnect_during_slow_on_get(http_server, http_port, probe, metrics, caplog, how):
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("GET", "/api/v1/slow")
    await probe.wait_suspended()
    conn.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.count("after-await") == 0
    assert probe.count("finally") == 1
    assert access_statuses(caplog) == [499]
    assert metrics.count("SlowServlet", 499) == 1


async def test_metrics_count_statuses_and_time(http_client, base_url, metrics):
    await fetch(http_client, base_url + "/api/v1/users/ada")
    await fetch(http_client, base_url + "/api/v1/users/missing")
    await fetch(http_client, base_url + "/api/v1/users/ada", method="DELETE")
    await fetch(http_client, base_url + "/api/v1/nowhere")
    assert metrics.count("UserServlet", 200) == 1
    assert metrics.count("UserServlet", 404) == 1
    assert metrics.count("UserServlet", 405) == 1
    assert metrics.count("unrecognized", 404) == 1
    assert metrics.timings["UserServlet"].count == 3
    assert metrics.timings["UserServlet"].total > 0


def test_prometheus_exporter_is_optional():
    prometheus_client = pytest.importorskip("prometheus_client")
    from tornado_jsonservlet import PrometheusMetrics

    exporter = PrometheusMetrics(registry=prometheus_client.CollectorRegistry())
    exporter.observe("S", "GET", 499, 0.01)


async def test_lean_defaults_match_tornado(http_client, base_url):
    lean = await fetch(http_client, base_url + "/api/v1/users/ada")
    plain = await fetch(http_client, base_url + "/other")
    assert lean.headers["Server"] == plain.headers["Server"]
    assert lean.headers["Date"][-4:] == plain.headers["Date"][-4:] == " GMT"
    gap = email.utils.parsedate_to_datetime(
        plain.headers["Date"]
    ) - email.utils.parsedate_to_datetime(lean.headers["Date"])
    assert abs(gap.total_seconds()) <= 2


def test_http_date_is_cached_per_second(monkeypatch):
    from tornado_jsonservlet.jsonio import lean

    calls = []
    real = tornado.httputil.format_timestamp
    monkeypatch.setattr(
        lean.tornado.httputil, "format_timestamp", lambda t: calls.append(t) or real(t)
    )
    monkeypatch.setattr(lean, "_date_cache", (0, ""))
    monkeypatch.setattr(lean.time, "time", lambda: 1_700_000_000.25)
    first = lean.http_date()
    monkeypatch.setattr(lean.time, "time", lambda: 1_700_000_000.75)
    assert lean.http_date() == first == "Tue, 14 Nov 2023 22:13:20 GMT"
    monkeypatch.setattr(lean.time, "time", lambda: 1_700_000_001.0)
    assert lean.http_date() == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert len(calls) == 2


async def test_access_log_still_written_when_enabled(http_client, base_url, caplog):
    await fetch(http_client, base_url + "/api/v1/users/ada")
    assert access_statuses(caplog) == [200]


async def test_malformed_form_body_is_a_400_not_a_500(http_client, base_url):
    response = await fetch(
        http_client,
        base_url + "/api/v1/users/ada",
        method="POST",
        body=b"\x00",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.code in (400, 415)
    assert body(response)["errcode"] in ("BAD_REQUEST", "UNSUPPORTED_MEDIA_TYPE")


# -- the route reaches its servlet through the request --------------------------------


class _Counting(ServletMetrics):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def observe(self, servlet: str, method: str, status: int, seconds: float) -> None:
        self.seen.append((servlet, method, status))


class ItemKind(JsonServlet):
    def initialize(self, label: str = "none") -> None:
        self.label = label

    def on_GET(self, n: Any) -> Any:
        return {"type": type(n).__name__, "label": self.label}


@contextlib.asynccontextmanager
async def _served(
    rules: list[Any],
) -> AsyncIterator[Callable[[str], Awaitable[tornado.httpclient.HTTPResponse]]]:
    """An application of its own on loopback (the module's ``app`` fixture is
    another): yields a fetch of a path that returns error responses too."""
    server = tornado.httpserver.HTTPServer(tornado.web.Application(rules))
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = tornado.httpclient.AsyncHTTPClient()
    try:
        yield lambda path: client.fetch(base + path, raise_error=False)
    finally:
        server.stop()


@pytest.mark.gen_test
async def test_one_servlet_in_two_registries_gets_each_routes_own_converters_and_metrics() -> None:
    counted = _Counting()
    typed = ServletRegistry(metrics=counted)
    typed.register(ItemKind, ["/items/{n:int}"], label="typed")
    plain = ServletRegistry()
    plain.register(ItemKind, ["/items/{n}"])
    raw = ServletRegistry()
    raw.register(ItemKind, [r"/raw/(?P<n>[0-9]+)"], label="raw")
    rules = typed.urlspecs(prefix="/a") + plain.urlspecs(prefix="/b") + raw.urlspecs(prefix="/c")
    async with _served(rules) as fetch_path:
        answers = []
        for path in ("/a/items/7", "/b/items/7", "/a/items/8", "/c/raw/9"):
            response = await fetch_path(path)
            answers.append((response.code, json.loads(response.body)))
        missing = await fetch_path("/a/nothing")
    assert answers == [
        (200, {"type": "int", "label": "typed"}),
        (200, {"type": "str", "label": "none"}),
        (200, {"type": "int", "label": "typed"}),
        (200, {"type": "str", "label": "raw"}),
    ]
    assert missing.code == 404
    assert counted.seen == [
        ("ItemKind", "GET", 200),
        ("ItemKind", "GET", 200),
        ("unrecognized", "GET", 404),
    ]


@pytest.mark.gen_test
async def test_rules_rebuilt_from_urlspecs_keep_their_route() -> None:
    """An application that rebuilds each rule (to wrap its handler in a subclass,
    say) gets the same converters and metrics as with the registry's own rules."""

    def wrapped(cls: type) -> type:
        return type(cls.__name__, (cls,), {"servlet_name": cls.servlet_name})

    counted = _Counting()
    registry = ServletRegistry(metrics=counted)
    registry.register(ItemKind, ["/items/{n:int}"], label="typed")
    rules = [
        tornado.web.URLSpec(spec.regex.pattern, wrapped(spec.handler_class), spec.kwargs, spec.name)
        for spec in registry.urlspecs(prefix="/api")
    ]
    async with _served(rules) as fetch_path:
        response = await fetch_path("/api/items/7")
        missing = await fetch_path("/api/nothing")
    assert response.code == 200
    assert json.loads(response.body) == {"type": "int", "label": "typed"}
    assert missing.code == 404
    assert b'"errcode":"UNRECOGNIZED"' in missing.body
    assert counted.seen == [("ItemKind", "GET", 200), ("unrecognized", "GET", 404)]
