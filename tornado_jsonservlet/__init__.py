"""tornado-jsonservlet: mixins that make Tornado handlers behave well for JSON services.

The parts, each in its own module and usable alone:

* :mod:`~tornado_jsonservlet.connection` -- whether the client is still there;
* :mod:`~tornado_jsonservlet.safe_output` -- output that cannot fail after a disconnect;
* :mod:`~tornado_jsonservlet.disconnect` -- cancelling in-flight work on disconnect;
* :mod:`~tornado_jsonservlet.errors` -- errors with machine-readable codes;
* :mod:`~tornado_jsonservlet.rendering` -- JSON/HTML/negotiated error responses;
* :mod:`~tornado_jsonservlet.cors` -- CORS headers on successes and errors alike.
"""

from .connection import CLIENT_CLOSED_REQUEST, ClientConnectionMixin
from .cors import CorsMixin
from .disconnect import CancelOnDisconnectMixin, uncancellable
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RedirectError,
    ServletError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    errcode_for_status,
)
from .rendering import HtmlErrorMixin, JsonErrorMixin, NegotiatedErrorMixin
from .safe_output import SafeWriteMixin

__version__ = "0.1.0.dev0"

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "BadRequest",
    "CancelOnDisconnectMixin",
    "ClientConnectionMixin",
    "Conflict",
    "CorsMixin",
    "Forbidden",
    "HtmlErrorMixin",
    "JsonErrorMixin",
    "MethodNotAllowed",
    "NegotiatedErrorMixin",
    "NotFound",
    "PayloadTooLarge",
    "RedirectError",
    "SafeWriteMixin",
    "ServletError",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "__version__",
    "errcode_for_status",
    "uncancellable",
]
