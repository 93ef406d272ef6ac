"""``GET /metrics``: the Prometheus endpoint, for one process or many.

::

    from tornado_jsonservlet import metrics_urlspec

    app = tornado.web.Application([metrics_urlspec(), *registry.urlspecs("/api")])

Needs the ``metrics`` extra (``pip install 'tornado-jsonservlet[metrics]'``).
:func:`metrics_urlspec` imports ``prometheus_client``, so a missing extra fails
when the application's URL table is built, not at the first scrape.

Several processes
-----------------
Each worker counts only its own requests, and a scrape reaches one worker at
random. prometheus-client's *multiprocess mode* is the standard answer: with the
``PROMETHEUS_MULTIPROC_DIR`` environment variable set (before any metric is
created, so before the application is imported), every process writes its
samples to memory-mapped files in that directory, and a scrape reads them all
(``MultiProcessCollector``): any worker answers with the sum of all of them.
Counters and histograms of workers that have exited are kept, so totals never go
backwards across a restart. Empty the directory before the server starts, not
while it runs. The toolkit's metrics are counters and histograms whose labels
are bounded (servlet, method, status), so the number of series does not grow
with the number of processes.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import tornado.web
from tornado.routing import URLSpec

__all__ = ["MULTIPROC_DIR_ENV", "MetricsHandler", "metrics_urlspec", "multiprocess_dir"]

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Optional[str]:
    """The multiprocess directory from the environment, or None (single process)."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


class MetricsHandler(tornado.web.RequestHandler):
    """Serves a Prometheus registry in the text format (OpenMetrics if asked for).

    Any ``Accept`` header gets an answer: one that prometheus-client cannot
    handle gets the text format.

    ``registry`` (an ``initialize`` argument) defaults to prometheus-client's
    global ``REGISTRY`` in a single process and to a ``MultiProcessCollector``
    over ``PROMETHEUS_MULTIPROC_DIR`` when that is set.

    .. versionadded:: 0.1
    """

    registry: Any = None

    def initialize(self, registry: Any = None) -> None:
        """``registry``: a ``prometheus_client.CollectorRegistry``, or None for the default."""
        self.registry = registry

    def get(self) -> None:
        """Serve the registry's samples, in OpenMetrics when the scraper asks for it
        (``Accept``), in Prometheus' text format otherwise; with
        ``PROMETHEUS_MULTIPROC_DIR`` set, the sum over every worker.
        """
        prometheus_client = _prometheus_client()
        registry = self.registry
        if registry is None:
            if multiprocess_dir():
                # A fresh registry per scrape, as prometheus-client prescribes: the
                # collector reads the files of every process at collection time.
                from prometheus_client.multiprocess import MultiProcessCollector

                registry = prometheus_client.CollectorRegistry()
                MultiProcessCollector(registry)  # type: ignore[no-untyped-call,unused-ignore]
            else:
                registry = prometheus_client.REGISTRY
        exposition = prometheus_client.exposition
        try:
            encoder, content_type = exposition.choose_encoder(
                self.request.headers.get("Accept", "")
            )
            body = encoder(registry)
        except Exception:
            # prometheus-client parses the Accept header's parameters itself, and
            # some values it cannot handle raise (``version=abc`` is a TypeError in
            # 0.2x). A scraper's odd header is not a server error: the text format,
            # which every Prometheus understands, answers it. A collector that
            # fails still fails below, where it belongs.
            encoder, content_type = exposition.generate_latest, exposition.CONTENT_TYPE_LATEST
            body = encoder(registry)
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


def _prometheus_client() -> Any:
    try:
        import prometheus_client
        import prometheus_client.exposition
    except ImportError as error:  # pragma: no cover - depends on the extra
        raise ImportError(
            "the /metrics endpoint needs prometheus-client: "
            "pip install 'tornado-jsonservlet[metrics]'"
        ) from error
    return prometheus_client


def metrics_urlspec(
    path: str = "/metrics", *, registry: Any = None, name: str = "metrics"
) -> URLSpec:
    """The URL rule for :class:`MetricsHandler`, checked now rather than at the first scrape.

    :raises ImportError: prometheus-client is not installed.
    :raises ValueError: ``PROMETHEUS_MULTIPROC_DIR`` is set but is not a directory.

    .. versionadded:: 0.1
    """
    _prometheus_client()
    directory = multiprocess_dir()
    if registry is None and directory is not None and not os.path.isdir(directory):
        raise ValueError(f"{MULTIPROC_DIR_ENV}={directory!r} is not a directory")
    return URLSpec(path, MetricsHandler, {"registry": registry}, name=name)
