"""The in-flight registry that a shutdown reads: every request leaves it, however it ends.

The registry is a plain set (a weak one cost two weak references per request), so
a request that stayed in it would be kept alive, with its handler, its scope and
everything they hold. Requests that end every way a request can end go through a
real server; afterwards the registry is empty and every handler is collected.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from tests.support import wait_until
from tornado_jsonservlet import CancelOnDisconnectMixin, JsonServlet, ServletRegistry
from tornado_jsonservlet.core import cancellation
from tornado_jsonservlet.core.cancellation import running_requests
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

#: A weak reference to every handler created, to check that none outlives its request.
HANDLERS: list[weakref.ref[Any]] = []


class Tracked(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    def initialize(self) -> None:
        HANDLERS.append(weakref.ref(self))

    async def get(self, how: str) -> None:
        if how == "fails":
            raise RuntimeError("boom")  # a 500, logged
        if how == "waits":
            self.application.settings["suspended"].set()
            await asyncio.sleep(30)  # cancelled when the client leaves
        if how == "swallows":
            try:
                self.application.settings["suspended"].set()
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass  # the handler swallows the cancellation and ends normally
        self.write({"how": how})


class Slow(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    request_deadline = 0.05

    def initialize(self) -> None:
        HANDLERS.append(weakref.ref(self))

    async def get(self) -> None:
        await asyncio.sleep(30)  # the deadline cancels it: 504


class Servlet(JsonServlet):
    PATTERNS = ("/servlet",)

    def initialize(self) -> None:
        HANDLERS.append(weakref.ref(self))

    async def on_GET(self) -> Any:
        return {"ok": True}


@pytest.fixture
def app() -> tornado.web.Application:
    HANDLERS.clear()
    registry = ServletRegistry()
    registry.register(Servlet)
    return tornado.web.Application(
        [(r"/tracked/(\w+)", Tracked), (r"/slow", Slow), *registry.urlspecs(catch_all=False)],
        suspended=None,  # an asyncio.Event, made in the test's loop (Python 3.9 binds it)
    )


@pytest.mark.allow_error_log(r"Uncaught exception GET /tracked/fails", r"^500 GET /tracked/fails")
async def test_no_request_stays_registered_or_alive(
    app: tornado.web.Application, http_port: int, base_url: str, http_server: Any
) -> None:
    app.settings["suspended"] = asyncio.Event()
    client = AsyncHTTPClient()
    for how in ("plain", "fails"):
        response = await client.fetch(f"{base_url}/tracked/{how}", raise_error=False)
        assert response.code == (200 if how == "plain" else 500)
    assert (await client.fetch(f"{base_url}/slow", raise_error=False)).code == 504
    assert (await client.fetch(f"{base_url}/servlet")).code == 200
    for how, close in (("waits", "rst"), ("waits", "fin"), ("swallows", "rst")):
        suspended: asyncio.Event = app.settings["suspended"]
        suspended.clear()
        conn = await RawHTTPConnection.open(http_port)
        await conn.send_request("GET", f"/tracked/{how}")
        await asyncio.wait_for(suspended.wait(), 5)
        assert len(running_requests()) == 1
        conn.close(close)  # type: ignore[arg-type]
        await wait_until(lambda: not running_requests(), what=f"{how}/{close} to end")
    # A client that sends its request and resets at once: cancelled before it starts.
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_raw(b"GET /tracked/plain HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.close("rst")
    await wait_until(lambda: len(HANDLERS) == 8, what="the eighth handler")
    await wait_until(lambda: not running_requests(), what="the last request to end")
    assert not cancellation._running
    # The failed request's handler is held by its logged traceback (the test's log
    # capture keeps the record), as it would be by any logging handler that does.
    others = HANDLERS[:1] + HANDLERS[2:]
    await wait_until(
        lambda: gc.collect() == 0 and all(ref() is None for ref in others),
        what="every handler to be collected",
    )
