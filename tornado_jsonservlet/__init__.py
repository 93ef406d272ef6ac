"""tornado-jsonservlet: mixins that make Tornado handlers behave well for JSON services.

The parts, each in its own module and usable alone:

* :mod:`~tornado_jsonservlet.connection` -- whether the client is still there;
* :mod:`~tornado_jsonservlet.safe_output` -- output that cannot fail after a disconnect;
* :mod:`~tornado_jsonservlet.disconnect` -- request cancellation (on disconnect, by default);
* :mod:`~tornado_jsonservlet.errors` -- errors with machine-readable codes;
* :mod:`~tornado_jsonservlet.rendering` -- JSON/HTML/negotiated error responses;
* :mod:`~tornado_jsonservlet.cors` -- CORS headers on successes and errors alike;
* :mod:`~tornado_jsonservlet.headers` -- strict parsing of the headers the toolkit reads;
* :mod:`~tornado_jsonservlet.jsonio` -- fast, strict JSON encoding and decoding;
* :mod:`~tornado_jsonservlet.json_handlers` -- ``write_json`` and ``json_body``;
* :mod:`~tornado_jsonservlet.lowpriority` -- the lane that keeps big encodes off the hot path;
* :mod:`~tornado_jsonservlet.lean` -- less work per request than Tornado's defaults;
* :mod:`~tornado_jsonservlet.servlet` -- ``on_GET``-style handlers returning ``(status, body)``;
* :mod:`~tornado_jsonservlet.registry` -- path patterns to ``URLSpec``s;
* :mod:`~tornado_jsonservlet.metrics` -- per-servlet counts and timings;
* :mod:`~tornado_jsonservlet.eventformat` -- the server-sent events wire format;
* :mod:`~tornado_jsonservlet.streaming` -- SSE, JSON lines and long-poll that stop with the client;
* :mod:`~tornado_jsonservlet.stream_servlets` -- ``EventStreamServlet`` for the registry;
* :mod:`~tornado_jsonservlet.broadcast` -- publish/subscribe fan-out (in memory);
* :mod:`~tornado_jsonservlet.redis_broadcast` -- the same across processes (``redis`` extra).
* :mod:`~tornado_jsonservlet.outbound` -- outbound HTTP that aborts when cancelled;
* :mod:`~tornado_jsonservlet.threads` -- thread work that learns its caller left;
* :mod:`~tornado_jsonservlet.context` -- the request deadline seen by all its work.
* :mod:`~tornado_jsonservlet.metrics_handler` -- ``/metrics`` for Prometheus, across processes;
* :mod:`~tornado_jsonservlet.request_id` -- an ID per request, in headers, errors and logs;
* :mod:`~tornado_jsonservlet.shutdown` -- graceful shutdown of a process's servers;
* :mod:`~tornado_jsonservlet.processes` -- ``serve()``: several processes, one command.
"""

from .broadcast import (
    Broadcaster,
    BroadcastUnavailable,
    EndReason,
    InMemoryBroadcaster,
    Subscription,
)
from .connection import CLIENT_CLOSED_REQUEST, ClientConnectionMixin
from .cors import CorsMixin
from .disconnect import (
    CLIENT_LEFT,
    DEADLINE_EXCEEDED,
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
from .eventformat import ServerSentEvent
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
from .stream_servlets import EventStreamServlet
from .streaming import EventStreamMixin, JsonLinesMixin, LongPollMixin
from .threads import CancelToken, current_cancel_token, run_in_executor

__version__ = "0.1.0.dev0"

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "CLIENT_LEFT",
    "DEADLINE_EXCEEDED",
    "SHUTTING_DOWN",
    "BadRequest",
    "BroadcastUnavailable",
    "Broadcaster",
    "CancelOnDisconnectMixin",
    "CancelReason",
    "CancelToken",
    "ClientConnectionMixin",
    "Conflict",
    "CorsMixin",
    "DrainingHTTPServer",
    "EndReason",
    "EventStreamMixin",
    "EventStreamServlet",
    "Forbidden",
    "GracefulShutdown",
    "HtmlErrorMixin",
    "HtmlServlet",
    "InMemoryBroadcaster",
    "InMemoryMetrics",
    "JsonBodyMixin",
    "JsonErrorMixin",
    "JsonLinesMixin",
    "JsonResponseMixin",
    "JsonServlet",
    "LeanResponseMixin",
    "LongPollMixin",
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
    "ServerSentEvent",
    "ServletError",
    "ServletMetrics",
    "ServletRegistry",
    "Subscription",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "__version__",
    "active_backend",
    "cancellable",
    "current_cancel_token",
    "current_request_id",
    "decode",
    "encode",
    "errcode_for_status",
    "metrics_urlspec",
    "require",
    "run_in_executor",
    "serve",
    "uncancellable",
]
