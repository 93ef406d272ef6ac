"""Graceful shutdown: stop accepting, let in-flight requests finish, cancel the rest.

A deploy sends SIGTERM. Tornado alone then either dies at once, cutting every
in-flight request in half, or (with a hand-written handler that stops the loop
when the server is idle) waits forever for a request that never ends.
:class:`GracefulShutdown` gives each process a bounded, orderly exit:

1. **Stop accepting.** The listening sockets are closed (``HTTPServer.stop()``).
   With several processes sharing a socket, the others keep accepting.
2. **Let in-flight requests finish**, for up to ``grace`` seconds (10 by default).
   Every response started from now on says ``Connection: close``, and a
   keep-alive connection is closed once its current request is done, so a proxy
   such as nginx stops sending to this process without losing a request it
   already sent. An idle keep-alive connection stays open while requests are in
   flight, and one that receives a request is served: closing it under the proxy
   could drop a request already on the wire.
3. **Cancel what is left**, through the toolkit's cancellation machinery:
   ``handler.cancel_request(SHUTTING_DOWN)`` on every toolkit request still
   running. A cancellable request is interrupted at its next ``await``, its
   ``finally`` blocks run, and its client gets ``503 {"errcode": "SHUTTING_DOWN",
   ...}``; the access line is a WARNING, never an ERROR.
4. **Bounded wait for the rest.** A request that may not be cancelled (a POST not
   marked ``@cancellable``, by the default policy) or that is not a toolkit
   handler runs on for up to ``abandon_after`` more seconds (5 by default). What
   is still running then is *abandoned*: logged at WARNING, one line per request,
   and cut when the process exits. Choose ``grace + abandon_after`` below your
   orchestrator's kill timeout (Kubernetes' default is 30 s).
5. The remaining (idle) connections are closed and :meth:`GracefulShutdown.wait`
   returns a :class:`ShutdownReport`. The process then exits. With abandoned
   requests, exit without cancelling the tasks left (``os._exit`` after flushing
   the logs, as ``serve()`` does): ``asyncio.run`` would cancel them on the way
   out, and Tornado would log those cancellations as errors.

Only :class:`DrainingHTTPServer` knows which connections are serving a request;
use it in place of ``HTTPServer`` (``tornado_jsonservlet.processes.serve`` does).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import tornado.httpserver
import tornado.httputil
import tornado.web
from tornado.log import gen_log

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.cancellation import (
    CancelOnDisconnectMixin,
    CancelReason,
    running_requests,
)

__all__ = [
    "DEFAULT_ABANDON_AFTER",
    "DEFAULT_GRACE",
    "SHUTTING_DOWN",
    "DrainingHTTPServer",
    "GracefulShutdown",
    "ShutdownReport",
]

#: The reason given to requests still running when the grace period ends.
SHUTTING_DOWN = CancelReason(503, "SHUTTING_DOWN", "Server is shutting down, please retry")

DEFAULT_GRACE = 10.0
DEFAULT_ABANDON_AFTER = 5.0
_POLL_SECONDS = 0.02
_CLOSE_TIMEOUT = 2.0


class _TrackedRequest(tornado.httputil.HTTPMessageDelegate):
    """Marks its connection busy once a request's headers arrived; forwards the rest."""

    __slots__ = ("_connection", "_delegate", "_server")

    def __init__(
        self,
        server: DrainingHTTPServer,
        connection: object,
        delegate: tornado.httputil.HTTPMessageDelegate,
    ) -> None:
        self._server = server
        self._connection = connection
        self._delegate = delegate

    def headers_received(
        self,
        start_line: Union[tornado.httputil.RequestStartLine, tornado.httputil.ResponseStartLine],
        headers: tornado.httputil.HTTPHeaders,
    ) -> Optional[Awaitable[None]]:
        # The start line names the request if it has to be abandoned.
        self._server._busy[self._connection] = start_line  # type: ignore[assignment]
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Optional[Awaitable[None]]:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()


class _ConnectionCloseWhileDraining(tornado.web.OutputTransform):
    """Adds ``Connection: close`` to responses started while their server drains.

    It is installed for the application's whole life, not at shutdown: the
    responses that most need the header are those of requests already running
    when the shutdown begins, and their transforms were chosen when they started.
    """

    server: DrainingHTTPServer

    def transform_first_chunk(
        self,
        status_code: int,
        headers: tornado.httputil.HTTPHeaders,
        chunk: bytes,
        finishing: bool,
    ) -> tuple[int, tornado.httputil.HTTPHeaders, bytes]:
        if self.server._draining:
            headers["Connection"] = "close"
        return status_code, headers, chunk


