"""Demo server: the classic "client went away mid-request" problem, solved.

Run::

    python demo_server.py --port=8888 --logging=debug

``GET /?delay=3`` waits three seconds, logs ``doing application stuff...`` and
answers ``ok!``; add ``&error=yes`` to have it fail with a 400 instead. Every
request logs ``doing some application clean up...`` exactly once when it ends.

``--processes=N`` runs N worker processes on the port (0: one per CPU); SIGTERM
or Ctrl-C lets in-flight requests finish for ``--shutdown-grace`` seconds (10),
then answers what is left with 503 ``SHUTTING_DOWN``.

Kill the client during the delay (``curl 'localhost:8888/?delay=3' & sleep 1;
kill %1``) and the delayed work never runs: the handler is cancelled at its
``await``, the clean-up still runs, the access log shows 499, and nothing is
logged at ERROR. Plain Tornado would run the work for nobody, log a
``StreamClosedError`` traceback, and record a 200.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math

import tornado.escape
import tornado.options
import tornado.web
from tornado.options import define, options

from tornado_jsonservlet import (
    BadRequest,
    CancelOnDisconnectMixin,
    HtmlErrorMixin,
    HtmlServlet,
    InMemoryMetrics,
    JsonErrorMixin,
    JsonServlet,
    NegotiatedErrorMixin,
    NotFound,
    ServletRegistry,
    TooManyRequests,
    require,
    serve,
)

define("port", default=8888, help="port to listen on", type=int)
define("address", default="127.0.0.1", help="address to bind (loopback by default)")
define("processes", default=1, help="worker processes sharing the port (0: one per CPU)", type=int)
define("debug", default=False, help="Tornado debug mode: autoreload, tracebacks (one process)")
define(
    "shutdown_grace",
    default=10.0,
    help="seconds in-flight requests get to finish after SIGTERM/SIGINT",
    type=float,
)

app_log = logging.getLogger("demo")

MAX_DELAY_SECONDS = 60.0


class DelayedWorkHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    """``GET /?delay=SECONDS[&error=ANY]``: wait, do the work, always clean up."""

    async def get(self) -> None:
        delay = self._delay_argument()
        failing = self.get_argument("error", None) is not None
        await asyncio.sleep(delay)  # a client that leaves now cancels us here
        app_log.info("doing application stuff...")
        if failing:
            raise tornado.web.HTTPError(400, reason="oops!")
        await self.finish("ok!\n")

    def on_finish(self) -> None:
        # Runs exactly once per request: after success, failure, cancellation, or a
        # client that was gone before the handler even started.
        app_log.info("doing some application clean up...")

    def _delay_argument(self) -> float:
        raw = self.get_argument("delay", "0")
        try:
            delay = float(raw)
        except ValueError:
            delay = math.nan
        if not 0 <= delay <= MAX_DELAY_SECONDS:  # also rejects nan
            raise tornado.web.HTTPError(
                400, reason=f"delay must be a number of seconds from 0 to {MAX_DELAY_SECONDS:g}"
            )
        return delay


class ErrorShowcase(tornado.web.RequestHandler):
    """``GET /errors/{json,html,negotiated}?kind=...``: one error of each kind.

    ``kind`` is ``notfound``, ``ratelimit``, ``bug`` (an unexpected exception: a
    bare 500 that leaks nothing) or ``echo`` (``msg`` is shown back, escaped).
    """

    def get(self) -> None:
        kind = self.get_argument("kind", "notfound")
        if kind == "notfound":
            raise NotFound("No such widget")
        if kind == "ratelimit":
            raise TooManyRequests("Slow down", retry_after=2)
        if kind == "bug":
            raise RuntimeError("internal detail that must never reach the client")
        if kind == "echo":
            raise BadRequest(f"You said: {self.get_argument('msg', '')}")
        raise BadRequest("kind must be one of notfound, ratelimit, bug, echo", "INVALID_PARAM")


class JsonErrorShowcase(JsonErrorMixin, ErrorShowcase):
    pass


class HtmlErrorShowcase(HtmlErrorMixin, ErrorShowcase):
    pass


class NegotiatedErrorShowcase(NegotiatedErrorMixin, ErrorShowcase):
    pass


# -- the /api/v1 JSON API, built with the servlet registry -----------------------

MAX_BIG_ITEMS = 1_000_000


class EchoServlet(JsonServlet):
    """``GET /api/v1/echo/{n:int}`` echoes the converted parameter; ``POST`` echoes JSON."""

    PATTERNS = ("/echo/{n:int}",)

    def on_GET(self, n: int) -> dict[str, object]:
        return {"n": n, "type": type(n).__name__, "doubled": n * 2}

    def on_POST(self, n: int) -> tuple[int, dict[str, object]]:
        body = self.json_body
        return 201, {"n": n, "name": require(body, "name", str), "body": body}


class SlowServlet(JsonServlet):
    """``GET /api/v1/slow?delay=S``: cancelled at its await if the client leaves."""

    PATTERNS = ("/slow",)

    async def on_GET(self) -> dict[str, object]:
        delay = _bounded_float(self.get_argument("delay", "2"), "delay", 0, MAX_DELAY_SECONDS)
        try:
            await asyncio.sleep(delay)
            app_log.info("slow: work done after %.2fs", delay)
            return {"slept": delay}
        finally:
            app_log.info("slow: clean up")


class BigServlet(JsonServlet):
    """``GET /api/v1/big?items=N``: a large JSON document, encoded without blocking the loop."""

    PATTERNS = ("/big",)

    async def on_GET(self) -> dict[str, object]:
        count = int(_bounded_float(self.get_argument("items", "10000"), "items", 0, MAX_BIG_ITEMS))
        items = [{"id": i, "name": f"item {i}", "even": i % 2 == 0} for i in range(count)]
        return {"count": count, "items": items}


class HelloPage(HtmlServlet):
    """``GET /api/v1/hello/{name}``: an HTML page (the name is escaped)."""

    PATTERNS = ("/hello/{name}",)

    def on_GET(self, name: str) -> str:
        safe_name = tornado.escape.xhtml_escape(name)
        return f"<!DOCTYPE html><title>Hello</title><h1>Hello, {safe_name}!</h1>"


def _rss_kb() -> int:
    """Resident set size of this process in KiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _bounded_float(raw: str, name: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:
        raise BadRequest(
            f"{name} must be a number from {low:g} to {high:g}", "INVALID_PARAM", param=name
        )
    return value


def make_registry(metrics: InMemoryMetrics | None = None) -> ServletRegistry:
    registry = ServletRegistry(metrics=metrics)
    for servlet in (EchoServlet, SlowServlet, BigServlet, HelloPage):
        registry.register(servlet)

    @registry.route("/metrics")
    def metrics_view(handler: JsonServlet) -> dict[str, object]:
        """Request counts by servlet and status, plus process health for soak tests."""
        counts = {} if metrics is None else metrics.requests
        return {
            "requests": {f"{name} {status}": n for (name, status), n in sorted(counts.items())},
            "pending_tasks": len(asyncio.all_tasks()),
            "rss_kb": _rss_kb(),
        }

    return registry


def make_app(**settings: object) -> tornado.web.Application:
    registry = make_registry(InMemoryMetrics())
    return tornado.web.Application(
        [
            (r"/", DelayedWorkHandler),
            (r"/errors/json", JsonErrorShowcase),
            (r"/errors/html", HtmlErrorShowcase),
            (r"/errors/negotiated", NegotiatedErrorShowcase),
            *registry.urlspecs("/api/v1"),
        ],
        **settings,
    )


def main() -> None:
    tornado.options.parse_command_line()
    if options.debug and options.processes != 1:
        # Autoreload restarts one process; it cannot restart a family of forked workers.
        raise SystemExit("--debug needs --processes=1")
    app_log.info(
        "listening on http://%s:%d/ (%s)",
        options.address,
        options.port,
        "one process per CPU" if options.processes == 0 else f"processes: {options.processes}",
    )
    serve(
        functools.partial(make_app, debug=options.debug),
        options.port,
        options.address,
        processes=options.processes,
        shutdown_grace=options.shutdown_grace,
    )


if __name__ == "__main__":
    main()
