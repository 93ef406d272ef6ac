"""CORS response headers from a simple allow-list, on successes and errors alike.

Browsers hide a cross-origin response from the page unless it carries
``Access-Control-Allow-Origin``; an error without it surfaces as an opaque
network failure. The headers are therefore set in ``set_default_headers``, which
Tornado calls again whenever an error response clears the headers.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import tornado.web

__all__ = ["CorsMixin"]


class CorsMixin(tornado.web.RequestHandler):
    """Add CORS headers for requests whose ``Origin`` is allowed.

    Set ``cors_allow_origins`` to the exact origins allowed
    (``{"https://app.example"}``), or to ``{"*"}`` to allow any origin. Empty (the
    default) means CORS is off and no header is added.
    """

    cors_allow_origins: Collection[str] = ()
    cors_allow_credentials: bool = False
    cors_expose_headers: Collection[str] = ()
    cors_allow_headers: Collection[str] = ("Content-Type", "Authorization")
    cors_max_age: int = 600

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_cors_settings(cls)

    def set_default_headers(self) -> None:
        super().set_default_headers()
        origin = self.request.headers.get("Origin")
        if origin is None or not self.cors_allow_origins:
            return
        if "*" in self.cors_allow_origins and not self.cors_allow_credentials:
            self.set_header("Access-Control-Allow-Origin", "*")
        elif origin in self.cors_allow_origins or "*" in self.cors_allow_origins:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.add_header("Vary", "Origin")
            if self.cors_allow_credentials:
                self.set_header("Access-Control-Allow-Credentials", "true")
        else:
            self.add_header("Vary", "Origin")
            return
        if self.cors_expose_headers:
            self.set_header("Access-Control-Expose-Headers", ", ".join(self.cors_expose_headers))

    def set_cors_preflight_headers(self, allowed_methods: Collection[str]) -> None:
        """Headers for an ``OPTIONS`` preflight answer, when the origin is allowed."""
        if not self._headers.get("Access-Control-Allow-Origin"):
            return
        self.set_header("Access-Control-Allow-Methods", ", ".join(allowed_methods))
        if self.cors_allow_headers:
            self.set_header("Access-Control-Allow-Headers", ", ".join(self.cors_allow_headers))
        self.set_header("Access-Control-Max-Age", str(self.cors_max_age))


_CORS_SETTINGS = frozenset(name for name in vars(CorsMixin) if name.startswith("cors_"))


def _check_cors_settings(cls: type[CorsMixin]) -> None:
    """Reject a misspelled or contradictory CORS configuration when the class is made.

    Each mistake would otherwise surface only in a browser, as a blocked request.
    """
    unknown = sorted(
        name for name in vars(cls) if name.startswith("cors_") and name not in _CORS_SETTINGS
    )
    if unknown:
        raise TypeError(
            f"{cls.__name__}: unknown CORS setting {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_CORS_SETTINGS))})"
        )
    for name in ("cors_allow_origins", "cors_expose_headers", "cors_allow_headers"):
        if isinstance(getattr(cls, name), (str, bytes)):
            raise TypeError(f"{cls.__name__}.{name} must be a collection of strings, not a string")
    if "*" in cls.cors_allow_origins and cls.cors_allow_credentials:
        raise ValueError(
            f"{cls.__name__}: cors_allow_origins contains '*' and cors_allow_credentials is "
            "set; browsers refuse credentials with a wildcard, so list the origins"
        )