class DrainingHTTPServer(tornado.httpserver.HTTPServer):
    """An ``HTTPServer`` that can drain: it knows which connections serve a request.

    Use it exactly like ``HTTPServer`` (``server = DrainingHTTPServer(app, xheaders=True)``,
    then ``listen``/``add_sockets``). Until :meth:`start_draining` it behaves the
    same; the bookkeeping costs one small object per request. A connection is
    *busy* from the moment a request's headers arrive until the response is
    complete (Tornado then asks for the next request) or the connection closes.

    .. versionadded:: 0.1
    """

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        """``HTTPServer``'s arguments; also installs the transform that sends
        ``Connection: close`` while draining (for a ``tornado.web.Application``).
        """
        super().initialize(*args, **kwargs)
        # connection -> the request it serves, or None while idle (a connection
        # is registered when it asks for its first request)
        self._busy: dict[object, Optional[tornado.httputil.RequestStartLine]] = {}
        self._draining = False
        app = self.request_callback
        if isinstance(app, tornado.web.Application):
            transform = type(
                "ConnectionCloseWhileDraining", (_ConnectionCloseWhileDraining,), {"server": self}
            )
            app.add_transform(transform)

    @property
    def draining(self) -> bool:
        """True once :meth:`start_draining` was called."""
        return self._draining

    @property
    def busy_connections(self) -> int:
        """Connections serving a request right now."""
        return sum(1 for start_line in self._busy.values() if start_line is not None)

    def busy_requests(self) -> list[tuple[object, tornado.httputil.RequestStartLine]]:
        """``(connection, request start line)`` for each connection serving a request."""
        return [(conn, line) for conn, line in self._busy.items() if line is not None]

    @property
    def open_connections(self) -> int:
        """Connections open right now, busy or idle."""
        return len(self._busy)

    def start_draining(self) -> None:
        """Stop accepting; from now on, each connection closes after its current request."""
        if self._draining:
            return
        self._draining = True
        self.stop()

    # -- HTTPServerConnectionDelegate ------------------------------------------

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        """Track the connection as busy; while draining, close a connection that
        finished its previous request instead of waiting for another.
        """
        # Tornado asks for the next request once the previous one is complete.
        known = server_conn in self._busy
        self._busy[server_conn] = None
        if known and self._draining:
            # The previous response said "Connection: close" (or went out before
            # the shutdown began); do not wait for another request.
            stream = getattr(server_conn, "stream", None)
            if stream is not None:
                stream.close()
        delegate = super().start_request(server_conn, request_conn)
        return _TrackedRequest(self, server_conn, delegate)

    def on_close(self, server_conn: object) -> None:
        """Forget the connection, then let ``HTTPServer`` do the same."""
        self._busy.pop(server_conn, None)
        super().on_close(server_conn)


@dataclass
class ShutdownReport:
    """What a shutdown did, for the final log line and for tests."""

    #: Requests in flight when the shutdown began.
    in_flight: int = 0
    #: Requests cancelled after the grace period (their clients got the 503).
    cancelled: int = 0
    #: One line per request still running at the end (method, URI, handler, age).
    abandoned: list[str] = field(default_factory=list)
    #: Seconds from the signal to the end of the shutdown.
    seconds: float = 0.0


def _describe(handler: CancelOnDisconnectMixin) -> str:
    request = handler.request
    return (
        f"{request.method} {request.uri} ({type(handler).__name__}, "
        f"running {request.request_time():.1f}s)"
    )


