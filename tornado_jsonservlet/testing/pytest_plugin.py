"""pytest fixtures for testing handlers against real disconnects (loaded automatically).

Your ``app`` fixture provides the ``tornado.web.Application``; these fixtures talk
to a real server running it on 127.0.0.1:

* ``disconnecting_client``: ``conn = await disconnecting_client()`` opens a
  :class:`~tornado_jsonservlet.testing.RawHTTPConnection` to the test server.
* ``disconnect_harness``: ``report = await disconnect_harness("GET", "/path")`` runs
  :func:`~tornado_jsonservlet.testing.disconnect_at_every_await` against it.
* ``app_server``: the server itself, for tests that need its port.

With pytest-tornado on Python 3.12+, its ``io_loop`` fixture warns ("There is no
current event loop", and Tornado's own deprecation of ``make_current``). To use
a loop built with supported calls only, override it in your ``conftest.py``::

    @pytest.fixture
    def io_loop():
        with fresh_io_loop() as loop:
            yield loop

They work with any runner that runs the test coroutine in an asyncio loop. Under
pytest-tornado (a test marked ``@pytest.mark.gen_test``) they use pytest-tornado's
own server, the one its ``http_client`` and ``base_url`` fixtures talk to. Under
pytest-asyncio, anyio or any other runner, the server is started inside the test's
running loop on first use, because a server started outside it would never be
served; it is stopped when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, Callable, Coroutine, Optional

import pytest
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from tornado_jsonservlet.testing.harness import (
    DisconnectReport,
    RawHTTPConnection,
    disconnect_at_every_await,
)

__all__ = ["AppServer", "fresh_io_loop"]


@contextlib.contextmanager
def fresh_io_loop() -> Iterator[tornado.ioloop.IOLoop]:
    """A new event loop for one test, made and released with supported calls only.

    pytest-tornado 0.8.1 builds its loop with ``IOLoop()``, ``make_current()`` and
    ``clear_current()``. Tornado deprecates the last two, and on Python 3.12+
    ``IOLoop()`` asks asyncio for the current loop after the previous test cleared
    it, which asyncio reports as "There is no current event loop". This makes a
    new asyncio loop, sets it as the thread's loop (so fixtures that create
    servers, clients or asyncio objects before the test starts bind to it), and
    wraps it with ``IOLoop.current()``. It is not registered as a fixture, so it
    never competes with pytest-tornado's: override ``io_loop`` with it in a
    ``conftest.py``.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    io_loop = tornado.ioloop.IOLoop.current()
    try:
        yield io_loop
    finally:
        io_loop.close(all_fds=True)
        asyncio.set_event_loop(None)


class AppServer:
    """The ``app`` fixture's application served on 127.0.0.1 for one test.

    ``await app_server.port()`` returns the port, starting the server first if
    needed. Starting is deferred to that call so that it happens inside the loop
    the test runs on, whichever plugin provides that loop.
    """

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._port: Optional[int] = None
        self._app: Optional[tornado.web.Application] = None
        self._server: Optional[tornado.httpserver.HTTPServer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        if _runs_under_pytest_tornado(request):
            # pytest-tornado runs this test on its io_loop and serves the app
            # there; its http_client and base_url talk to that same server.
            request.getfixturevalue("http_server")
            self._port = int(request.getfixturevalue("http_port"))
            return
        name = getattr(request.config.option, "app_fixture", None) or "app"
        app = request.getfixturevalue(name)
        if not isinstance(app, tornado.web.Application):
            raise TypeError(
                f"the {name!r} fixture must return a tornado.web.Application, "
                f"not {type(app).__name__}"
            )
        self._app = app

    async def port(self) -> int:
        """The server's port; the first call starts it in the running loop."""
        if self._port is None:
            assert self._app is not None
            [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
            self._loop = asyncio.get_running_loop()
            self._server = tornado.httpserver.HTTPServer(self._app)
            self._server.add_sockets([sock])
            self._port = int(sock.getsockname()[1])
        return self._port

    def close(self) -> None:
        """Stop a server this fixture started, and close its open connections."""
        server, loop = self._server, self._loop
        self._server = None
        if server is None or loop is None:
            return
        server.stop()
        if not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(asyncio.wait_for(server.close_all_connections(), 5))


def _runs_under_pytest_tornado(request: pytest.FixtureRequest) -> bool:
    """pytest-tornado is loaded and will run this test (``gen_test``) on its loop."""
    marked = request.node.get_closest_marker("gen_test") is not None
    return marked and request.config.pluginmanager.has_plugin("tornado")


@pytest.fixture
def app_server(request: pytest.FixtureRequest) -> Iterator[AppServer]:
    """The ``app`` fixture's application on a loopback port: ``await app_server.port()``.

    Under pytest-tornado's ``gen_test`` this is pytest-tornado's ``http_server``;
    otherwise the server is started in the test's running loop on first use and
    stopped after the test.
    """
    server = AppServer(request)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def disconnecting_client(
    app_server: AppServer,
) -> Callable[[], Coroutine[Any, Any, RawHTTPConnection]]:
    """``conn = await disconnecting_client()``: a raw connection to the test server.

    Send with ``await conn.send_request(method, path)``, then leave with
    ``conn.close("fin")`` or ``conn.close("rst")``, as real clients do.
    """

    async def connect() -> RawHTTPConnection:
        return await RawHTTPConnection.open(await app_server.port())

    return connect


@pytest.fixture
def disconnect_harness(
    app_server: AppServer,
) -> Callable[..., Coroutine[Any, Any, DisconnectReport]]:
    """``report = await disconnect_harness("GET", "/path", **options)``.

    Disconnects once at every await point of the handler serving the request and
    checks each outcome; raises ``AssertionError`` listing the problems. Options are
    those of :func:`~tornado_jsonservlet.testing.disconnect_at_every_await`.
    """

    async def run(method: str = "GET", path: str = "/", **options: Any) -> DisconnectReport:
        return await disconnect_at_every_await(await app_server.port(), method, path, **options)

    return run
