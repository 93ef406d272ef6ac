"""Request IDs: one string that ties a client's error report to the server's log lines.

Every request handled by a :class:`RequestIdMixin` handler gets an ID:

* the incoming ``X-Request-ID`` header when it is a plausible ID (1 to 128
  characters from ``A-Z a-z 0-9 . _ : -``), so an ID chosen by a proxy (nginx's
  ``$request_id``) or by a calling service follows the request across hops;
* otherwise a fresh one (32 hex digits). An invalid incoming value is replaced,
  never echoed: it may be 60 KB long, hold control characters or be crafted to
  forge log lines, and it is the client's text, not ours.

The ID is sent back in the ``X-Request-ID`` response header (error responses
included), added to JSON error bodies as ``request_id``, available as
``self.request_id``, and, through :func:`current_request_id`, to any code running
in the request's task or its child tasks: application logs (with
:class:`RequestIdLogFilter`) and outbound calls that should forward it.

Tornado's access-log format is not changed. To put the ID in your log lines, add
the filter to a logging handler and ``%(request_id)s`` to its format.
"""

from __future__ import annotations

import logging
import os
import re
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Callable, ClassVar, Optional

import tornado.web

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.headers import header_or_none
from tornado_jsonservlet.core.scope import scope_of

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestIdLogFilter",
    "RequestIdMixin",
    "current_request_id",
    "new_request_id",
    "valid_request_id",
]

#: The header an ID arrives in and is returned in.
REQUEST_ID_HEADER = "X-Request-ID"
#: Longest incoming ID accepted; nginx's ``$request_id`` is 32, a UUID 36.
MAX_REQUEST_ID_LENGTH = 128

_ID_SYNTAX = re.compile(r"[A-Za-z0-9._:-]+")
_current: ContextVar[Optional[str]] = ContextVar("tornado_jsonservlet_request_id", default=None)


def new_request_id() -> str:
    """A fresh ID: 128 random bits as 32 hex digits.

    ``os.urandom`` rather than a counter with a per-process prefix: it stays unique
    across forked workers without any care at fork time, for about a microsecond.
    """
    return os.urandom(16).hex()


def valid_request_id(value: Optional[str]) -> Optional[str]:
    """``value`` if it is acceptable as a request ID, else None.

    The length is checked before the pattern, so a 60 KB header costs nothing.
    """
    if value and len(value) <= MAX_REQUEST_ID_LENGTH and _ID_SYNTAX.fullmatch(value):
        return value
    return None


def current_request_id() -> Optional[str]:
    """The ID of the request whose task (or child task) is running, or None.

    For outbound calls: send it as ``X-Request-ID`` so the next service logs the
    same ID.

    .. versionadded:: 0.1
    """
    return _current.get()


class RequestIdLogFilter(logging.Filter):
    """Sets ``record.request_id`` for formats that use ``%(request_id)s``.

    Records logged outside a request get ``default`` (``"-"``). The filter never
    drops a record. Add it to a *handler* (``handler.addFilter(...)``), so that it
    also covers records of child loggers such as ``tornado.access``.

    .. versionadded:: 0.1
    """

    def __init__(self, name: str = "", default: str = "-") -> None:
        super().__init__(name)
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.request_id`` to the current request's ID (the default outside a
        request) unless the record has one; never drops a record.
        """
        if not hasattr(record, "request_id"):
            record.request_id = _current.get() or self.default
        return True


class RequestIdMixin(tornado_internals.RequestLifecycle):
    """Give every request an ID; see the module documentation.

    Mix it in before ``RequestHandler`` (order among the toolkit's mixins does not
    matter). Set ``trust_request_id = False`` to ignore incoming IDs, for a server
    that faces clients directly and should not let them choose the ID.

    .. versionadded:: 0.1
    """

    #: Accept a valid incoming ``X-Request-ID`` instead of generating one.
    trust_request_id: ClassVar[bool] = True

    @property
    def request_id(self) -> str:
        """This request's ID (chosen on first use, then fixed)."""
        scope = scope_of(self)
        request_id = scope.request_id
        if request_id is None:
            incoming = (
                valid_request_id(header_or_none(self.request.headers, REQUEST_ID_HEADER))
                if self.trust_request_id
                else None
            )
            request_id = scope.request_id = incoming or new_request_id()
        return request_id

    def set_default_headers(self) -> None:
        """Add ``X-Request-ID``; called again when an error response resets the headers,
        so errors carry the ID too.
        """
        # Called again by send_error's clear(): error responses carry the ID too.
        super().set_default_headers()
        self.set_header(REQUEST_ID_HEADER, self.request_id)

    def flush(self, include_footers: bool = False) -> Any:
        """As ``RequestHandler.flush``, with ``X-Request-ID`` set even when the application's
        ``set_default_headers`` does not call ``super()``."""
        # Applications override set_default_headers without calling super() (flower's
        # base handler does): the header is then set here, before the headers go out.
        if not tornado_internals.headers_sent(self):
            headers = tornado_internals.response_headers(self)
            if REQUEST_ID_HEADER not in headers:
                self.set_header(REQUEST_ID_HEADER, self.request_id)
        return super().flush(include_footers)

    def _jsonservlet_enter(self, transforms: list[tornado.web.OutputTransform]) -> bool:
        # Tornado runs the whole request in this task, which has its own copy of
        # the context: a variable set here is seen by the handler and by the tasks
        # it starts, and by nothing else. It dies with the task.
        _current.set(self.request_id)
        return super()._jsonservlet_enter(transforms)

    def _jsonservlet_log(self, write_access_line: Callable[[], None]) -> None:
        # The access line may be written outside the request's task (a request
        # finished from a disconnect callback); give the filter the ID there too.
        token = _current.set(self.request_id)
        try:
            super()._jsonservlet_log(write_access_line)
        finally:
            _current.reset(token)

    def log_exception(
        self,
        typ: Optional[type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Tornado's ``log_exception`` with the request's ID visible to log filters."""
        token = _current.set(self.request_id)
        try:
            super().log_exception(typ, value, tb)
        finally:
            _current.reset(token)
