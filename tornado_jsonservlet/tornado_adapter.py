"""The one module that touches Tornado's private API (and asyncio's, once).

Checked on Tornado 6.4.x, 6.5.x and 6.6.x; ``setup.cfg`` bounds Tornado below the
next minor, and CI runs the suite against a newer pre-release whenever the
package index has one, so a break shows up here first, in one file, rather than
in production in a module nobody thinks of as Tornado-specific.

Everything else in the toolkit uses Tornado's public API or this module. What
it wraps, and why each is needed:

* ``RequestHandler._execute`` is the coroutine Tornado runs as the request's
  task (same signature on 6.4-6.6): the one place a cancellation can be
  absorbed and a request-wide context set. :class:`RequestLifecycle` overrides it
  once, around the hooks the toolkit's mixins chain through
  (``_jsonservlet_enter``, ``_completed``, ``_absorb``, ``_exit``).
* ``RequestHandler._log`` writes the access line: :class:`RequestLifecycle`
  overrides it once and calls :meth:`RequestLifecycle._jsonservlet_log`.
* ``RequestHandler._handle_request_exception`` reports an exception the request
  raised to ``log_exception`` and ``send_error``: overridden once, it calls
  :meth:`RequestLifecycle._jsonservlet_handle_exception`.
* ``_finished``, ``_headers_written``, ``_request_summary()``, ``_reason``,
  ``_headers`` and the response buffer: read through small functions below.
* What ``finish()`` does for a small response nothing was written to yet
  (``_status_code``, ``_reason``, ``_headers``, ``_write_buffer``, ``_transforms``,
  ``_new_cookie``, ``_headers_written``, ``_finished``, ``_log()``,
  ``_break_cycles()``): :func:`send_in_one_write`, for classes that override nothing
  on that path (:func:`finishes_in_one_write`).
* ``_has_stream_request_body``, ``request._body_future`` and ``_prepared_future``:
  a streamed upload whose client leaves, or that is answered early; and a class
  that streams only the requests that have a body (``_stream_request_body`` read
  per request, ``HTTP1Connection._read_finished``).
* ``HTTPHeaders``' fields (``_as_list`` and ``_combined_cache`` on 6.6; ``_dict``,
  ``_as_list`` and ``_last_key`` on 6.4 and 6.5): the default response headers are
  filled in directly (:func:`default_headers`), only where the result is, attribute
  for attribute, what the constructor builds; ``has_no_body`` reads ``_as_list``.
* ``PathMatches._find_groups()``: what tracing tools read to name a route.
* ``SimpleAsyncHTTPClient._connection_class()``, ``_HTTPConnection`` and
  ``TCPClient._create_stream()``: an outbound request that can be aborted.
* ``HTTP1Connection._finish_request``, which turns Nagle's algorithm back on after
  every response: a connection the toolkit serves keeps ``TCP_NODELAY`` on instead
  (:func:`keep_nodelay` gives its stream its own ``set_nodelay``).
* ``BaseIOStream._total_write_done_index``: how many bytes of a response the
  kernel has taken, so that a write that makes no progress (a client that
  stopped reading) can be told from a slow one.
* ``TCPServer._sockets``, ``_handlers`` and ``_handle_connection``: what
  ``add_sockets`` fills, to accept with a handler that backs off when the
  process runs out of file descriptors (Tornado's retries on every loop turn).
* asyncio's ``Task._fut_waiter`` (present in the C and Python tasks of every
  supported Python): which future a suspended task awaits, so that one request's
  cancellation does not cancel work other requests await too.
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import operator
import socket
import struct
import sys
import threading
import weakref
from collections.abc import Awaitable
from typing import Any, Callable, Optional, TypeVar

import tornado
import tornado.httputil
import tornado.web
from tornado.concurrent import Future
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream
from tornado.routing import PathMatches
from tornado.simple_httpclient import SimpleAsyncHTTPClient, _HTTPConnection
from tornado.tcpclient import TCPClient

__all__ = [
    "CANCEL_ANSWERS_500",
    "CANCEL_CLOSES_HANDSHAKE",
    "FINISH_PATH_METHODS",
    "TESTED_TORNADO",
    "TORNADO",
    "AbortableClient",
    "EagerlyStartedRequest",
    "HTTPClientConnection",
    "RequestLifecycle",
    "StreamRecordingTCPClient",
    "TemplatePathMatches",
    "adopt_transforms",
    "awaited_future",
    "body_still_arriving",
    "bytes_written",
    "covered_by_one_write",
    "default_headers",
    "finishes_in_one_write",
    "has_no_body",
    "headers_sent",
    "is_finished",
    "keep_nodelay",
    "nothing_written",
    "reason_phrase",
    "release_prepare_waiters",
    "request_summary",
    "reset_response",
    "response_headers",
    "route_info",
    "route_without_body",
    "send_in_one_write",
    "stream_request_body_when_sent",
    "streams_only_sent_bodies",
    "transforms_of",
]

TORNADO = tornado.version_info
#: The minors this module was checked on.
TESTED_TORNADO = ((6, 4), (6, 5), (6, 6))
#: Tornado 6.6 answers a cancelled ``_execute`` with ``send_error(500)``; 6.4/6.5
#: let the ``CancelledError`` escape.
CANCEL_ANSWERS_500 = TORNADO >= (6, 6)
#: Tornado 6.6 closes the sockets of a connection attempt or TLS handshake when the
#: task awaiting it is cancelled; earlier versions leave them open until they finish.
CANCEL_CLOSES_HANDSHAKE = TORNADO >= (6, 6)

Handler = tornado.web.RequestHandler
_F = TypeVar("_F", bound=Callable[..., Any])

if sys.platform == "linux":
    import fcntl
    import termios

    _TIOCOUTQ: Optional[int] = termios.TIOCOUTQ
else:  # pragma: no cover - the kernel's queue is not looked at elsewhere
    _TIOCOUTQ = None


# -- the request's lifecycle ------------------------------------------------------


class RequestLifecycle(tornado.web.RequestHandler):
    """The toolkit's only overrides of ``RequestHandler``'s private methods.

    Mixins that need the request's task or its access line override the hooks
    and call ``super()``; the hooks' names are prefixed so that no application
    method collides with them. The task's hooks are plain methods around one
    coroutine: each layer costs a call, not a coroutine of its own, on every
    request.
    """

    #: The request's scope (``core.scope.SCOPE_ATTRIBUTE``), None on the class: read
    #: on a handler before its scope exists, it is found here, never in an
    #: application's ``__getattr__``.
    _tornado_jsonservlet_scope: Any = None

    async def _execute(
        self, transforms: list[tornado.web.OutputTransform], *args: bytes, **kwargs: bytes
    ) -> None:
        try:
            if self._jsonservlet_enter(transforms):
                await super()._execute(transforms, *args, **kwargs)
                self._jsonservlet_completed()
        except asyncio.CancelledError:
            if not self._jsonservlet_absorb():
                raise
        finally:
            self._jsonservlet_exit()

    def _log(self) -> None:
        self._jsonservlet_log(super()._log)

    def _jsonservlet_enter(self, transforms: list[tornado.web.OutputTransform]) -> bool:
        """The request's task starts; False: it ended already, do not run it.

        Runs in the task, in its own copy of the context, before ``prepare()``.
        """
        return True

    def _jsonservlet_completed(self) -> None:
        """Tornado's ``_execute`` returned (the request ran without escaping
        exception; it may still be unfinished, a streamed upload abandoned, say)."""

    def _jsonservlet_absorb(self) -> bool:
        """The task was cancelled; True if the cancellation was the toolkit's and the
        request has been ended for it, False to let the ``CancelledError`` go on."""
        return False

    def _jsonservlet_exit(self) -> None:
        """The request's task ends, however it ends (also after ``enter`` said False)."""

    def _jsonservlet_log(self, write_access_line: Callable[[], None]) -> None:
        """Write the request's access line (Tornado's ``log_request``)."""
        write_access_line()

    def _handle_request_exception(self, e: BaseException) -> None:
        self._jsonservlet_handle_exception(e, super()._handle_request_exception)

    def _jsonservlet_handle_exception(
        self, error: BaseException, handle: Callable[[BaseException], None]
    ) -> None:
        """Tornado's handling of an exception the request raised: ``log_exception``
        with ``sys.exc_info()``, then ``send_error``. Call ``handle`` while the
        exception to report is the one being handled."""
        handle(error)


