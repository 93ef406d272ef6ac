"""tornado-jsonservlet: mixins that make Tornado handlers behave well for JSON services.

The parts, each in its own module and usable alone:

* :mod:`~tornado_jsonservlet.connection` -- whether the client is still there;
* :mod:`~tornado_jsonservlet.safe_output` -- output that cannot fail after a disconnect;
* :mod:`~tornado_jsonservlet.disconnect` -- cancelling in-flight work on disconnect;
* :mod:`~tornado_jsonservlet.errors` -- errors with machine-readable codes;
* :mod:`~tornado_jsonservlet.rendering` -- JSON/HTML/negotiated error responses;
* :mod:`~tornado_jsonservlet.cors` -- CORS headers on successes and errors alike;
* :mod:`~tornado_jsonservlet.jsonio` -- fast, strict JSON encoding and decoding;
* :mod:`~tornado_jsonservlet.json_handlers` -- ``write_json`` and ``json_body``;
* :mod:`~tornado_jsonservlet.lowpriority` -- the lane that keeps big encodes off the hot path.
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
from .json_handlers import JsonBodyMixin, JsonResponseMixin, require
from .jsonio import active_backend, decode, encode
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
    "JsonBodyMixin",
    "JsonErrorMixin",
    "JsonResponseMixin",
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
    "active_backend",
    "decode",
    "encode",
    "errcode_for_status",
    "require",
    "uncancellable",
]
