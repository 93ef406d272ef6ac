"""Errors a handler raises on purpose, with the machine-readable code clients branch on.

A :class:`ServletError` carries everything an error response needs: the HTTP
status, a human message, an upper-snake ``errcode`` (``NOT_FOUND``, ``BAD_JSON``),
extra JSON members, and extra headers. It subclasses ``tornado.web.HTTPError``,
so it also gives the right status in a plain Tornado handler; the error mixins in
:mod:`~tornado_jsonservlet.rendering` turn it into a JSON or HTML body.

The message is meant for the client. Anything internal belongs in logs, never in
an error raised here.
"""

from __future__ import annotations

import http
import math
from collections.abc import Iterable, Mapping
from typing import Any, Optional
from urllib.parse import quote

import tornado.web

from tornado_jsonservlet.core.headers import check_header

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RedirectError",
    "ServletError",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "encode_location",
    "errcode_for_status",
]

_ERRCODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "UNRECOGNIZED",
    409: "CONFLICT",
    413: "TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "LIMIT_EXCEEDED",
}

_RESERVED_FIELDS = frozenset({"errcode", "error"})


def errcode_for_status(status: int) -> str:
    """The default ``errcode`` for an HTTP status.

    The common 4xx have fixed codes; any other 4xx is named after its standard
    reason phrase (410 gives ``GONE``); 5xx and unknown statuses give ``UNKNOWN``.

    .. versionadded:: 0.1
    """
    if status in _ERRCODES:
        return _ERRCODES[status]
    if 400 <= status < 500:
        try:
            return http.HTTPStatus(status).name
        except ValueError:
            pass
    return "UNKNOWN"


def reason_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class ServletError(tornado.web.HTTPError):
    """An HTTP error response: ``{"errcode": ..., "error": msg, **fields}``.

    :param code: HTTP status.
    :param msg: message for the client (never internal detail).
    :param errcode: machine-readable code; defaults from ``code``
        (see :func:`errcode_for_status`).
    :param headers: sent with the error response, e.g. ``{"Retry-After": "2"}``.
    :param fields: extra JSON members, e.g. ``retry_after_ms=500``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        code: int,
        msg: str,
        errcode: Optional[str] = None,
        *,
        headers: Optional[Mapping[str, str]] = None,
        **fields: Any,
    ) -> None:
        clash = _RESERVED_FIELDS.intersection(fields)
        if clash:
            raise ValueError(f"extra fields may not be named {sorted(clash)}")
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"status must be an HTTP status code from 100 to 599, not {code!r}")
        super().__init__(code, reason=reason_phrase(code))
        self.code = code
        self.msg = msg
        self.errcode = errcode or errcode_for_status(code)
        # Checked now, where the mistake is made: a header that cannot be sent would
        # otherwise fail while the error response is written, leaving a response
        # without the header it promised (a redirect without Location).
        self.headers: dict[str, str] = {
            name: check_header(name, value) for name, value in (headers or {}).items()
        }
        self.fields: dict[str, Any] = fields

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"errcode": self.errcode, "error": self.msg, **self.fields}

    def __str__(self) -> str:
        return f"{self.code} {self.errcode}: {self.msg}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.msg!r}, {self.errcode!r})"


class _DefaultStatusError(ServletError):
    """A :class:`ServletError` whose status is fixed by the subclass."""

    status = 500
    default_msg = "Internal server error"

    def __init__(
        self,
        msg: Optional[str] = None,
        errcode: Optional[str] = None,
        *,
        headers: Optional[Mapping[str, str]] = None,
        **fields: Any,
    ) -> None:
        super().__init__(self.status, msg or self.default_msg, errcode, headers=headers, **fields)


class BadRequest(_DefaultStatusError):
    """400 ``BAD_REQUEST``: the request is malformed or fails validation.

    Raise it from a handler for input the client must fix; pass an ``errcode`` of your
    own (``BAD_NAME``) to let clients branch on the problem.

    .. versionadded:: 0.1
    """

    status = 400
    default_msg = "Bad request"


class Unauthorized(_DefaultStatusError):
    """401 ``UNAUTHORIZED``: the request lacks valid credentials.

    For a JSON API, raise it from ``get_current_user``/``prepare`` rather than using
    ``@tornado.web.authenticated``, which redirects to ``login_url`` (see the recipe
    "JSON APIs and 401"). Add a ``WWW-Authenticate`` header with ``headers=``.

    .. versionadded:: 0.1
    """

    status = 401
    default_msg = "Authentication required"


class Forbidden(_DefaultStatusError):
    """403 ``FORBIDDEN``: the client is known but may not do this.

    .. versionadded:: 0.1
    """

    status = 403
    default_msg = "Forbidden"


class NotFound(_DefaultStatusError):
    """404 ``NOT_FOUND``: no such resource, e.g. ``NotFound("No such user")``.

    .. versionadded:: 0.1
    """

    status = 404
    default_msg = "Not found"


class Conflict(_DefaultStatusError):
    """409 ``CONFLICT``: the request clashes with the resource's current state
    (a duplicate name, a stale version).

    .. versionadded:: 0.1
    """

    status = 409
    default_msg = "Conflict"


class PayloadTooLarge(_DefaultStatusError):
    """413 ``TOO_LARGE``: the body exceeds what the endpoint accepts.

    ``JsonBodyMixin`` raises it for bodies above ``json_body_limit``.

    .. versionadded:: 0.1
    """

    status = 413
    default_msg = "Request body too large"


class UnsupportedMediaType(_DefaultStatusError):
    """415 ``UNSUPPORTED_MEDIA_TYPE``: the body's ``Content-Type`` is not one the
    endpoint reads. ``JsonBodyMixin`` raises it for a body that is not JSON.

    .. versionadded:: 0.1
    """

    status = 415
    default_msg = "Unsupported media type"


class MethodNotAllowed(ServletError):
    """405 with the ``Allow`` header listing the methods the resource has.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        allowed: Iterable[str],
        msg: Optional[str] = None,
        errcode: Optional[str] = None,
        *,
        headers: Optional[Mapping[str, str]] = None,
        **fields: Any,
    ) -> None:
        self.allowed = tuple(dict.fromkeys(method.upper() for method in allowed))
        super().__init__(
            405,
            msg or "Method not allowed",
            errcode,
            headers={"Allow": ", ".join(self.allowed), **(headers or {})},
            **fields,
        )