# Task(..., eager_start=True) exists from Python 3.12.
_EAGER_TASKS = sys.version_info >= (3, 12)


class EagerlyStartedRequest(RequestLifecycle):
    """A request whose task starts at once, when Tornado hands it over (Python 3.12+).

    Tornado wraps ``_execute`` in a new task whose first step waits for the next
    turn of the event loop; the connection meanwhile waits for the response on
    another turn. A request that needs no I/O of its own (a small JSON answer)
    costs two extra turns that way. Started eagerly, the task runs until its first
    real suspension inside Tornado's call, which is where a request without a body
    then ends. It is still its own task, in its own copy of the context, with the
    same exceptions and cancellation; only the start is earlier. An application
    that installed a task factory keeps it: the task is then made the usual way.
    """

    def _execute(  # type: ignore[override]
        self, transforms: list[tornado.web.OutputTransform], *args: bytes, **kwargs: bytes
    ) -> Awaitable[None]:
        request = super()._execute(transforms, *args, **kwargs)
        if not _EAGER_TASKS:
            return request
        loop = asyncio.get_running_loop()
        if loop.get_task_factory() is not None:
            return loop.create_task(request)
        return asyncio.Task(request, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]


def adopt_transforms(handler: Handler, transforms: list[tornado.web.OutputTransform]) -> None:
    """Let ``handler`` finish before Tornado's ``_execute`` ran (it sets them there)."""
    handler._transforms = transforms


