"""tornado-jsonservlet: mixins that make Tornado handlers behave well for JSON services.

The parts, each in its own module and usable alone:

* :mod:`~tornado_jsonservlet.connection` -- whether the client is still there;
* :mod:`~tornado_jsonservlet.safe_output` -- output that cannot fail after a disconnect;
* :mod:`~tornado_jsonservlet.disconnect` -- request cancellation (on disconnect, by default);
* :mod:`~tornado_jsonservlet.errors` -- errors with machine-readable codes;
* :mod:`~tornado_jsonservlet.rendering` -- JSON/HTML/negotiated error responses;
* :mod:`~tornado_jsonservlet.cors` -- CORS headers on successes and errors alike;
* :mod:`~tornado_jsonservlet.jsonio` -- fast, strict JSON encoding and decoding;
* :mod:`~tornado_jsonservlet.json_handlers` -- ``write_json`` and ``json_body``;
* :mod:`~tornado_jsonservlet.lowpriority` -- the lane that keeps big encodes off the hot path;
* :mod:`~tornado_jsonservlet.lean` -- less work per request than Tornado's defaults;
* :mod:`~tornado_jsonservlet.servlet` -- ``on_GET``-style handlers returning ``(status, body)``;
* :mod:`~tornado_jsonservlet.registry` -- path patterns to ``URLSpec``s;
* :mod:`~tornado_jsonservlet.metrics` -- per-servlet counts and timings;
* :mod:`~tornado_jsonservlet.metrics_handler` -- ``/metrics`` for Prometheus, across processes;
* :mod:`~tornado_jsonservlet.request_id` -- an ID per request, in headers, errors and logs;
* :mod:`~tornado_jsonservlet.shutdown` -- graceful shutdown of a process's servers;
* :mod:`~tornado_jsonservlet.processes` -- ``serve()``: several processes, one command.
"""

from .connection import CLIENT_CLOSED_REQUEST, ClientConnectionMixin
from .cors import CorsMixin
from .disconnect import (
    CLIENT_LEFT,
    CancelOnDisconnectMixin,
    CancelReason,
    cancellable,
    uncancellable,
)
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
from .lean import LeanResponseMixin
from .metrics import InMemoryMetrics, PrometheusMetrics, ServletMetrics
from .metrics_handler import MetricsHandler, metrics_urlspec
from .processes import serve
from .registry import ServletRegistry
from .rendering import HtmlErrorMixin, JsonErrorMixin, NegotiatedErrorMixin
from .request_id import RequestIdLogFilter, RequestIdMixin, current_request_id
from .safe_output import SafeWriteMixin
from .servlet import HtmlServlet, JsonServlet
from .shutdown import SHUTTING_DOWN, DrainingHTTPServer, GracefulShutdown

__version__ = "0.1.0.dev0"

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "CLIENT_LEFT",
    "SHUTTING_DOWN",
    "BadRequest",
    "CancelOnDisconnectMixin",
    "CancelReason",
    "ClientConnectionMixin",
    "Conflict",
    "CorsMixin",
    "DrainingHTTPServer",
    "Forbidden",
    "GracefulShutdown",
    "HtmlErrorMixin",
    "HtmlServlet",
    "InMemoryMetrics",
    "JsonBodyMixin",
    "JsonErrorMixin",
    "JsonResponseMixin",
    "JsonServlet",
    "LeanResponseMixin",
    "MethodNotAllowed",
    "MetricsHandler",
    "NegotiatedErrorMixin",
    "NotFound",
    "PayloadTooLarge",
    "PrometheusMetrics",
    "RedirectError",
    "RequestIdLogFilter",
    "RequestIdMixin",
    "SafeWriteMixin",
    "ServletError",
    "ServletMetrics",
    "ServletRegistry",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "__version__",
    "active_backend",
    "cancellable",
    "current_request_id",
    "decode",
    "encode",
    "errcode_for_status",
    "metrics_urlspec",
    "require",
    "serve",
    "uncancellable",
]