class TooManyRequests(ServletError):
    """429; ``retry_after`` (seconds) sets ``Retry-After`` and a ``retry_after_ms`` member.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        msg: Optional[str] = None,
        errcode: Optional[str] = None,
        *,
        retry_after: Optional[float] = None,
        headers: Optional[Mapping[str, str]] = None,
        **fields: Any,
    ) -> None:
        extra_headers = dict(headers or {})
        if retry_after is not None:
            if not (retry_after >= 0 and math.isfinite(retry_after)):
                raise ValueError("retry_after must be a finite, non-negative number of seconds")
            extra_headers.setdefault("Retry-After", str(max(1, round(retry_after))))
            fields.setdefault("retry_after_ms", int(retry_after * 1000))
        super().__init__(429, msg or "Too many requests", errcode, headers=extra_headers, **fields)


# Characters a browser would percent-encode itself before sending a URL: controls,
# space, DEL and everything beyond ASCII. Reserved characters and existing "%XX"
# escapes are left alone, so an already-encoded location is unchanged.
_LOCATION_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def encode_location(location: str) -> str:
    """``location`` as a valid ``Location`` header value.

    Non-ASCII characters become UTF-8 percent-escapes (``/wiki/日本`` gives
    ``/wiki/%E6%97%A5%E6%9C%AC``), as browsers send them; so do spaces, tabs, DEL and
    other control characters.

    :raises ValueError: CR, LF or NUL (a header-injection attempt or a bug, never a
        URL), or a lone surrogate.
    """
    if not isinstance(location, str):
        raise ValueError(f"redirect location must be a string, not {type(location).__name__}")
    if any(char in location for char in "\r\n\0"):
        raise ValueError("redirect location may not contain CR, LF or NUL")
    try:
        return quote(location, safe=_LOCATION_SAFE, encoding="utf-8", errors="strict")
    except UnicodeEncodeError:
        raise ValueError("redirect location contains a lone surrogate") from None


class RedirectError(ServletError):
    """Raise to redirect: 302, or 301 when ``permanent``.

    With ``keep_method`` the status is 307 (or 308), which tells the client to
    repeat the same method and body at the new location instead of switching to GET.
    The location is percent-encoded where it must be (see ``encode_location()``);
    ``self.location`` is the encoded form, the one sent.

    .. versionadded:: 0.1
    """

    def __init__(
        self, location: str, permanent: bool = False, *, keep_method: bool = False
    ) -> None:
        location = encode_location(location)
        if keep_method:
            code = 308 if permanent else 307
        else:
            code = 301 if permanent else 302
        super().__init__(code, "Redirect", "REDIRECT", headers={"Location": location})
        self.location = location
