"""Per-servlet request metrics: counts by status (499 included) and timings.

A registry created with ``ServletRegistry(metrics=...)`` reports every finished
request once: ``observe(servlet, method, status, seconds)``. Two sinks ship:

* :class:`InMemoryMetrics`, dependency-free, for tests, health pages or your own export;
* :class:`PrometheusMetrics`, a counter and a histogram in ``prometheus_client``
  (``pip install tornado-jsonservlet[metrics]``); only it needs the extra.

Label values derived from the request come from a bounded set. A client chooses the
method it sends, and each new label value is a new time series that lives as long as
the process; 300 invented methods once added 300 series per servlet. So any method
outside :data:`KNOWN_METHODS` is reported as ``"other"``, and so is a status outside
100-599 (``method_label()``, ``status_label()``).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "KNOWN_METHODS",
    "OTHER",
    "InMemoryMetrics",
    "PrometheusMetrics",
    "ServletMetrics",
    "method_label",
    "status_label",
]

#: Methods reported under their own name; every other method is :data:`OTHER`.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The one label value that every unexpected method or status folds into.
OTHER = "other"


def method_label(method: str) -> str:
    """``method`` if it is one of :data:`KNOWN_METHODS`, else ``"other"``."""
    return method if method in KNOWN_METHODS else OTHER


def status_label(status: int) -> str:
    """The status as a label: ``"100"`` to ``"599"``, else ``"other"``."""
    return str(status) if isinstance(status, int) and 100 <= status <= 599 else OTHER


class ServletMetrics:
    """Receives one observation per finished request. Subclass to export them.

    The registry's servlets pass ``method`` through ``method_label()`` already, so
    a sink sees at most eight methods.

    .. versionadded:: 0.1
    """

    def observe(self, servlet: str, method: str, status: int, seconds: float) -> None:
        """Record one finished request; called once per request, after its access line.

        Implement this to export metrics. It runs on the event loop, in the request's
        logging path, so it must be quick and must not raise (an exception here would
        be logged as an error for a request that went fine).

        :param servlet: the servlet's name (the registry's name for its URL).
        :param method: the HTTP method, one of eight values (``other`` for the rest).
        :param status: the status in the access log (499 for a departed client).
        :param seconds: the request's duration.
        :raises NotImplementedError: in this base class.
        """
        raise NotImplementedError


@dataclass
class _Timing:
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0


@dataclass
class InMemoryMetrics(ServletMetrics):
    """Counts per ``(servlet, status)`` and timing totals per servlet.

    .. versionadded:: 0.1
    """

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    timings: dict[str, _Timing] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, servlet: str, method: str, status: int, seconds: float) -> None:
        """Count the request and add its duration to the servlet's totals."""
        with self._lock:
            self.requests[(servlet, status)] += 1
            timing = self.timings.setdefault(servlet, _Timing())
            timing.count += 1
            timing.total += seconds
            timing.maximum = max(timing.maximum, seconds)

    def count(self, servlet: str, status: Optional[int] = None) -> int:
        """Requests served by ``servlet`` (with ``status``, if given)."""
        return sum(
            n
            for (name, code), n in self.requests.items()
            if name == servlet and status in (None, code)
        )


class PrometheusMetrics(ServletMetrics):
    """``servlet_requests_total{servlet,method,status}`` and
    ``servlet_request_duration_seconds{servlet,method}``.

    .. versionadded:: 0.1
    """

    def __init__(self, registry: Any = None, namespace: str = "") -> None:
        try:
            import prometheus_client
        except ImportError as error:  # pragma: no cover - depends on the extra
            raise ImportError(
                "PrometheusMetrics needs prometheus-client: "
                "pip install tornado-jsonservlet[metrics]"
            ) from error
        kwargs: dict[str, Any] = {"namespace": namespace}
        if registry is not None:
            kwargs["registry"] = registry
        self._requests = prometheus_client.Counter(
            "servlet_requests_total",
            "Requests by servlet, method and status.",
            ["servlet", "method", "status"],
            **kwargs,
        )
        self._durations = prometheus_client.Histogram(
            "servlet_request_duration_seconds",
            "Request duration by servlet.",
            ["servlet", "method"],
            **kwargs,
        )

    def observe(self, servlet: str, method: str, status: int, seconds: float) -> None:
        """Increment the request counter and observe the duration histogram."""
        # Folded again here: observe() is public, and a caller other than the
        # registry's servlets may pass raw request data.
        method = method_label(method)
        self._requests.labels(servlet, method, status_label(status)).inc()
        self._durations.labels(servlet, method).observe(seconds)