def transforms_of(handler: Handler) -> Optional[list[tornado.web.OutputTransform]]:
    return getattr(handler, "_transforms", None)


def release_prepare_waiters(handler: Handler) -> None:
    """Release a streamed-body reader waiting for ``prepare()`` that will never run."""
    prepared: Optional[asyncio.Future[None]] = getattr(handler, "_prepared_future", None)
    if prepared is not None and not prepared.done():
        prepared.set_result(None)


# -- response state ---------------------------------------------------------------


def bytes_written(stream: Any) -> Optional[int]:
    """Bytes of ``stream``'s output the peer has taken so far, as far as can be told.

    Progress, not time, tells a slow reader from one that stopped. Tornado's count
    of bytes handed to the kernel moves only when the kernel's send buffer has
    room again, which with a multi-megabyte buffer can take many seconds of a
    client that *is* reading; on Linux the bytes still queued in the kernel
    (``TIOCOUTQ``: sent but not acknowledged, or not sent) are subtracted, so
    the count moves with every acknowledgement. None for a stream without the
    count (a test double).
    """
    count = getattr(stream, "_total_write_done_index", None)
    if not isinstance(count, int):
        return None
    return count - _queued_in_kernel(stream)


def _queued_in_kernel(stream: Any) -> int:
    if _TIOCOUTQ is None:
        return 0
    sock = getattr(stream, "socket", None)
    try:
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return 0
        queued = fcntl.ioctl(fd, _TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", queued)[0])


def is_finished(handler: Handler) -> bool:
    return handler._finished


def headers_sent(handler: Handler) -> bool:
    return handler._headers_written


def request_summary(handler: Handler) -> str:
    """``"GET /path (127.0.0.1)"``, as Tornado's log lines say it."""
    return handler._request_summary()


def reason_phrase(handler: Handler) -> str:
    """The reason phrase set with the status (``set_status(code, reason)``)."""
    return handler._reason


def response_headers(handler: Handler) -> tornado.httputil.HTTPHeaders:
    """The response headers as they stand (not yet sent, or sent)."""
    return handler._headers


# -- default response headers ---------------------------------------------------------

_HTTPHeaders = tornado.httputil.HTTPHeaders
_blank_headers = _HTTPHeaders.__new__


def _fill_headers_6_6(server: str, content_type: str, date: str) -> tornado.httputil.HTTPHeaders:
    # Tornado 6.6: the field lines by name, and the combined values.
    headers = _blank_headers(_HTTPHeaders)
    headers._as_list = {"Server": [server], "Content-Type": [content_type], "Date": [date]}
    headers._combined_cache = {"Server": server, "Content-Type": content_type, "Date": date}  # type: ignore[attr-defined,unused-ignore]
    return headers


def _fill_headers_6_4(server: str, content_type: str, date: str) -> tornado.httputil.HTTPHeaders:
    # Tornado 6.4 and 6.5: the combined values, the field lines, the last name added.
    headers = _blank_headers(_HTTPHeaders)
    headers._dict = {"Server": server, "Content-Type": content_type, "Date": date}  # type: ignore[attr-defined,unused-ignore]
    headers._as_list = {"Server": [server], "Content-Type": [content_type], "Date": [date]}
    headers._last_key = None  # type: ignore[attr-defined,unused-ignore]
    return headers


def _build_headers(server: str, content_type: str, date: str) -> tornado.httputil.HTTPHeaders:
    return _HTTPHeaders({"Server": server, "Content-Type": content_type, "Date": date})


def _choose_headers_filler() -> Callable[[str, str, str], tornado.httputil.HTTPHeaders]:
    """The filler whose result is, attribute for attribute, what Tornado's
    constructor builds; the constructor itself on a Tornado with another layout."""
    sample = ("TornadoServer/x", "text/html; charset=UTF-8", "Thu, 01 Jan 1970 00:00:00 GMT")
    built = vars(_build_headers(*sample))
    for filler in (_fill_headers_6_6, _fill_headers_6_4):
        try:
            if vars(filler(*sample)) == built:
                return filler
        except Exception:  # a class that refuses these attributes: not this layout
            continue
    return _build_headers


#: ``HTTPHeaders({"Server": ..., "Content-Type": ..., "Date": ...})``, about four
#: times faster: ``RequestHandler.clear()`` builds these on every request.
default_headers = _choose_headers_filler()


def reset_response(handler: Handler, headers: tornado.httputil.HTTPHeaders) -> None:
    """What ``RequestHandler.clear()`` does, with ``headers`` as the defaults."""
    handler._headers = headers
    handler.set_default_headers()
    handler._write_buffer = []
    handler._status_code = 200
    handler._reason = "OK"


# -- a whole response in one write -------------------------------------------------

#: The handler methods ``RequestHandler.finish(body)`` calls on its way for a response
#: that nothing was written to yet: an override of any of them must run.
FINISH_PATH_METHODS = (
    "write",
    "flush",
    "finish",
    "set_status",
    "set_header",
    "compute_etag",
    "set_etag_header",
    "check_etag_header",
)
# Tornado's own functions, as imported. One patched in (an instrumentation or an
# application wrapping RequestHandler.finish, say) is not Tornado's, and must run,
# also below the toolkit's overrides, whose super() calls reach it.
_TORNADO_FINISH_PATH = {name: Handler.__dict__[name] for name in FINISH_PATH_METHODS}
# The toolkit's overrides that the caller of send_in_one_write reproduces, by
# identity: a wrapper (functools.wraps copies attributes) or a mock is not one.
_covered: set[Any] = set()


class _FinishPath:
    """Where a class's :data:`FINISH_PATH_METHODS` are defined along its MRO, as read.

    Checked on every small response, so the check is a few calls into C: one
    ``attrgetter`` for what the names resolve to on the class, and one ``itemgetter``
    per base holding a definition further down.
    """

    __slots__ = ("below", "definitions", "resolved")

    _resolve = operator.attrgetter(*FINISH_PATH_METHODS)

    def __init__(self, cls: type) -> None:
        #: (name, function) of every definition along the MRO
        self.definitions: list[tuple[str, Any]] = []
        below: dict[type, list[str]] = {}
        for name in FINISH_PATH_METHODS:
            first = True
            for klass in cls.__mro__:
                if name in klass.__dict__:
                    self.definitions.append((name, klass.__dict__[name]))
                    if not first:
                        below.setdefault(klass, []).append(name)
                    first = False
        self.resolved = self._resolve(cls)
        #: (the base's namespace, a getter of its definitions below the first, what it got)
        self.below: tuple[tuple[Any, Callable[[Any], Any], Any], ...] = tuple(
            (klass.__dict__, getter, getter(klass.__dict__))
            for klass, names in below.items()
            for getter in [operator.itemgetter(*names)]
        )

    def all_covered(self) -> bool:
        return all(
            function in _covered or function is _TORNADO_FINISH_PATH.get(name)
            for name, function in self.definitions
        )

    def unchanged(self, cls: type) -> bool:
        """No definition replaced since, and none added in front of them."""
        if self._resolve(cls) != self.resolved:
            return False
        for namespace, get, found in self.below:  # noqa: SIM110 (all() adds a generator)
            if get(namespace) != found:
                return False
        return True


# Per class: its finish path when every definition on it was Tornado's own or
# covered, else None (read at first use; read again when a definition changed).
_finish_paths: dict[type, Optional[_FinishPath]] = {}


def covered_by_one_write(method: _F) -> _F:
    """Mark a toolkit override of a :data:`FINISH_PATH_METHODS` method whose effect
    :func:`send_in_one_write`'s caller reproduces, for a response nothing was written
    to yet. Whoever changes a marked method changes that caller too."""
    _covered.add(method)
    return method


def finishes_in_one_write(cls: type[Handler]) -> bool:
    """Whether every definition of a method on ``finish()``'s path, anywhere in the
    class's MRO (``RequestHandler`` included), is Tornado's own or a covered one, so
    that skipping the calls changes nothing.

    The MRO is read at the class's first small response; every later call checks
    that none of those definitions was replaced and that none was added in front of
    them, so a wrapper or a mock patched in at any time is seen. (One added between
    two definitions, on a base that had none, would not be.) A class found not
    covered keeps ``finish()``'s path for good, which is always safe.
    """
    try:
        path = _finish_paths[cls]
    except KeyError:
        path = _read_finish_path(cls)
    else:
        if path is not None and not path.unchanged(cls):
            path = _read_finish_path(cls)
    return path is not None


def _read_finish_path(cls: type) -> Optional[_FinishPath]:
    path: Optional[_FinishPath] = _FinishPath(cls)
    if path is not None and not path.all_covered():
        path = None
    _finish_paths[cls] = path
    return path


def nothing_written(handler: Handler) -> bool:
    """Whether ``finish(body)`` would send the status, the headers and ``body`` in
    one write, with nothing to add: not finished, no header sent, nothing buffered,
    no output transform (gzip), no cookie set, no ``Content-Length`` set by hand,
    and the connection's stream still open (a closed one fails the write, and
    ``finish()``'s path has the layers that make that a disconnect)."""
    stream = getattr(handler.request.connection, "stream", None)
    return (
        stream is not None
        and not stream.closed()
        and not handler._finished
        and not handler._headers_written
        and not handler._write_buffer
        and not handler._transforms
        and not hasattr(handler, "_new_cookie")
        and "Content-Length" not in handler._headers
    )


def send_in_one_write(
    handler: Handler,
    status: int,
    content_type: str,
    body: bytes,
    relay: Callable[[Future[None]], Future[None]],
) -> Future[None]:
    """``set_status(status)``, the ``Content-Type``, then what ``finish(body)`` does
    for a response :func:`nothing_written` to, with no ETag to compute: the headers
    and the body in one write, the access line, ``on_finish()``.

    ``relay`` gets the write's future at once, where ``flush()`` would return it:
    before the request is finished (a failed write is then still a disconnect of
    this request). Its result is returned, as ``finish()`` returns ``flush()``'s.
    Call it for a class that :func:`finishes_in_one_write`, and not for HEAD or a
    status without a body (1xx, 204, 304).
    """
    reason = http.client.responses.get(status, "Unknown")  # as set_status() says it
    handler._status_code = status
    handler._reason = reason
    headers = handler._headers
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    connection = handler.request.connection
    assert connection is not None
    # As finish() does: the closed connection no longer calls this handler.
    connection.set_close_callback(None)  # type: ignore[attr-defined]
    handler._headers_written = True
    sent = relay(
        connection.write_headers(
            tornado.httputil.ResponseStartLine("", status, reason), headers, body
        )
    )
    connection.finish()
    handler._log()
    handler._finished = True
    handler.on_finish()
    handler._break_cycles()
    return sent


# -- routing ------------------------------------------------------------------------


class TemplatePathMatches(PathMatches):
    """A ``PathMatches`` that reports its route template to tools that read it.

    Tracing integrations (OpenTelemetry's Tornado instrumentation) name a span
    after ``matcher._find_groups()``: the regex as a ``%s`` format and its group
    count, filled with the handler method's parameter names. A servlet's methods
    take ``*args, **kwargs``, which garbles the name (``/users/{args}/{kwargs}``).
    A template given here is reported as it is, with no group to fill:
    ``/users/{user_id}/items/{item}``. Tornado's own ``reverse`` reads the same
    answer, so a subclass that sets a template must override ``reverse``.
    """

    route_template: Optional[str] = None
    #: True when the route's handler class streams only requests that have a body
    #: (:func:`stream_request_body_when_sent`): the match tells it which.
    routes_by_body = False
    #: What the route tells the handler it leads to (a servlet's route), or None:
    #: left on the matched request for :func:`route_info`. Through the request
    #: rather than the rule's handler kwargs, which Tornado would otherwise pass
    #: down every ``__init__`` of the handler's classes and into ``initialize()``.
    route_info: Any = None

    def match(self, request: tornado.httputil.HTTPServerRequest) -> Optional[dict[str, Any]]:
        found = super().match(request)
        if found is not None:
            if self.routes_by_body:
                route_without_body(request)
            if self.route_info is not None:
                setattr(request, _ROUTE_INFO, self.route_info)
        return found

    def _find_groups(self) -> tuple[Optional[str], Optional[int]]:
        if self.route_template is not None:
            return self.route_template, 0
        return super()._find_groups()


_ROUTE_INFO = "_tornado_jsonservlet_route"


def route_info(request: tornado.httputil.HTTPServerRequest) -> Any:
    """What the :class:`TemplatePathMatches` that matched ``request`` tells its
    handler (its ``route_info``), or None."""
    return getattr(request, _ROUTE_INFO, None)


# -- streamed uploads ---------------------------------------------------------------


# The request whose headers were just routed, when it has no body and its route
# leads to a class decorated with stream_request_body_when_sent, with the thread
# that routed it. Set by the route's matcher, read (and cleared) by that class's
# ``_stream_request_body`` when Tornado's _HandlerDelegate asks, a few calls later
# in the same synchronous call. A global rather than a ContextVar: two context
# changes per request cost more than the rest of the decision. Another thread's
# entry (two event loops in two threads) is not this request's: the read then
# answers "stream", which is safe (see below).
_routed_without_body: Optional[tuple[int, tornado.httputil.HTTPServerRequest]] = None


def has_no_body(headers: tornado.httputil.HTTPHeaders) -> bool:
    """Whether a request with these headers has no body, by HTTP/1.1's framing rules:
    no ``Transfer-Encoding`` and a ``Content-Length`` that is absent or exactly 0.
    Anything else (including a malformed length, which Tornado answers with 400)
    counts as a body."""
    # The names are looked up as Tornado stores them (normalized), which skips the
    # normalization of HTTPHeaders.__contains__; and membership first, since
    # HTTPHeaders.get raises and catches a KeyError when absent.
    names = headers._as_list if _HEADERS_LIST_BY_NAME else headers
    return "Transfer-Encoding" not in names and (
        "Content-Length" not in names or headers["Content-Length"] == "0"
    )


# Every supported Tornado keeps a header's field lines in ``_as_list``, by
# normalized name; checked here rather than trusted.
_HEADERS_LIST_BY_NAME = (
    isinstance(getattr(_HTTPHeaders({"Content-Length": "0"}), "_as_list", None), dict)
    and "Content-Length" in _HTTPHeaders({"content-length": "0"})._as_list
)


class _ReceivedBody:
    """The ``request._body_future`` of a request that has no body: already done.

    Tornado awaits it (``_execute``) and asks whether it is done
    (``on_connection_close``); a request without a body needs no future of its own
    for either, so one shared instance answers for all.
    """

    __slots__ = ()

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def result(self) -> None:
        return None

    def exception(self) -> None:
        return None

    def __await__(self) -> Any:
        return iter(())


_RECEIVED_BODY = _ReceivedBody()


class _StreamsUnlessRoutedWithoutBody:
    """``_stream_request_body`` of a :func:`stream_request_body_when_sent` class.

    Tornado reads the flag from the class, not the handler: once in
    ``_HandlerDelegate.__init__`` to choose how the request is read, and again in the
    handler. Only the first decides; it comes right after the route's matcher has
    looked at this request's headers (:func:`route_without_body`). Any other read
    answers True, which is safe for a request routed without a body too: its
    ``_body_future`` is already resolved, so the handler does not wait on it.
    """

    def __get__(self, instance: object, owner: type) -> bool:
        global _routed_without_body
        routed = _routed_without_body
        if routed is None:
            return True
        _routed_without_body = None
        thread, request = routed
        if thread != threading.get_ident():
            return True
        # A request this matcher saw on an earlier turn of the connection (whose
        # delegate never asked) has been read to the end: it says nothing now.
        return getattr(request.connection, "_read_finished", True) is not False


def stream_request_body_when_sent(cls: type[Handler]) -> type[Handler]:
    """``@tornado.web.stream_request_body``, for requests that have a body.

    A request without one (most GETs) is read the way Tornado reads it for any
    handler, which saves two trips round the event loop: with streaming, Tornado's
    connection waits for ``prepare()`` before reading the (empty) body, and the
    handler then waits for the body to be read. The handler sees the same request
    either way. Applies to requests routed by a matcher that calls
    :func:`route_without_body`; any other request streams.
    """
    cls._stream_request_body = _StreamsUnlessRoutedWithoutBody()  # type: ignore[assignment]
    return cls


def streams_only_sent_bodies(cls: object) -> bool:
    """Whether ``cls`` is decorated with :func:`stream_request_body_when_sent`."""
    return isinstance(
        inspect.getattr_static(cls, "_stream_request_body", None), _StreamsUnlessRoutedWithoutBody
    )


def route_without_body(request: tornado.httputil.HTTPServerRequest) -> None:
    """Called by a matcher that routes ``request`` to a
    :func:`stream_request_body_when_sent` class: if it has no body, it is not streamed."""
    global _routed_without_body
    if has_no_body(request.headers):
        request._body_future = _RECEIVED_BODY  # type: ignore[attr-defined,assignment,unused-ignore]
        _routed_without_body = (threading.get_ident(), request)


def body_still_arriving(request: tornado.httputil.HTTPServerRequest) -> bool:
    """Whether a streamed request body is still being received."""
    body: Any = getattr(request, "_body_future", None)
    return body is not None and body is not _RECEIVED_BODY and not body.done()


# -- TCP_NODELAY ------------------------------------------------------------------


def _resets_nagle(function: object) -> Optional[Any]:
    code = getattr(function, "__code__", None)
    return code if code is not None and "set_nodelay" in code.co_names else None


#: The code of the HTTP/1 method that turns Nagle's algorithm back on once a
#: response is sent (``_finish_request`` on 6.4-6.6); None if it no longer does.
_NAGLE_RESET_AFTER_RESPONSE = _resets_nagle(getattr(HTTP1Connection, "_finish_request", None))


class _KeptNodelay:
    """``set_nodelay`` of a stream whose connection keeps ``TCP_NODELAY`` on.

    Tornado's HTTP/1 connection turns ``TCP_NODELAY`` on when a response
    finishes, so that its last segment leaves at once, and off again once it is
    sent: two ``setsockopt`` calls, each with a look-up of the socket's family,
    on every response of a keep-alive connection. Here the flag is on from the
    first request the toolkit serves on the connection, as asyncio keeps it on
    for all its TCP transports: every response still ends with the flag on,
    which is what the toggle is for, and every response body, streamed ones
    included, leaves without Nagle's delay (a body of many tiny flushes is sent
    in more segments; a handler can call ``set_nodelay(False)`` on the stream
    for its response). So the reset after a response is skipped, except
    after a 101, where the stream becomes a WebSocket and starts off, as Tornado
    starts it; so is a call that asks for the state the flag was last set to.
    Any other call is carried out as Tornado carries it out.

    The flag's state is remembered, not read back from the socket: a change made
    with ``setsockopt`` directly, rather than through ``set_nodelay``, is not
    seen. The reset is recognised by its caller's code, read at import; if
    ``_finish_request`` was replaced by then (by an instrumentation, say), the
    reset is carried out, as Tornado carries it out.
    """

    __slots__ = ("on", "stream_ref")

    def __init__(self, stream: IOStream, on: Optional[bool]) -> None:
        self.stream_ref = weakref.ref(stream)  # the stream holds this object: no cycle
        #: The flag as last set; None for a socket that is not TCP (a Unix
        #: socket), where Tornado's method does nothing either.
        self.on = on

    def __call__(self, value: bool) -> None:
        on = self.on
        if on is None or bool(value) is on:
            return
        if not value:
            caller = sys._getframe(1)
            if caller.f_code is _NAGLE_RESET_AFTER_RESPONSE and not _upgraded(caller):
                return
        stream = self.stream_ref()
        if stream is not None:
            type(stream).set_nodelay(stream, value)
            self.on = bool(value)


def _upgraded(reset: Any) -> bool:
    """Whether the response whose reset runs in frame ``reset`` was a 101."""
    start_line = getattr(reset.f_locals.get("self"), "_response_start_line", None)
    return getattr(start_line, "code", None) == 101


def keep_nodelay(stream: object) -> None:
    """Keep ``TCP_NODELAY`` on for the rest of ``stream``'s connection (see
    :class:`_KeptNodelay`); once per connection, a look-up on later requests."""
    if type(getattr(stream, "set_nodelay", None)) is _KeptNodelay:
        return
    if not isinstance(stream, IOStream) or stream.closed():
        return
    on: Optional[bool] = None
    try:
        if stream.socket.family in (socket.AF_INET, socket.AF_INET6):
            stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            on = True
    except OSError:
        return  # closing under us: Tornado's own toggles stay, harmlessly
    setattr(stream, "set_nodelay", _KeptNodelay(stream, on))  # noqa: B010


# -- outbound HTTP --------------------------------------------------------------------

#: Tornado's connection serving one request of ``SimpleAsyncHTTPClient``.
HTTPClientConnection = _HTTPConnection


class AbortableClient(SimpleAsyncHTTPClient):
    """``SimpleAsyncHTTPClient`` whose connection class is :attr:`connection_type`."""

    connection_type: type = _HTTPConnection

    def _connection_class(self) -> type:
        return self.connection_type


class StreamRecordingTCPClient(TCPClient):
    """A ``TCPClient`` that calls :meth:`stream_created` for each socket it opens."""

    def stream_created(self, stream: IOStream) -> None:
        """Called with every stream opened for a connection attempt."""

    def _create_stream(
        self,
        max_buffer_size: Optional[int],
        af: socket.AddressFamily,
        addr: tuple[Any, ...],
        source_ip: Optional[str] = None,
        source_port: Optional[int] = None,
    ) -> tuple[IOStream, Future[IOStream]]:
        stream, connected = super()._create_stream(
            max_buffer_size,  # type: ignore[arg-type,unused-ignore]  # int on 6.4
            af,
            addr,
            source_ip=source_ip,
            source_port=source_port,
        )
        self.stream_created(stream)
        return stream, connected


# -- asyncio ------------------------------------------------------------------------


def awaited_future(task: asyncio.Future[Any]) -> Optional[asyncio.Future[Any]]:
    """The future a suspended task is waiting on, or None (running, done, or unknown)."""
    waiter = getattr(task, "_fut_waiter", None)
    return waiter if isinstance(waiter, asyncio.Future) else None


#: ``accept(sock, on_connection) -> remove``: starts accepting on ``sock``.
AcceptStarter = Callable[[socket.socket, Callable[[socket.socket, Any], None]], Callable[[], None]]


def add_sockets_accepting_with(server: Any, sockets: Any, start_accepting: AcceptStarter) -> None:
    """``TCPServer.add_sockets`` with the toolkit's accept handler instead of Tornado's.

    Fills the same tables, so ``stop()`` removes the handlers and closes the sockets.
    """
    for sock in sockets:
        server._sockets[sock.fileno()] = sock
        server._handlers[sock.fileno()] = start_accepting(sock, server._handle_connection)
