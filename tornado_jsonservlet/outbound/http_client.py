"""Outbound HTTP that stops when its caller stops.

Enable it once, at startup::

    AsyncHTTPClient.configure("tornado_jsonservlet.outbound.CancellableHTTPClient")

Why it exists
-------------
Cancelling the future that Tornado's ``AsyncHTTPClient.fetch()`` returns does not
abort the request (Tornado issue #157, open since 2010). A handler cancelled because
its client left therefore leaves its upstream request running: the connection stays
open, the upstream service keeps working for nobody, and in a chain of services every
hop does. Worse, when the response or error finally arrives for the cancelled future,
Tornado logs ``Exception after Future was cancelled`` at ERROR.

What it does
------------
:class:`CancellableHTTPClient` is :class:`~tornado.simple_httpclient.SimpleAsyncHTTPClient`
(same options, errors, redirects, streaming callbacks) plus one rule: when the future
returned by ``fetch()`` is cancelled -- by a departed client cancelling the handler, a
deadline, ``asyncio.wait_for`` or ``asyncio.timeout`` -- the request is aborted:

* queued behind ``max_clients``: it leaves the queue and is never sent;
* resolving, connecting, or in flight: its sockets are closed at once, so the upstream
  sees its client leave (and, if it uses this toolkit, cancels its own work);
* its ``max_clients`` slot is freed, its timers are removed, its task ends, and
  nothing of it reaches a callback or a log afterwards.

While a request deadline is in force (:mod:`tornado_jsonservlet.context`), ``fetch()``
also caps ``request_timeout`` and ``connect_timeout`` at the time remaining and tells the
upstream how long it will wait, in milliseconds, in the deadline header
(``X-Envoy-Expected-Rq-Timeout-Ms`` unless the application chose another name).

How
---
``SimpleAsyncHTTPClient._connection_class()`` is the hook that creates the object
serving each request; this client's connection class can abort itself. Each
``fetch()`` gets a small record that links the caller's future to the queue entry or
connection serving it, and a done-callback on the future that aborts the request if
the future ends cancelled. The record is also the final callback handed to Tornado, so
a response that was already on its way when the caller gave up is dropped instead of
being set on a cancelled future (the path that logs at ERROR).

Tornado 6.6 closes a connection attempt or TLS handshake whose awaiting task is
cancelled. Tornado 6.4 and 6.5 do not, so this client also remembers the sockets each
request opens and closes a plain connection attempt itself. A TLS handshake under way
on those versions cannot be interrupted from outside: the request is still detached at
once (slot freed, nothing delivered), and its socket is closed when the handshake ends.

The curl-based client is not covered; see the README for why.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import math
import socket
import time
from typing import Any, Awaitable, Callable, Optional, Union

from tornado import gen
from tornado.concurrent import Future
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream
from tornado.netutil import Resolver
from tornado.simple_httpclient import HTTPTimeoutError, SimpleAsyncHTTPClient
from tornado.tcpclient import TCPClient

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.context import deadline_header, loop_time, request_deadline
from tornado_jsonservlet.production.request_id import REQUEST_ID_HEADER, current_request_id

# Seconds a fetch's capped timeout runs past the request deadline (see below).
_DEADLINE_BACKSTOP = 0.05

__all__ = ["CancellableHTTPClient"]

_CANCEL_CLOSES_HANDSHAKE = tornado_internals.CANCEL_CLOSES_HANDSHAKE


class _Fetch:
    """One ``fetch()`` call: the caller's future and whatever is serving it.

    Tornado calls it with the response (it is the final callback handed to
    ``fetch_impl``); it passes the response on only while the caller still waits.
    """

    __slots__ = (
        "aborted",
        "callback",
        "client",
        "connection",
        "deadline",
        "follow_up",
        "future",
        "key",
    )

    def __init__(self, client: CancellableHTTPClient, deadline: Optional[float]) -> None:
        self.client = client
        self.deadline = deadline  # absolute, on context.loop_time(); None for none
        self.callback: Optional[Callable[[HTTPResponse], None]] = None
        self.future: Optional[Future[HTTPResponse]] = None  # what the caller awaits
        self.key: object = None  # the queue key, while queued behind max_clients
        self.connection: Optional[_CancellableConnection] = None
        self.follow_up: Optional[_Fetch] = None  # the fetch that follows a redirect
        self.aborted = False

    def __call__(self, response: HTTPResponse) -> None:
        # The future is checked too, not only ``aborted``: between a cancel() and its
        # done-callback (which aborts), a response can still be delivered, and setting
        # it on the cancelled future is what logs at ERROR.
        future = self.future
        if self.aborted or self.callback is None or (future is not None and future.cancelled()):
            return  # the caller is gone: nobody to tell, nothing to log
        self.callback(response)

    def caller_done(self, future: Future[HTTPResponse]) -> None:
        if future.cancelled():
            self.client._abort(self)


def _relay_outcome(outer: Future[HTTPResponse], inner: Future[HTTPResponse]) -> None:
    """Hand Tornado's outcome to the caller's future, unless the caller left."""
    if outer.done():
        if not inner.cancelled():
            inner.exception()  # read: nobody else will, and nothing is lost
        return
    if inner.cancelled():
        outer.cancel()
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())  # type: ignore[arg-type]
    else:
        outer.set_result(inner.result())


def _end_abandoned(inner: Future[HTTPResponse], outer: Future[HTTPResponse]) -> None:
    """The caller cancelled: end Tornado's future too (the request was aborted)."""
    if outer.cancelled() and not inner.done():
        inner.set_exception(FetchAbandoned("The caller cancelled the request"))
        inner.exception()  # read here: a watcher may or may not read it


