"""Where finishing in one write could part from ``finish()``: found by a review.

Each case runs on the one-write path and, through a pass-through ``flush``, on
``finish()``'s path; both must behave alike:

* ``on_finish()`` raises: the request's children and timers are still cancelled;
* ``RequestHandler.finish``/``flush``/``write`` wrapped by an application or an
  instrumentation, before the first request or after it: the wrapper runs;
* the client's reset and a backend's answer arrive in the same turn of the loop, so
  the handler answers on a stream Tornado has closed, before the close callback
  ran: the failed write is still the client's departure (``on_disconnect`` runs).
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from tests.support import wait_until
from tornado_jsonservlet import JsonResponseMixin, JsonServlet, ServletRegistry
from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

CHILDREN: dict[str, asyncio.Task[Any]] = {}
RACE: dict[str, Any] = {}
DISCONNECTS: list[str] = []


def through_finish(cls: type) -> type:
    """``cls`` with a pass-through ``flush``: it takes ``finish()``'s path."""

    def flush(self: Any, include_footers: bool = False) -> Any:
        return super(copy, self).flush(include_footers)

    copy = type(f"Finishing{cls.__name__}", (cls,), {"flush": flush, "PATTERNS": ()})
    return copy


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
    registry = ServletRegistry()
    for servlet in (RaisingOnFinish, Plain, Racy):
        registry.register(servlet)
        registry.register(through_finish(servlet), ["/finishing" + servlet.PATTERNS[0]])
    return tornado.web.Application([("/plainjson", PlainJson), *registry.urlspecs(catch_all=False)])


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
    monkeypatch.setattr(tornado_internals, "_finishes_in_one_write", {})
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
