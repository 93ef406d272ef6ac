"""tornado-jsonservlet: mixins that make Tornado handlers behave well for JSON services.

The toolkit is grouped by family, lowest layer first; each layer imports only
from the layers before it:

* :mod:`~tornado_jsonservlet.tornado_adapter` -- the one module that touches
  Tornado's private API;
* :mod:`~tornado_jsonservlet.core` -- the request scope, disconnect detection,
  safe output, cancellation, deadlines, context variables, threads, headers;
* :mod:`~tornado_jsonservlet.errors` -- error classes, JSON/HTML rendering, CORS;
* :mod:`~tornado_jsonservlet.jsonio` -- the codec, ``write_json``/``json_body``, the
  low-priority lane, lean responses;
* :mod:`~tornado_jsonservlet.production` -- request IDs, metrics, shutdown, processes;
* :mod:`~tornado_jsonservlet.outbound` -- outbound HTTP that aborts when cancelled;
* :mod:`~tornado_jsonservlet.routing` -- servlets and the registry;
* :mod:`~tornado_jsonservlet.streams` -- SSE, JSON lines, long-poll, fan-out;
* :mod:`~tornado_jsonservlet.testing` -- test helpers and the pytest plugin.

Everything users need is exported here; old flat module paths keep working for
one release with a ``DeprecationWarning`` (see ``_moved``).
"""

from . import _moved
from .core.cancellation import (
    CLIENT_LEFT,
    DEADLINE_EXCEEDED,
    WRITE_STALLED,
    CancelOnDisconnectMixin,
    CancelReason,
    cancellable,
    uncancellable,
)
from .core.coalescing import Coalescer
from .core.connection import CLIENT_CLOSED_REQUEST, ClientConnectionMixin
from .core.safe_output import SafeWriteMixin
from .core.threads import CancelToken, current_cancel_token, run_in_executor
from .errors.cors import CorsMixin
from .errors.exceptions import (
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
from .errors.rendering import HtmlErrorMixin, JsonErrorMixin, NegotiatedErrorMixin
from .jsonio.bodies import JsonBodyMixin, require
from .jsonio.codec import active_backend, decode, encode
from .jsonio.lean import LeanResponseMixin
from .jsonio.responses import JsonResponseMixin
from .production.metrics import InMemoryMetrics, PrometheusMetrics, ServletMetrics
from .production.metrics_handler import MetricsHandler, metrics_urlspec
from .production.processes import serve
from .production.request_id import RequestIdLogFilter, RequestIdMixin, current_request_id
from .production.shutdown import (
    SHUTTING_DOWN,
    DrainingHTTPServer,
    GracefulShutdown,
    shutdown_notice,
)
from .routing.registry import ServletRegistry
from .routing.servlets import HtmlServlet, JsonServlet
from .routing.signatures import Header, ValidationFailed
from .streams.broadcast import (
    Broadcaster,
    BroadcastUnavailable,
    EndReason,
    InMemoryBroadcaster,
    Subscription,
)
from .streams.mixins import EventStreamMixin, JsonLinesMixin, LongPollMixin
from .streams.servlets import EventStreamServlet
from .streams.sse_format import ServerSentEvent

_moved.install()

__version__ = "0.1.0"

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "CLIENT_LEFT",
    "DEADLINE_EXCEEDED",
    "SHUTTING_DOWN",
    "WRITE_STALLED",
    "BadRequest",
    "BroadcastUnavailable",
    "Broadcaster",
    "CancelOnDisconnectMixin",
    "CancelReason",
    "CancelToken",
    "ClientConnectionMixin",
    "Coalescer",
    "Conflict",
    "CorsMixin",
    "DrainingHTTPServer",
    "EndReason",
    "EventStreamMixin",
    "EventStreamServlet",
    "Forbidden",
    "GracefulShutdown",
    "Header",
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
    "ValidationFailed",
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
    "shutdown_notice",
    "uncancellable",
]
