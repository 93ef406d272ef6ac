"""CORS response headers from a simple allow-list, on successes and errors alike.

Browsers hide a cross-origin response from the page unless it carries
``Access-Control-Allow-Origin``; an error without it surfaces as an opaque
network failure. The headers are therefore set in ``set_default_headers``, which
Tornado calls again whenever an error response clears the headers.

The settings are checked when the handler class is created. Two configurations are
refused outright because they leak: a wildcard together with credentials (the
browser would let every website read responses made with the user's cookies), and
an allow-list given as one string (``origin in "https://app.example"`` is a
substring test, so ``"https://app.ex"`` would pass).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import tornado.web

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.headers import header_or_none, is_token
from tornado_jsonservlet.core.scope import SCOPE_DEFAULT

__all__ = ["CorsMixin"]

# RFC 6454 serialized origin: scheme "://" host [ ":" port ], ASCII (internationalized
# names in their punycode form), no path. Hosts are names, IPv4 or bracketed IPv6.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _check_origin(origin: object) -> None:
    if not isinstance(origin, str):
        raise ValueError(f"cors_allow_origins: {origin!r} is not a string")
    if origin in ("*", "null"):
        return
    if _ORIGIN.fullmatch(origin) is None:
        raise ValueError(
            f"cors_allow_origins: {origin!r} is not an origin; write scheme://host[:port] "
            "in ASCII (no path, no trailing slash, no wildcard inside it), '*' or 'null'"
        )


def check_cors_settings(owner: str, settings: dict[str, Any]) -> None:
    """Raise ``ValueError`` (naming ``owner``) for a CORS configuration that is invalid
    or would expose credentialed responses to every website."""
    origins = settings["cors_allow_origins"]
    try:
        if isinstance(origins, (str, bytes)):
            raise ValueError(
                f"cors_allow_origins must be a collection of origins, not one string: "
                f"use {{{origins!r}}}"
            )
        for origin in origins:
            _check_origin(origin)
        if "*" in origins and settings["cors_allow_credentials"]:
            raise ValueError(
                "cors_allow_origins={'*'} with cors_allow_credentials=True is refused: "
                "browsers would let any website read responses made with the user's "
                "cookies. List the trusted origins explicitly instead"
            )
        for attribute in ("cors_expose_headers", "cors_allow_headers"):
            names = settings[attribute]
            if isinstance(names, (str, bytes)) or any(
                not isinstance(name, str) or not is_token(name) for name in names
            ):
                raise ValueError(f"{attribute} must be a collection of header names")
        max_age = settings["cors_max_age"]
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
            raise ValueError("cors_max_age must be a non-negative whole number of seconds")
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from None


_SETTINGS = (
    "cors_allow_origins",
    "cors_allow_credentials",
    "cors_expose_headers",
    "cors_allow_headers",
    "cors_max_age",
)


class CorsMixin(tornado.web.RequestHandler):
    """Add CORS headers for requests whose ``Origin`` is allowed.

    Set ``cors_allow_origins`` to the exact origins allowed
    (``{"https://app.example"}``), or to ``{"*"}`` to allow any origin. Empty (the
    default) means CORS is off and no header is added. The ``null`` origin (sandboxed
    frames, ``file:`` pages, some redirects) is allowed only when ``"null"`` is listed;
    ``"*"`` does not cover it. ``"*"`` cannot be combined with
    ``cors_allow_credentials = True``: the class is refused when it is defined.

    .. versionadded:: 0.1
    """

    #: The request's scope, None until it exists (``core.scope.SCOPE_DEFAULT``).
    _tornado_jsonservlet_scope: Any = SCOPE_DEFAULT

    cors_allow_origins: Collection[str] = ()
    cors_allow_credentials: bool = False
    cors_expose_headers: Collection[str] = ()
    cors_allow_headers: Collection[str] = ("Content-Type", "Authorization")
    cors_max_age: int = 600

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _refuse_unknown_settings(cls)
        check_cors_settings(cls.__name__, {name: getattr(cls, name) for name in _SETTINGS})

    def set_default_headers(self) -> None:
        """Add the CORS headers for an allowed ``Origin``.

        Tornado calls this again when an error response resets the headers, so errors
        carry the same CORS headers as successes and the browser lets the page read them.
        """
        super().set_default_headers()
        allowed = self.cors_allow_origins
        if not allowed:
            return  # CORS off (the common case): no header look-up at all
        origin = header_or_none(self.request.headers, "Origin")
        if origin is None:
            return
        wildcard = "*" in allowed
        if origin in allowed and origin != "*":
            self.set_header("Access-Control-Allow-Origin", origin)
            self.add_header("Vary", "Origin")
            if self.cors_allow_credentials:
                self.set_header("Access-Control-Allow-Credentials", "true")
        elif wildcard and origin != "null" and not self.cors_allow_credentials:
            # A settings change after class creation cannot turn this into a leak:
            # with credentials on, nothing is sent for unlisted origins.
            self.set_header("Access-Control-Allow-Origin", "*")
        else:
            self.add_header("Vary", "Origin")
            return
        if self.cors_expose_headers:
            self.set_header("Access-Control-Expose-Headers", ", ".join(self.cors_expose_headers))

    def set_cors_preflight_headers(self, allowed_methods: Collection[str]) -> None:
        """Headers for an ``OPTIONS`` preflight answer, when the origin is allowed."""
        if not tornado_internals.response_headers(self).get("Access-Control-Allow-Origin"):
            return
        self.set_header("Access-Control-Allow-Methods", ", ".join(allowed_methods))
        if self.cors_allow_headers:
            self.set_header("Access-Control-Allow-Headers", ", ".join(self.cors_allow_headers))
        self.set_header("Access-Control-Max-Age", str(self.cors_max_age))


def _refuse_unknown_settings(cls: type[CorsMixin]) -> None:
    """A misspelled setting (``cors_allow_origin``) would silently leave CORS off: it
    would surface only in a browser, as a blocked request."""
    unknown = sorted(
        name for name in vars(cls) if name.startswith("cors_") and name not in _SETTINGS
    )
    if unknown:
        raise TypeError(
            f"{cls.__name__}: unknown CORS setting {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_SETTINGS))})"
        )