class FetchAbandoned(Exception):
    """How an aborted fetch ends for those who watch Tornado's own future."""


class _QuietResolver(Resolver):
    """Resolves through the client's resolver; an outcome nobody waits for stays quiet.

    Tornado 6.6 runs the lookup as a task under ``gen.with_timeout``. After an abort
    nobody reads that task's outcome, and a lookup that fails later would be reported
    as "Task exception was never retrieved". Reading it here, as it completes, changes
    nothing for a caller still waiting: the failure still reaches it.
    """

    def initialize(self, resolver: Resolver) -> None:
        self._resolver = resolver

    def close(self) -> None:
        pass  # the wrapped resolver belongs to the client, which closes it

    def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> Awaitable[list[tuple[int, Any]]]:
        lookup = gen.convert_yielded(self._resolver.resolve(host, port, family))
        lookup.add_done_callback(_read_outcome)
        return lookup


def _read_outcome(future: Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _ConnectAttempts(tornado_internals.StreamRecordingTCPClient):
    """The TCP client of one request: it remembers the sockets it opens.

    Tornado before 6.6 keeps a connection attempt going after the task awaiting it
    is cancelled, so an abort closes the attempts itself.
    """

    def __init__(self, resolver: Resolver) -> None:
        super().__init__(resolver=_QuietResolver(resolver))
        self.streams: list[IOStream] = []

    def stream_created(self, stream: IOStream) -> None:
        self.streams.append(stream)

    def handshaking(self) -> bool:
        """True while a TLS handshake is under way.

        ``start_tls`` hands the connected socket over to a new TLS stream and leaves
        the plain stream open without a socket.
        """
        return any(_socket_of(stream) is None and not stream.closed() for stream in self.streams)

    def close_attempts(self) -> None:
        """Close every plain socket this request opened."""
        for stream in self.streams:
            if _socket_of(stream) is not None:
                stream.close()
        self.streams.clear()


def _socket_of(stream: IOStream) -> Optional[socket.socket]:
    # Typed as always set, but ``start_tls`` and ``close`` leave it None.
    return stream.socket


class _CancellableConnection(tornado_internals.HTTPClientConnection):
    """Tornado's connection for one request, plus :meth:`abort`."""

    _task: Optional[asyncio.Task[Any]] = None
    _aborted = False

    def __init__(
        self,
        client: Optional[SimpleAsyncHTTPClient],
        request: HTTPRequest,
        release_callback: Callable[[], None],
        final_callback: Callable[[HTTPResponse], None],
        max_buffer_size: int,
        tcp_client: TCPClient,
        max_header_size: int,
        max_body_size: int,
    ) -> None:
        self._attempts = _ConnectAttempts(tcp_client.resolver)
        super().__init__(
            client,
            request,
            release_callback,
            final_callback,
            max_buffer_size,
            self._attempts,
            max_header_size,
            max_body_size,
        )
        if isinstance(final_callback, _Fetch):
            final_callback.connection = self

    async def run(self) -> None:
        # Tornado runs this coroutine as the request's own task; remember it so an
        # abort can stop whatever the request is waiting for (DNS, connect, TLS, a
        # body producer, the response).
        self._task = asyncio.current_task()
        if self._aborted:
            return
        try:
            await super().run()
        except (Exception, asyncio.CancelledError):
            if not self._aborted:
                raise
            # Aborted: the caller is gone, and so is anyone who could use this error.

    def abort(self) -> None:
        """Stop the request now: free its slot, close its sockets, end its task."""
        if self._aborted:
            return
        self._aborted = True
        final_callback: Optional[Callable[[HTTPResponse], None]] = self.final_callback
        if final_callback is None:
            return  # already answered, or handed over to a redirect's own fetch
        self.final_callback = None  # type: ignore[assignment]
        self._remove_timeout()
        self._release()
        stream: Optional[IOStream] = getattr(self, "stream", None)
        task = self._task
        if stream is not None:
            # In flight. Closing first fails the pending read with StreamClosedError,
            # which Tornado handles quietly; the cancel then ends a body producer.
            stream.close()
            if task is not None:
                task.cancel()
        elif task is not None and _CANCEL_CLOSES_HANDSHAKE:
            # Resolving, connecting or in a TLS handshake: Tornado 6.6 closes it all.
            task.cancel()
            self._attempts.close_attempts()
        elif task is not None:
            # Tornado < 6.6. Cancel first, so the connector stops trying other
            # addresses when the attempts fail, then close the attempts. A TLS
            # handshake cannot be interrupted: when it ends, Tornado sees that nobody
            # waits and closes the stream.
            if not self._attempts.handshaking():
                task.cancel()
            self._attempts.close_attempts()

    async def headers_received(self, first_line: Any, headers: HTTPHeaders) -> None:
        if not self._aborted:
            await super().headers_received(first_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        # No streaming_callback after an abort, even for bytes already buffered.
        return None if self._aborted else super().data_received(chunk)

    def finish(self) -> None:
        if self._aborted:
            return
        client = self.client
        if isinstance(client, CancellableHTTPClient) and isinstance(self.final_callback, _Fetch):
            # A redirect is followed with a new fetch() from inside finish(): tell the
            # client whose redirect it is, so aborting this request aborts that one.
            client._redirect_parent = self.final_callback
            try:
                super().finish()
            finally:
                client._redirect_parent = None
        else:
            super().finish()


class CancellableHTTPClient(tornado_internals.AbortableClient):
    """``SimpleAsyncHTTPClient`` whose requests abort when their future is cancelled.

    See the module documentation. Construct and configure it exactly like
    ``SimpleAsyncHTTPClient``; the usual way is one line at startup::

        AsyncHTTPClient.configure("tornado_jsonservlet.outbound.CancellableHTTPClient")

    .. versionadded:: 0.1
    """

    connection_type = _CancellableConnection

    # Hand-over slots between fetch() and the hooks it calls synchronously.
    _registering: Optional[_Fetch] = None
    _redirect_parent: Optional[_Fetch] = None

    def fetch(
        self,
        request: Union[str, HTTPRequest],
        raise_error: bool = True,
        **kwargs: Any,
    ) -> Future[HTTPResponse]:
        """``AsyncHTTPClient.fetch``; cancelling the returned future aborts the request.

        With a request deadline in the context, the timeouts are capped at the time
        left and the upstream is told it in the deadline header; the calling request's ID
        is sent as ``X-Request-ID``. The caller's ``HTTPRequest`` is never modified.
        """
        parent, self._redirect_parent = self._redirect_parent, None
        # A redirect keeps the deadline of the request it follows (it runs in some
        # other task's context); any other fetch takes the caller's.
        deadline = parent.deadline if parent is not None else request_deadline.get()
        if deadline is not None and not math.isfinite(deadline):
            deadline = None  # NaN or infinity: no deadline rather than a bogus one
        # A redirect copies the headers of the request it follows, request ID included.
        request_id = current_request_id() if parent is None else None
        if (deadline is not None or request_id is not None) and not (
            isinstance(request, HTTPRequest) and kwargs
        ):
            # (An HTTPRequest with kwargs is left to the base class, which refuses it.)
            request = self._for_this_request(request, kwargs, deadline, request_id)
            kwargs = {}
        record = _Fetch(self, deadline)
        self._registering = record
        try:
            inner = super().fetch(request, raise_error, **kwargs)
        finally:
            self._registering = None
        if record.callback is None:  # fetch_impl did not take it (a redirect step)
            return inner
        if parent is not None:
            parent.follow_up = record
        # The caller awaits its own future. Cancelling it aborts the request and
        # then ends Tornado's future with an exception instead of cancelling it:
        # whoever else watches that future (a tracing integration that wraps
        # fetch()) sees it end normally, once, rather than reading a cancelled
        # future's exception inside a done-callback.
        outer: Future[HTTPResponse] = inner.get_loop().create_future()
        record.future = outer
        inner.add_done_callback(functools.partial(_relay_outcome, outer))
        outer.add_done_callback(record.caller_done)
        outer.add_done_callback(functools.partial(_end_abandoned, inner))
        return outer

    def fetch_impl(self, request: HTTPRequest, callback: Callable[[HTTPResponse], None]) -> None:
        """Start the request, or fail it at once with a 599 timeout when its deadline
        has already passed (nothing is sent then).
        """
        record, self._registering = self._registering, None
        if record is None:  # called directly, not through fetch()
            record = _Fetch(self, None)
        record.callback = callback
        if record.deadline is not None and record.deadline <= loop_time():
            # Nothing is sent: the caller would not wait for the answer anyway.
            self.io_loop.add_callback(
                record,
                HTTPResponse(
                    request,
                    599,
                    error=HTTPTimeoutError("Timeout before sending: the request deadline passed"),
                    request_time=0.0,
                    start_time=time.time(),
                ),
            )
            return
        super().fetch_impl(request, record)
        if record.connection is None and self.waiting:
            # Queued behind max_clients: the newest key of ``waiting`` is this one.
            key = next(reversed(self.waiting))
            if self.waiting[key][1] is record:
                record.key = key

    def _abort(self, record: Optional[_Fetch]) -> None:
        """Abort a fetch whose caller cancelled it, and any redirect it led to."""
        while record is not None:
            record.aborted = True
            key = record.key
            if key is not None and key in self.waiting:
                request, callback, _ = self.waiting[key]
                self._remove_timeout(key)  # also forgets ``waiting[key]``
                self.queue.remove((key, request, callback))  # in the queue while waiting
            elif record.connection is not None:
                record.connection.abort()
            record = record.follow_up

    def _for_this_request(
        self,
        request: Union[str, HTTPRequest],
        kwargs: dict[str, Any],
        deadline: Optional[float],
        request_id: Optional[str],
    ) -> HTTPRequest:
        """A copy of ``request`` carrying what the calling request passes on: its ID
        (unless the caller set one) and its deadline."""
        if isinstance(request, HTTPRequest):
            request = copy.copy(request)
        else:
            request = HTTPRequest(url=request, **kwargs)
        request.headers = HTTPHeaders(request.headers)  # never change the caller's
        if request_id is not None and REQUEST_ID_HEADER not in request.headers:
            request.headers[REQUEST_ID_HEADER] = request_id
        if deadline is not None:
            self._bound_by_deadline(request, deadline)
        return request

    def _bound_by_deadline(self, request: HTTPRequest, deadline: float) -> None:
        """End ``request``'s timeouts by ``deadline`` and tell the upstream, in the header."""
        remaining = deadline - loop_time()
        if remaining <= 0:
            return  # fetch_impl answers with a timeout, sending nothing
        # The handler's own deadline fires at the deadline itself and cancels this
        # fetch cleanly; the capped timeout is only the backstop, just after it. (Two
        # timers for the same instant run in no guaranteed order, and a timeout that
        # won would surface in the handler as an error instead of a 504.)
        limit = remaining + _DEADLINE_BACKSTOP
        for name in ("request_timeout", "connect_timeout"):
            own = getattr(request, name)
            if own is None:
                own = self.defaults.get(name)
            # 0 or None means "no timeout" to Tornado: the deadline is then the limit.
            setattr(request, name, min(own, limit) if own else limit)
        waits = min(request.request_timeout or remaining, remaining)
        request.headers[deadline_header.get()] = str(max(1, int(waits * 1000)))
