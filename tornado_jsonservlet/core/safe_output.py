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
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Optional, Union

import tornado.httputil
import tornado.web
from tornado.iostream import StreamClosedError

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.connection import ClientConnectionMixin, completed
from tornado_jsonservlet.core.scope import scope_of

__all__ = ["SafeWriteMixin"]

_Chunk = Union[str, bytes, dict[str, Any]]


class SafeWriteMixin(ClientConnectionMixin):
    """Make ``write``/``flush``/``finish``/``send_error``/``render``/``redirect`` safe.

    After a disconnect they do nothing and return completed awaitables; the
    request is finished once, through the handler's own ``finish()`` (overrides
    included), and logged with status 499. A ``StreamClosedError`` from a write in
    flight marks the client as gone instead of escaping, and it is never logged
    as an uncaught exception.

    .. versionadded:: 0.1
    """

    def write(self, chunk: _Chunk) -> None:
        """Tornado's ``write``; a no-op once the client has gone.

        :raises RuntimeError: after ``finish()`` while the client is connected, as in Tornado.
        """
        scope = scope_of(self)
        if scope.client_gone or scope.ended_early:
            return
        super().write(chunk)

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
        if sent.done() and not sent.cancelled():
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
