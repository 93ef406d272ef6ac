"""Whether the client is still there: the one source of truth.

Tornado reports a departed client through ``RequestHandler.on_connection_close``,
and only while the handler is still working on the response. That hook is fragile
to build on:

* subclasses override it without calling ``super()`` (Tornado's own test handlers
  do), so a mixin that relies on its ``super()`` chain silently stops hearing about
  disconnects;
* a client that sends its request and resets the connection at once can be gone
  before Tornado registers the callback, which then never fires;
* a ``@stream_request_body`` handler whose client leaves mid-upload is abandoned
  by Tornado without ever being finished, so the request is never logged.

:class:`ClientConnectionMixin` closes those gaps without touching the subclass's
methods (applications introspect them): it registers its own close callbacks on
the connection, which record the disconnect and then call whatever
``on_connection_close`` the class has. The answer lives in the request's
:class:`~tornado_jsonservlet.core.scope.RequestScope`. Every
other part of the toolkit (safe output, cancellation) asks it rather than keeping
its own notion of "gone": two mixins with two flags disagree exactly when it
matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Callable, Optional

import tornado.httputil
import tornado.web
from tornado.iostream import IOStream
from tornado.log import app_log

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.scope import RequestScope, scope_of

__all__ = ["CLIENT_CLOSED_REQUEST", "ClientConnectionMixin", "abort_response", "completed"]

#: Status recorded for a request whose client left before the response was sent.
#: It is never sent (there is nobody to send it to); it exists for the access log
#: and metrics, following the nginx convention.
CLIENT_CLOSED_REQUEST = 499
CLIENT_CLOSED_REASON = "Client Closed Request"

# Tornado's own class, bound once: the base hook must be reached even where an
# application rebinds the name (as a test run that injects mixins does).
_TornadoRequestHandler = tornado.web.RequestHandler


def abort_response(handler: tornado.web.RequestHandler) -> None:
    """Close the connection without completing the response, then finish the request.

    For an error that happens after the headers went out: finishing normally would
    end a chunked body cleanly and hand the client a corrupt "success". A close
    leaves the response visibly truncated. The close is the server's decision, so
    it is not counted as a client disconnect.
    """
    scope_of(handler).closed_by_server = True
    stream = getattr(handler.request.connection, "stream", None)
    if stream is not None:
        stream.close()
    if not tornado_internals.is_finished(handler):
        handler.finish()


class ClientConnectionMixin(tornado_internals.RequestLifecycle):
    """Tracks whether the client left before the response was finished.

    A client counts as gone when, before ``finish()``:

    * the connection reports its close (FIN or RST while the handler works, or
      during a streamed upload), even if a subclass overrides
      ``on_connection_close`` without ``super()``;
    * the connection is already closed when the handler is created: nothing but
      the client can have closed it at that point;
    * a write fails with ``StreamClosedError`` (reported by the safe-output layer).

    A stream that Tornado closes itself, for instance on a Content-Length
    mismatch, is a server error and is *not* counted.

    While the client is connected this mixin changes nothing about the handler.
    It keeps ``TCP_NODELAY`` on for the connection, where Tornado turns it on and
    off around every response (see ``tornado_adapter.keep_nodelay``): the same
    bytes, without two system calls per response.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        application: tornado.web.Application,
        request: tornado.httputil.HTTPServerRequest,
        **kwargs: Any,
    ) -> None:
        super().__init__(application, request, **kwargs)
        # A client that sends its request and resets at once can close the stream
        # before Tornado registers its close callback; that callback then never
        # fires. Before the handler has written anything, only the client can have
        # closed the stream, so a closed stream here is a disconnect.
        stream = getattr(request.connection, "stream", None)
        # ``is True``: a test double's ``closed()`` returns a truthy mock.
        if stream is not None and stream.closed() is True:
            self._jsonservlet_client_left()
            return
        # Tornado toggles TCP_NODELAY twice per response; it stays on instead.
        tornado_internals.keep_nodelay(stream)
        # Tornado registered ``self.on_connection_close`` as the close callback;
        # ours records the disconnect first, whatever the subclass's hook does.
        set_close_callback = getattr(request.connection, "set_close_callback", None)
        if set_close_callback is not None:
            set_close_callback(self._jsonservlet_on_close)
        if stream is not None and tornado_internals.body_still_arriving(request):
            # While a streamed body is still arriving, Tornado reports a close only
            # by calling ``on_connection_close`` directly; the stream's own close
            # callback is free until the body is read (Tornado then takes it over).
            stream.set_close_callback(self._jsonservlet_on_close_during_upload)

    # -- public API ------------------------------------------------------------

    @property
    def client_disconnected(self) -> bool:
        """True once the client has gone away before the response was finished."""
        return scope_of(self).client_gone

    def wait_for_disconnect(self) -> asyncio.Future[None]:
        """Return an awaitable that completes when the client disconnects.

        It never completes if the request finishes first. Each call returns its own
        shielded view, so cancelling one waiter does not affect the others.
        """
        scope = scope_of(self)
        waiter = scope.disconnect_waiter
        if waiter is None:
            waiter = scope.disconnect_waiter = asyncio.get_running_loop().create_future()
            if scope.client_gone:
                waiter.set_result(None)
        return asyncio.shield(waiter)

    def add_disconnect_callback(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` once if, and only if, the client disconnects first.

        Registered after the disconnect, the callback runs at once; registered after
        the request finished normally, it never runs.
        """
        scope = scope_of(self)
        if scope.client_gone:
            _run_disconnect_callback(callback, args)
        elif not tornado_internals.is_finished(self):
            if scope.disconnect_callbacks is None:
                scope.disconnect_callbacks = []
            scope.disconnect_callbacks.append((callback, args))

    def on_disconnect(self) -> None:
        """Override to react when the client disconnects. Called at most once.

        Unlike ``on_connection_close``, it is also called for a client that was gone
        before the handler started, and for a write that found the stream closed.
        """

    def on_connection_close(self) -> None:
        """Record the disconnect, then call Tornado's hook (and any override above it).

        Detection does not depend on this method: a subclass that overrides it without
        calling ``super()`` still has its disconnects noticed.
        """
        self._jsonservlet_connection_closed()
        super().on_connection_close()

    @tornado_internals.covered_by_one_write
    def finish(self, chunk: Any = None) -> asyncio.Future[None]:
        """Tornado's ``finish``; for a departed client, the one way its request ends.

        Whoever ends such a request (the handler, Tornado's ``_execute``, the
        cancellation layer, a streamed upload abandoned mid-way) calls
        ``self.finish()``, so every ``finish`` override of the application runs,
        as when the client stays. Here, below those overrides, nothing is sent:
        the response is cleared and logged once with status 499.
        """
        scope = scope_of(self)
        if not scope.client_gone:
            if tornado_internals.is_finished(self) or not tornado_internals.body_still_arriving(
                self.request
            ):
                return super().finish(chunk)
            # An early answer (a 413 before the upload is read): Tornado closes the
            # connection once it is written, with the rest of the upload unread,
            # and the kernel then resets the connection. Keep it open long enough
            # to discard what is still coming, so the client gets the answer.
            drain = _InputDrain.take(self)
            try:
                sent = super().finish(chunk)
            except BaseException:
                if drain is not None:
                    drain.close()
                raise
            if drain is not None:
                sent.add_done_callback(drain.start)
            return sent
        if not tornado_internals.is_finished(self):
            self.clear()
            self.set_status(CLIENT_CLOSED_REQUEST, CLIENT_CLOSED_REASON)
            super().finish()
        return completed()

    # -- machinery (prefixed: the handler's namespace is the application's) -------

    def _jsonservlet_on_close(self) -> None:
        """The connection closed: record it, then run the class's hook and Tornado's.

        Tornado's own ``on_connection_close`` (it fails a pending streamed body) is
        idempotent, so running it after an override that already called ``super()``
        is harmless, and running it after one that did not is what keeps Tornado
        from waiting forever for that body.
        """
        if tornado_internals.is_finished(self):
            return
        self._jsonservlet_connection_closed()
        self.on_connection_close()
        _TornadoRequestHandler.on_connection_close(self)

    def _jsonservlet_on_close_during_upload(self) -> None:
        """The stream closed while a streamed body was arriving.

        Tornado also calls the class's ``on_connection_close`` in that case, so it is
        not called again here; Tornado's own hook is, so that the body future fails
        even when the override skips ``super()``.
        """
        if tornado_internals.is_finished(self):
            return
        self._jsonservlet_connection_closed()
        _TornadoRequestHandler.on_connection_close(self)

    def _jsonservlet_connection_closed(self) -> None:
        """Tornado reported the connection closed while the handler was working."""
        self._jsonservlet_client_left()

    def _jsonservlet_completed(self) -> None:
        super()._jsonservlet_completed()
        # Tornado abandons a streamed upload whose client leaves: ``_execute``
        # returns without finishing, so nothing would log the request. It is
        # finished here, in the request's own task and context, where tracing
        # integrations attached theirs (finishing from the close callback made
        # them fail to detach it).
        scope: RequestScope = self._tornado_jsonservlet_scope or scope_of(self)
        if scope.client_gone and not tornado_internals.is_finished(self):
            self.finish()

    def _jsonservlet_client_left(self) -> None:
        """Record the disconnect. Idempotent; ignored once the request finished."""
        scope: RequestScope = self._tornado_jsonservlet_scope or scope_of(self)
        if scope.client_gone or scope.closed_by_server or tornado_internals.is_finished(self):
            return
        scope.client_gone = True
        if scope.disconnect_waiter is not None and not scope.disconnect_waiter.done():
            scope.disconnect_waiter.set_result(None)
        self._jsonservlet_on_client_left(scope)

    def _jsonservlet_on_client_left(self, scope: RequestScope) -> None:
        """Extension point for other mixins; runs once, right after the flag is set."""
        try:
            self.on_disconnect()
        except Exception:
            app_log.error("Exception in on_disconnect of %r", self, exc_info=True)
        callbacks, scope.disconnect_callbacks = scope.disconnect_callbacks, None
        for callback, args in callbacks or ():
            _run_disconnect_callback(callback, args)


#: How much of an unread upload is discarded, at most, after an early answer
#: before the connection is closed anyway (the client then sees a reset).
DISCARD_MAX_BYTES = 8 * 1024 * 1024
#: ... and for how long at most, whatever the client's pace.
DISCARD_MAX_SECONDS = 5.0


# The drains in progress; a drain lasts at most DISCARD_MAX_SECONDS.
_open_drains: set[_InputDrain] = set()


def discarding_connections() -> int:
    """How many connections are discarding the rest of an upload after an early answer."""
    _close_drains_of_closed_loops()
    return len(_open_drains)


def _close_drains_of_closed_loops() -> None:
    """A drain whose event loop was closed before it ended (a test's loop, an
    application's second loop) would never end: its socket is closed here instead."""
    for drain in [drain for drain in _open_drains if drain.loop.is_closed()]:
        drain.close()


class _InputDrain:
    """Discards the rest of an upload after an early answer, then closes.

    Closing a socket whose receive buffer holds unread data makes the kernel
    send a reset instead of a FIN; a client still sending its body then gets
    "connection reset" from ``send`` and, in most HTTP clients, never reads the
    answer that is waiting for it. nginx's *lingering close* is the model: send
    the answer, close the sending half, read and drop what the client still
    sends, for a bounded time and size, then close.

    It works beside Tornado, not inside it: a duplicate of the socket's
    descriptor keeps the connection open when Tornado closes its own (right
    after the answer is written), and the discarding happens on the duplicate.
    """

    __slots__ = ("discarded", "loop", "sock", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.discarded = 0
        self.timer: Optional[asyncio.TimerHandle] = None
        _close_drains_of_closed_loops()
        _open_drains.add(self)

    @classmethod
    def take(cls, handler: tornado.web.RequestHandler) -> Optional[_InputDrain]:
        stream = getattr(handler.request.connection, "stream", None)
        # A plain TCP stream only: under TLS the discarded bytes are records,
        # and the close needs the TLS layer's own goodbye.
        if type(stream) is not IOStream or stream.closed():
            return None
        try:
            duplicate = stream.socket.dup()
            duplicate.setblocking(False)
        except OSError:
            return None
        return cls(duplicate)

    def start(self, sent: asyncio.Future[None]) -> None:
        """The answer was handed to the kernel (or failed): close our half, then discard."""
        if sent.cancelled() or sent.exception() is not None:
            self.close()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)  # a FIN after the answer
            self.loop.add_reader(self.sock.fileno(), self._discard)
        except (OSError, ValueError):
            self.close()
            return
        self.timer = self.loop.call_later(DISCARD_MAX_SECONDS, self.close)

    def _discard(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.discarded += len(data)
        if not data or self.discarded >= DISCARD_MAX_BYTES:
            self.close()

    def close(self) -> None:
        _open_drains.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock.fileno() >= 0:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


def completed() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def _run_disconnect_callback(callback: Callable[..., object], args: tuple[Any, ...]) -> None:
    try:
        callback(*args)
    except Exception:
        app_log.error("Exception in disconnect callback %r", callback, exc_info=True)
