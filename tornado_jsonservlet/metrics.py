"""Per-servlet request metrics: counts by status (499 included) and timings.

A registry created with ``ServletRegistry(metrics=...)`` reports every finished
request once: ``observe(servlet, method, status, seconds)``. Two sinks ship:

* :class:`InMemoryMetrics`, dependency-free, for tests, health pages or your own export;
* :class:`PrometheusMetrics`, a counter and a histogram in ``prometheus_client``
  (``pip install tornado-jsonservlet[metrics]``); only it needs the extra.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["InMemoryMetrics", "PrometheusMetrics", "ServletMetrics"]


class ServletMetrics:
    """Receives one observation per finished request. Subclass to export them."""

    def observe(self, servlet: str, method: str, status: int, seconds: float) -> None:
        raise NotImplementedError


@dataclass
class _Timing:
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0


@dataclass
class InMemoryMetrics(ServletMetrics):
    """Counts per ``(servlet, status)`` and timing totals per servlet."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    timings: dict[str, _Timing] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, servlet: str, method: str, status: int, seconds: float) -> None:
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
    ``servlet_request_duration_seconds{servlet,method}``."""

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
        self._requests.labels(servlet, method, str(status)).inc()
        self._durations.labels(servlet, method).observe(seconds)
