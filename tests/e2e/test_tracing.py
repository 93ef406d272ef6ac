"""Tracing agrees with the client: OpenTelemetry's Tornado instrumentation, real servers.

The instrumentation is the real one (``opentelemetry-instrumentation-tornado``) with
the SDK's in-memory exporter. Every request must give exactly one server span,
ended, with the status the client got; the toolkit's own cancellations must log
nothing at ERROR and show on the span as an event.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from opentelemetry import trace
from opentelemetry.instrumentation.tornado import TornadoInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tornado.httpclient import AsyncHTTPClient

from tests.support import Probe, access_statuses, messages, wait_until
from tornado_jsonservlet import (
    CancelOnDisconnectMixin,
    JsonServlet,
    NotFound,
    ServletRegistry,
)
from tornado_jsonservlet.core.tracing import CANCELLED_EVENT
from tornado_jsonservlet.outbound import CancellableHTTPClient
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def instrumented() -> Iterator[None]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    TornadoInstrumentor().instrument(tracer_provider=provider)
    try:
        yield
    finally:
        TornadoInstrumentor().uninstrument()


@pytest.fixture(autouse=True)
def fresh_spans() -> None:
    EXPORTER.clear()


def server_spans() -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.kind == trace.SpanKind.SERVER]


def client_spans() -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]


def status_of(span: ReadableSpan) -> Any:
    attributes = span.attributes or {}
    return attributes.get("http.status_code", attributes.get("http.response.status_code"))


class Lookup(Exception):
    """An application exception its error handler maps to a 404."""


registry = ServletRegistry()
PROBE = Probe()


class Items(JsonServlet):
    PATTERNS = ("/users/{user_id:int}/items/{item}",)
    request_deadline = 0.3

    async def on_GET(self, user_id: int, item: str) -> Any:
        if item == "slow":
            PROBE.suspended.set()
            await asyncio.sleep(30)
        if item == "missing":
            raise Lookup(item)
        return {"user": user_id, "item": item}

    async def on_POST(self, user_id: int, item: str) -> Any:
        return {"size": len(self.request.body)}

    def on_finish(self) -> None:
        PROBE.hit("on_finish")
        PROBE.finished.set()


Items.add_error_handler(Lookup, lambda handler, error: NotFound("No such item"))
registry.register(Items)


class Upstream(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        PROBE.values["traceparent"] = self.request.headers.get("traceparent")
        PROBE.hit("upstream-started")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            PROBE.hit("upstream-cancelled")
            raise


class Caller(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        client = CancellableHTTPClient()
        await client.fetch(f"http://127.0.0.1:{self.settings['port']}/upstream")


@pytest.fixture
def app(http_port: int) -> tornado.web.Application:
    PROBE.__init__()  # type: ignore[misc]
    return tornado.web.Application(
        [*registry.urlspecs("/api"), ("/upstream", Upstream), ("/caller", Caller)],
        port=http_port,
    )


# Releases of the instrumentation that still support Python 3.9 name a span after the
# request's path; later ones after the matched route, which is what the toolkit feeds.
NAMES_BY_ROUTE = (
    importlib.util.find_spec("opentelemetry.instrumentation.tornado._utils") is not None
)


async def test_a_servlet_span_is_named_after_its_pattern(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/api/users/7/items/pen")
    assert response.code == 200
    spans = server_spans()
    expected = "/api/users/{user_id}/items/{item}" if NAMES_BY_ROUTE else "/api/users/7/items/pen"
    assert [span.name for span in spans] == [f"GET {expected}"]
    assert status_of(spans[0]) == 200


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_departed_client_gives_one_ended_span_with_499(port, caplog, how):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", "/api/users/1/items/slow")
    await PROBE.wait_suspended()
    conn.close(how)
    await PROBE.wait_finished()
    await wait_until(lambda: len(server_spans()) == 1, what="the server span ending")
    span = server_spans()[0]
    assert status_of(span) == 499
    assert [event.name for event in span.events] == [CANCELLED_EVENT]
    assert access_statuses(caplog) == [499]
    assert not messages(caplog, level=40)


async def test_a_deadline_gives_one_span_with_504(http_client, base_url, caplog):
    response = await http_client.fetch(f"{base_url}/api/users/1/items/slow", raise_error=False)
    assert response.code == 504
    await wait_until(lambda: len(server_spans()) == 1, what="the server span ending")
    span = server_spans()[0]
    assert status_of(span) == 504
    assert [event.attributes["tornado_jsonservlet.errcode"] for event in span.events] == [
        "DEADLINE_EXCEEDED"
    ]
    assert not [e for e in span.events if e.name == "exception"]
    assert not messages(caplog, level=40)


async def test_an_exception_mapped_to_404_is_traced_as_404(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/api/users/1/items/missing", raise_error=False)
    assert response.code == 404
    await wait_until(lambda: len(server_spans()) == 1, what="the server span ending")
    assert status_of(server_spans()[0]) == 404


async def test_an_abandoned_upload_ends_its_span_in_its_own_context(port, caplog):
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(
        b"POST /api/users/1/items/x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
        b"Content-Type: application/json\r\n\r\n" + b"{" * 1000
    )
    await wait_until(lambda: PROBE.count("on_finish") == 0, what="the upload under way")
    conn.close("rst")
    await PROBE.wait_finished()
    await wait_until(lambda: len(server_spans()) == 1, what="the server span ending")
    assert status_of(server_spans()[0]) == 499
    assert not messages(caplog, level=40)  # no "Failed to detach context"


async def test_a_fetch_cancelled_by_a_disconnect_ends_its_client_span_once(port, caplog):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", "/caller")
    await wait_until(lambda: PROBE.count("upstream-started") == 1, what="the upstream call")
    conn.close("rst")
    await wait_until(lambda: PROBE.count("upstream-cancelled") == 1, what="upstream aborted")
    await wait_until(lambda: len(client_spans()) == 1, what="the client span ending")
    await wait_until(lambda: len(server_spans()) == 2, what="both server spans ending")
    client = client_spans()[0]
    assert client.end_time is not None
    # Trace context reached the upstream: its server span continues the caller's trace.
    assert PROBE.values["traceparent"]
    upstream = next(
        s for s in server_spans() if s.name.endswith("/upstream") or "upstream" in str(s.attributes)
    )
    assert upstream.context.trace_id == client.context.trace_id
    assert sorted(access_statuses(caplog)) == [499, 499]
    assert not messages(caplog, level=40)


def test_the_client_is_the_instrumented_one() -> None:
    # OpenTelemetry wraps AsyncHTTPClient.fetch; the toolkit's client goes through it.
    assert hasattr(AsyncHTTPClient.fetch, "__wrapped__")


def test_sentry_names_a_servlet_transaction_after_the_servlet() -> None:
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-m", "tests.e2e.sentry_naming"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = json.loads(run.stdout.strip().splitlines()[-1])
    assert names == ["__main__.UsersServlet.get"]  # the servlet, not _ServletBase
