"""Where finishing in one write could part from ``finish()``: found by a review.

Each case runs on the one-write path and, through a pass-through ``flush``, on
``finish()``'s path; both must behave alike:

* ``on_finish()`` raises: the request's children and timers are still cancelled;
* ``RequestHandler.finish``/``flush``/``write`` wrapped by an application or an
  instrumentation, before the first request or after it: the wrapper runs;
* an application's override below the toolkit's (``class S(JsonServlet, Audit)``),
  reached by the toolkit's ``super()`` calls: it runs;
* a wrapper or a mock on one of the toolkit's own methods, before the first request
  or after it (``functools.wraps`` copies attributes, a mock answers any): it runs;
* the client's reset and a backend's answer arrive in the same turn of the loop, so
  the handler answers on a stream Tornado has closed, before the close callback
  ran: the failed write is still the client's departure (``on_disconnect`` runs).
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any
from unittest import mock

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from tests.jsonio.conftest import through_finish
from tests.support import wait_until
from tornado_jsonservlet import JsonResponseMixin, JsonServlet, ServletRegistry
from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.safe_output import SafeWriteMixin
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

CHILDREN: dict[str, asyncio.Task[Any]] = {}
CALLS: list[str] = []
RACE: dict[str, Any] = {}
DISCONNECTS: list[str] = []


async def forever() -> None:
    await asyncio.sleep(30)


class RaisingOnFinish(JsonServlet):
    """Owns a child task; its on_finish raises."""

    PATTERNS = ("/raising",)

    async def on_GET(self) -> Any:
        CHILDREN[type(self).__name__] = self.spawn(forever())
        return {"ok": True}

    def on_finish(self) -> None:
        raise RuntimeError("on_finish failed")


class Plain(JsonServlet):
    PATTERNS = ("/plain",)

    def on_GET(self) -> Any:
        return {"ok": True}


class PlainJson(JsonResponseMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.write_json({"ok": True})


class AuditFinish(tornado.web.RequestHandler):
    """An application's base listed after the toolkit: the toolkit's super().finish()
    reaches its finish()."""

    def finish(self, chunk: Any = None) -> Any:
        CALLS.append(type(self).__name__)
        return super().finish(chunk)


class Audited(JsonServlet, AuditFinish):
    PATTERNS = ("/audited",)

    def on_GET(self) -> Any:
        return {"ok": True}


class AuditedJson(JsonResponseMixin, SafeWriteMixin, AuditFinish):
    async def get(self) -> None:
        await self.write_json({"ok": True})


class Racy(JsonServlet):
    """Answers when a backend's socket says so."""

    PATTERNS = ("/racy",)

    async def on_GET(self) -> Any:
        RACE["future"] = asyncio.get_running_loop().create_future()
        RACE["started"].set()
        await RACE["future"]
        return {"ok": True}

    def on_disconnect(self) -> None:
        DISCONNECTS.append(type(self).__name__)

    def on_finish(self) -> None:
        RACE["finished"].set()


@pytest.fixture
def app() -> tornado.web.Application:
    CHILDREN.clear()
    CALLS.clear()
    registry = ServletRegistry()
    for servlet in (RaisingOnFinish, Plain, Racy, Audited):
        registry.register(servlet)
        registry.register(through_finish(servlet), ["/finishing" + servlet.PATTERNS[0]])
    return tornado.web.Application(
        [
            ("/plainjson", PlainJson),
            ("/auditedjson", AuditedJson),
            ("/finishing/auditedjson", through_finish(AuditedJson)),
            *registry.urlspecs(catch_all=False),
        ]
    )


@pytest.mark.allow_error_log(r"Uncaught exception", r"on_finish failed")
@pytest.mark.parametrize("prefix", ["", "/finishing"])
async def test_on_finish_raising_still_releases_owned_work(
    http_server: Any, base_url: str, prefix: str
) -> None:
    response = await AsyncHTTPClient().fetch(f"{base_url}{prefix}/raising", raise_error=False)
    assert response.code == 200
    name = "FinishingRaisingOnFinish" if prefix else "RaisingOnFinish"
    child = CHILDREN[name]
    await wait_until(child.done, what=f"{name}'s child task to be cancelled")
    assert child.cancelled()


def counting(calls: list[str], name: str) -> Any:
    original = tornado.web.RequestHandler.__dict__[name]

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return original(self, *args, **kwargs)

    return wrapper