class GracefulShutdown:
    """Drain one process's servers on SIGTERM/SIGINT; see the module documentation.

    ::

        async def main():
            app = make_app()
            server = DrainingHTTPServer(app)
            server.listen(8888, "127.0.0.1")
            shutdown = GracefulShutdown([server], grace=10)
            shutdown.install_signal_handlers()
            await shutdown.wait()        # returns once the process may exit

    :param grace: seconds in-flight requests get to finish on their own.
    :param abandon_after: further seconds for requests that were not cancelled.
    :raises ValueError: for a negative duration; :raises TypeError: for a server
        that is not a :class:`DrainingHTTPServer` (both at construction).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        servers: Iterable[DrainingHTTPServer],
        *,
        grace: float = DEFAULT_GRACE,
        abandon_after: float = DEFAULT_ABANDON_AFTER,
    ) -> None:
        self.servers = list(servers)
        for server in self.servers:
            if not isinstance(server, DrainingHTTPServer):
                raise TypeError(
                    f"GracefulShutdown needs DrainingHTTPServer instances, not {server!r}"
                )
        for name, value in (("grace", grace), ("abandon_after", abandon_after)):
            if not value >= 0:  # also rejects nan
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        self.grace = float(grace)
        self.abandon_after = float(abandon_after)
        self._begun: Optional[asyncio.Future[None]] = None
        self._began_at = 0.0
        self._signals: list[signal.Signals] = []

    @property
    def started(self) -> bool:
        """True once the shutdown began."""
        return self._begun is not None and self._begun.done()

    def install_signal_handlers(
        self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Begin the shutdown on any of ``signals`` (call from the event loop's thread).

        A signal received while the shutdown is under way is ignored: a process
        manager may deliver SIGTERM to every process of a group *and* the parent
        may forward its own, and neither must cut the grace period short.
        """
        loop = asyncio.get_running_loop()
        for sig in signals:
            try:
                loop.add_signal_handler(sig, self.begin)
            except NotImplementedError:  # pragma: no cover - Windows event loops
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.begin))
            self._signals.append(sig)

    def begin(self) -> None:
        """Start the shutdown (what the signal does). Idempotent."""
        begun = self._future()
        if begun.done():
            return
        self._began_at = time.monotonic()
        for server in self.servers:
            server.start_draining()
        begun.set_result(None)

    async def wait(self) -> ShutdownReport:
        """Wait for the shutdown to begin, drain, and return what happened."""
        await self._future()
        try:
            return await self._drain()
        finally:
            self._remove_signal_handlers()

    async def shutdown(self) -> ShutdownReport:
        """Begin now and drain (for tests and for code that decides to stop by itself)."""
        self.begin()
        return await self.wait()

    # -- machinery -------------------------------------------------------------

    def _future(self) -> asyncio.Future[None]:
        if self._begun is None:
            self._begun = asyncio.get_running_loop().create_future()
        return self._begun

    def _busy(self) -> int:
        return sum(server.busy_connections for server in self.servers)

    def _pending(self) -> bool:
        return bool(self._busy() or running_requests())

    async def _wait_until_idle(self, deadline: float) -> bool:
        """Poll until nothing is in flight (True) or ``deadline`` passes (False).

        Polling at 20 ms costs nothing measurable and needs no hook in the
        request path beyond the busy flags.
        """
        while self._pending():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_SECONDS)
        return True

    async def _drain(self) -> ShutdownReport:
        report = ShutdownReport(
            in_flight=max(self._busy(), len(running_requests())),
        )
        gen_log.info(
            "Shutting down: stopped accepting, %d request(s) in flight, grace %.1fs",
            report.in_flight,
            self.grace,
        )
        if not await self._wait_until_idle(self._began_at + self.grace):
            report.cancelled = await self._cancel_the_rest()
        running = running_requests()
        report.abandoned = [_describe(handler) for handler in running]
        toolkit_connections = {handler.request.server_connection for handler in running}
        for server in self.servers:
            for conn, start_line in server.busy_requests():
                if conn not in toolkit_connections:
                    report.abandoned.append(
                        f"{start_line.method} {start_line.path} (not a toolkit handler)"
                    )
        for line in report.abandoned:
            gen_log.warning("Shutdown: abandoning %s", line)
        await self._close_connections()
        report.seconds = time.monotonic() - self._began_at
        gen_log.info(
            "Shutdown complete in %.2fs: %d in flight, %d cancelled, %d abandoned",
            report.seconds,
            report.in_flight,
            report.cancelled,
            len(report.abandoned),
        )
        return report

    async def _cancel_the_rest(self) -> int:
        """Cancel every running toolkit request, including ones that start meanwhile.

        Returns how many of them ended with the :data:`SHUTTING_DOWN` status. The
        others were not cancellable and either finished on their own or are abandoned.
        """
        told: list[CancelOnDisconnectMixin] = []
        deadline = time.monotonic() + self.abandon_after
        while True:
            for handler in running_requests():
                if handler not in told:
                    told.append(handler)
                    handler.cancel_request(SHUTTING_DOWN)
            if not self._pending() or time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL_SECONDS)
        return sum(
            1
            for h in told
            if tornado_internals.is_finished(h) and h.get_status() == SHUTTING_DOWN.status
        )

    async def _close_connections(self) -> None:
        for server in self.servers:
            try:
                await asyncio.wait_for(server.close_all_connections(), _CLOSE_TIMEOUT)
            except asyncio.TimeoutError:  # pragma: no cover - a connection that never closes
                gen_log.warning("Shutdown: connections still open after %.1fs", _CLOSE_TIMEOUT)

    def _remove_signal_handlers(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover
            return
        for sig in self._signals:
            try:
                loop.remove_signal_handler(sig)
            except NotImplementedError:  # pragma: no cover - Windows event loops
                signal.signal(sig, signal.SIG_DFL)
        self._signals.clear()
