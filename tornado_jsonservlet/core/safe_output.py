"""Output that cannot fail because the client left.

In plain Tornado, a handler that writes after its client disconnected gets a
``StreamClosedError`` from ``await self.flush()`` or ``await self.finish()``; left
uncaught it is logged at ERROR as an "Uncaught exception", and the access log then
records the status the handler meant to send (typically 200) for a response nobody
received.

:class:`SafeWriteMixin` makes every output method a quiet no-op once the client is
gone, records the request once as 499, and otherwise behaves exactly like Tornado:
``write()`` after ``finish()`` still raises ``RuntimeError`` while the client is
connected, because that is a programming error, not a network event.

Writes that make no progress
----------------------------
A client that stops reading without closing (a frozen process, a tab in the
background, an attacker) fills its receive window, then the server's send
buffer; from then on every ``flush()`` stays pending, and the response, with
everything it holds, stays in memory for as long as the client likes. So each
pending write is watched: if the kernel takes *no byte at all* of it for
``write_timeout`` seconds (the class attribute, or the application setting of
the same name, the class winning; 30 s by default; ``None`` turns the watch
off), the toolkit gives up on the client. A slow reader that takes a few bytes
now and then is never cut: the watch measures progress, not the total time.

Giving up is a disconnect the server decided: the request is treated as one
whose client left (its output becomes no-ops, disconnect hooks and callbacks
run, a cancellable request is cancelled with
:data:`~tornado_jsonservlet.core.cancellation.WRITE_STALLED`, and the access log
records 499, once), and the scope records ``closed_by_server`` so that the
close which follows is not mistaken for anything else. The stall itself is
logged at INFO on ``tornado.application``.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from types import TracebackType
from typing import Any, ClassVar, Optional, Union

import tornado.httputil
import tornado.web
from tornado.iostream import BaseIOStream, StreamClosedError
from tornado.log import app_log

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.connection import ClientConnectionMixin, completed
from tornado_jsonservlet.core.scope import scope_of

__all__ = ["DEFAULT_WRITE_TIMEOUT", "SafeWriteMixin", "positive_seconds"]

_Chunk = Union[str, bytes, dict[str, Any]]

#: Seconds a pending write may make no progress before the client is given up.
DEFAULT_WRITE_TIMEOUT = 30.0
# How often, per write_timeout, a pending write's progress is sampled: a stall
# is detected between write_timeout and 1.25 x write_timeout after the last byte.
_WATCH_SAMPLES = 4

# Classes that set write_timeout themselves (it then wins over the setting).
_classes_with_write_timeout: weakref.WeakSet[type] = weakref.WeakSet()
_reported_bad_settings: set[int] = set()


def positive_seconds(value: object, *, allow_none: bool = True) -> bool:
    """Whether ``value`` is a positive finite number of seconds (or None, if allowed)."""
    if value is None:
        return allow_none
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


class _WriteWatch:
    """The progress of the writes pending on one response (``scope.write_watch``)."""

    __slots__ = ("handle", "pending", "progress_at", "stream", "timeout", "written")

    def __init__(
        self, stream: BaseIOStream, pending: asyncio.Future[None], timeout: float, now: float
    ) -> None:
        self.stream = stream
        #: The latest write of this response still waiting for the kernel; the
        #: watch ends once it is done (it completes after every earlier one).
        self.pending = pending
        self.timeout = timeout
        self.written = tornado_internals.bytes_written(stream)
        self.progress_at = now
        self.handle: Optional[asyncio.TimerHandle] = None


class SafeWriteMixin(ClientConnectionMixin):
    """Make ``write``/``flush``/``finish``/``send_error``/``render``/``redirect`` safe.

    After a disconnect they do nothing and return completed awaitables; the
    request is finished once, through the handler's own ``finish()`` (overrides
    included), and logged with status 499. A ``StreamClosedError`` from a write in
    flight marks the client as gone instead of escaping, and it is never logged
    as an uncaught exception.

    A pending write that makes no progress for ``write_timeout`` seconds ends
    the request as a disconnect; see the module documentation.

    .. versionadded:: 0.1
    """

    #: Seconds a pending write may make no progress before the client is given
    #: up (None: never). Set here, it wins over the application setting.
    write_timeout: ClassVar[Optional[float]] = DEFAULT_WRITE_TIMEOUT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "write_timeout" in cls.__dict__ and not positive_seconds(cls.write_timeout):
            raise ValueError(
                f"{cls.__name__}.write_timeout must be None or a positive number "
                f"of seconds, not {cls.write_timeout!r}"
            )
        if any(
            "write_timeout" in klass.__dict__
            for klass in cls.__mro__[:-1]
            if klass is not SafeWriteMixin
        ):
            _classes_with_write_timeout.add(cls)

    @tornado_internals.covered_by_one_write
    def write(self, chunk: _Chunk) -> None:
        """Tornado's ``write``; a no-op once the client has gone.

        :raises RuntimeError: after ``finish()`` while the client is connected, as in Tornado.
        """
        scope = scope_of(self)
        if scope.client_gone or scope.ended_early:
            return
        super().write(chunk)

    @tornado_internals.covered_by_one_write
    def flush(self, include_footers: bool = False) -> asyncio.Future[None]:
        """Tornado's ``flush``; after a disconnect, a completed future.

        A flush that finds the stream closed marks the client as gone instead of raising
        ``StreamClosedError`` into the handler.
        """
        scope = scope_of(self)
        if scope.client_gone or scope.ended_early:
            return completed()
        try:
            return self._jsonservlet_quiet(super().flush(include_footers))
        except tornado.httputil.HTTPOutputError:
            scope_of(self).closed_by_server = True
            raise

    @tornado_internals.covered_by_one_write
    def finish(self, chunk: Optional[_Chunk] = None) -> asyncio.Future[None]:
        """Tornado's ``finish``; for a departed client, the request ends as a 499 and
        nothing is sent. Returns a completed future instead of raising ``StreamClosedError``.
        """
        scope = scope_of(self)
        if scope.client_gone:
            return super().finish()  # ClientConnectionMixin ends it as a 499
        if scope.ended_early and tornado_internals.is_finished(self):
            return completed()  # the toolkit ended it already; the task catches up
        try:
            return self._jsonservlet_quiet(super().finish(chunk))
        except tornado.httputil.HTTPOutputError:
            scope_of(self).closed_by_server = True
            raise

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """Tornado's ``send_error``; after a disconnect, the request just ends (499),
        with no error rendered for nobody.
        """
        scope = scope_of(self)
        if scope.client_gone or (scope.ended_early and tornado_internals.is_finished(self)):
            self._jsonservlet_end_quietly()
            return
        super().send_error(status_code, **kwargs)

    def render(self, template_name: str, **kwargs: Any) -> asyncio.Future[None]:
        """Tornado's ``render``; after a disconnect, nothing is rendered and a
        completed future is returned.
        """
        if scope_of(self).client_gone:
            self._jsonservlet_end_quietly()
            return completed()
        return super().render(template_name, **kwargs)

    def redirect(self, url: str, permanent: bool = False, status: Optional[int] = None) -> None:
        """Tornado's ``redirect``; after a disconnect, the request just ends (499)."""
        if scope_of(self).client_gone:
            self._jsonservlet_end_quietly()
            return
        super().redirect(url, permanent, status)

    def log_exception(
        self,
        typ: Optional[type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Tornado's ``log_exception``, minus the ``StreamClosedError`` of a client that
        left: that is the client's doing, not a bug. One from another connection (a
        backend's) is still logged.
        """
        # A StreamClosedError that escaped from code writing to this request's own
        # connection after the client left is not a bug. One from anywhere else
        # (a backend connection, say) still is, hence the client_disconnected test.
        if isinstance(value, StreamClosedError) and scope_of(self).client_gone:
            return
        super().log_exception(typ, value, tb)

    def _jsonservlet_end_quietly(self) -> None:
        """What ``send_error``/``render``/``redirect`` end with: ``finish()``, once."""
        if not tornado_internals.is_finished(self):
            self.finish()

    def _jsonservlet_quiet(self, sent: asyncio.Future[None]) -> asyncio.Future[None]:
        """Relay ``sent``, turning ``StreamClosedError`` into a disconnect.

        When the stream dies, Tornado fails pending writes *before* it runs the close
        callback, so a handler awaiting ``flush()`` learns of the disconnect here
        first. The relay records it, which also lets the cancellation layer cancel
        the handler at this very ``await``.
        """
        if not sent.done():
            self._jsonservlet_watch_writes(sent)
        elif not sent.cancelled():
            error = sent.exception()
            if error is None:
                return sent
            if isinstance(error, StreamClosedError):
                self._jsonservlet_client_left()
                return completed()
            return sent
        relayed: asyncio.Future[None] = sent.get_loop().create_future()

        def relay(sent: asyncio.Future[None]) -> None:
            if sent.cancelled():
                if not relayed.done():
                    relayed.cancel()
                return
            error = sent.exception()  # always retrieved: no "never retrieved" warning
            if isinstance(error, StreamClosedError):
                self._jsonservlet_client_left()
                error = None
            if relayed.done():  # the awaiting handler was cancelled meanwhile
                return
            if error is None:
                relayed.set_result(None)
            else:
                relayed.set_exception(error)

        sent.add_done_callback(relay)
        return relayed

    # -- the write progress watch ------------------------------------------------

    def _jsonservlet_write_timeout(self) -> Optional[float]:
        """This response's ``write_timeout``: the class's, else the setting's, else 30 s."""
        if type(self) in _classes_with_write_timeout:
            return self.write_timeout
        settings = self.settings
        if "write_timeout" not in settings:
            return DEFAULT_WRITE_TIMEOUT
        seconds = settings["write_timeout"]
        if positive_seconds(seconds):
            return seconds  # type: ignore[no-any-return]
        # Tornado offers no hook at Application creation: say it once, loudly, and
        # keep the default rather than serve without any bound.
        if id(settings) not in _reported_bad_settings:
            _reported_bad_settings.add(id(settings))
            app_log.error(
                "Ignoring the write_timeout setting %r: it must be None or a positive "
                "number of seconds; using %s",
                seconds,
                DEFAULT_WRITE_TIMEOUT,
            )
        return DEFAULT_WRITE_TIMEOUT

    def _jsonservlet_watch_writes(self, pending: asyncio.Future[None]) -> None:
        """A write is pending: watch that it makes progress (one watch per response)."""
        scope = scope_of(self)
        if scope.write_watch is not None:
            scope.write_watch.pending = pending
            return
        stream = getattr(self.request.connection, "stream", None)
        if not isinstance(stream, BaseIOStream) or stream.closed():
            return
        if tornado_internals.bytes_written(stream) is None:
            return
        timeout = self._jsonservlet_write_timeout()
        if timeout is None:
            return
        loop = asyncio.get_running_loop()
        watch = scope.write_watch = _WriteWatch(stream, pending, timeout, loop.time())
        watch.handle = loop.call_later(timeout / _WATCH_SAMPLES, self._jsonservlet_check_writes)

    def _jsonservlet_check_writes(self) -> None:
        """Timer: sample the pending writes' progress; give up on a stalled client."""
        scope = scope_of(self)
        watch: Optional[_WriteWatch] = scope.write_watch
        if watch is None:
            return
        stream = watch.stream
        if stream.closed() or watch.pending.done():
            # Everything was written, or it is over anyway. (Not stream.writing():
            # the next request of a keep-alive connection may be writing by now,
            # and it has its own watch.)
            scope.write_watch = None
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        written = tornado_internals.bytes_written(stream)
        if written != watch.written:
            watch.written = written
            watch.progress_at = now
        elif now - watch.progress_at >= watch.timeout:
            scope.write_watch = None
            self._jsonservlet_write_stalled(now - watch.progress_at)
            return
        watch.handle = loop.call_later(
            watch.timeout / _WATCH_SAMPLES, self._jsonservlet_check_writes
        )

    def _jsonservlet_write_stalled(self, idle: float) -> None:
        """No byte of a pending write went out for ``write_timeout``: end it as a disconnect.

        The client is recorded as gone first (output becomes no-ops, disconnect
        hooks and callbacks run, the request is logged once with 499), then the
        close is recorded as the server's and the connection is closed, which
        fails the pending writes and releases the bytes they held.
        """
        app_log.info(
            "No write progress for %.1fs (write_timeout=%s); closing the connection: %s",
            idle,
            self._jsonservlet_write_timeout(),
            tornado_internals.request_summary(self),
        )
        scope = scope_of(self)
        self._jsonservlet_client_left()
        scope.closed_by_server = True
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.close()