@pytest.mark.parametrize("name", ["flush", "finish", "write", "set_header"])
@pytest.mark.parametrize("path", ["/plain", "/plainjson"])
async def test_a_wrapper_on_tornados_method_runs(
    http_server: Any, base_url: str, name: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrapped before the first request of the class (a fresh process)."""
    calls: list[str] = []
    monkeypatch.setattr(tornado.web.RequestHandler, name, counting(calls, name))
    monkeypatch.setattr(tornado_internals, "_finish_paths", {})
    response = await AsyncHTTPClient().fetch(base_url + path)
    assert response.code == 200
    assert name in calls


@pytest.mark.parametrize("path", ["/plain", "/plainjson"])
async def test_a_wrapper_added_after_the_first_request_runs(
    http_server: Any, base_url: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await AsyncHTTPClient().fetch(base_url + path)).code == 200
    calls: list[str] = []
    monkeypatch.setattr(tornado.web.RequestHandler, "flush", counting(calls, "flush"))
    assert (await AsyncHTTPClient().fetch(base_url + path)).code == 200
    assert calls == ["flush"]


@pytest.mark.parametrize("prefix", ["", "/finishing"])
async def test_a_reset_seen_in_the_turn_the_answer_is_written_is_a_disconnect(
    http_server: Any, http_port: int, prefix: str
) -> None:
    """The backend's answer and the client's reset arrive in the same select(): the
    handler answers after Tornado closed the stream, before its close callback ran."""
    DISCONNECTS.clear()
    RACE.clear()
    RACE["started"] = asyncio.Event()
    RACE["finished"] = asyncio.Event()
    loop = asyncio.get_running_loop()
    backend, backend_peer = socket.socketpair()
    backend.setblocking(False)

    def backend_answered() -> None:
        backend.recv(16)
        loop.remove_reader(backend)
        RACE["future"].set_result(None)

    try:
        conn = await RawHTTPConnection.open(http_port)
        await conn.send_raw(f"GET {prefix}/racy HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.wait_for(RACE["started"].wait(), 5)
        loop.add_reader(backend, backend_answered)
        backend_peer.send(b"x")  # ready first...
        conn.close("rst")  # ...then the client's reset, in the same select()
        await asyncio.wait_for(RACE["finished"].wait(), 5)
    finally:
        backend.close()
        backend_peer.close()
    assert ["FinishingRacy" if prefix else "Racy"] == DISCONNECTS


@pytest.mark.parametrize("prefix", ["", "/finishing"])
@pytest.mark.parametrize("path", ["/audited", "/auditedjson"])
async def test_an_application_finish_below_the_toolkits_runs(
    http_server: Any, base_url: str, prefix: str, path: str
) -> None:
    assert (await AsyncHTTPClient().fetch(base_url + prefix + path)).code == 200
    assert len(CALLS) == 1, CALLS


def wrapping(original: Any, *, wraps: bool) -> Any:
    def wrapper(self: Any, chunk: Any = None) -> Any:
        CALLS.append("finish")
        return original(self, chunk)

    return functools.wraps(original)(wrapper) if wraps else wrapper


@pytest.mark.parametrize("wraps", [False, True])
@pytest.mark.parametrize("prefix", ["", "/finishing"])
async def test_a_wrapper_on_a_toolkit_method_runs_whenever_it_is_patched(
    http_server: Any, base_url: str, prefix: str, wraps: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await AsyncHTTPClient().fetch(base_url + prefix + "/plain")).code == 200
    monkeypatch.setattr(SafeWriteMixin, "finish", wrapping(SafeWriteMixin.finish, wraps=wraps))
    assert (await AsyncHTTPClient().fetch(base_url + prefix + "/plain")).code == 200
    assert CALLS == ["finish"]


@pytest.mark.parametrize("prefix", ["", "/finishing"])
async def test_a_wrapper_on_a_toolkit_method_before_any_request_runs(
    http_server: Any, base_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tornado_internals, "_finish_paths", {})
    monkeypatch.setattr(SafeWriteMixin, "finish", wrapping(SafeWriteMixin.finish, wraps=True))
    assert (await AsyncHTTPClient().fetch(base_url + prefix + "/plain")).code == 200
    assert CALLS == ["finish"]


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("prefix", ["", "/finishing"])
async def test_a_mock_spying_on_finish_is_called(
    http_server: Any, base_url: str, prefix: str, fresh: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application's test spying on finish(), before or after other requests."""
    if fresh:
        monkeypatch.setattr(tornado_internals, "_finish_paths", {})
    else:
        assert (await AsyncHTTPClient().fetch(base_url + prefix + "/plain")).code == 200
    original = SafeWriteMixin.finish
    with mock.patch.object(SafeWriteMixin, "finish", autospec=True, side_effect=original) as spy:
        assert (await AsyncHTTPClient().fetch(base_url + prefix + "/plain")).code == 200
    assert spy.call_count == 1
