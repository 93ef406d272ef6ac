"""A small application served by ``tornado_jsonservlet.serve``, for the tests that need
real worker processes, real signals, nginx in front, or Prometheus across processes.

Run: ``python -m tests.production_app --port=P [--processes=2] [--grace=1] ...``.
Every handler logs ``started TAG``, then ``finished TAG`` or ``cancelled TAG``, and
always ``cleanup TAG`` (from ``finally``), with the process id and request ID on each line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import tornado.web

from tornado_jsonservlet import (
    CancelOnDisconnectMixin,
    JsonErrorMixin,
    JsonServlet,
    NotFound,
    PrometheusMetrics,
    RequestIdLogFilter,
    RequestIdMixin,
    ServletRegistry,
    serve,
)

log = logging.getLogger("production_app")


class Base(RequestIdMixin, CancelOnDisconnectMixin, JsonErrorMixin, tornado.web.RequestHandler):
    async def work(self, status: int) -> None:
        tag = self.get_argument("tag", "-")
        delay = float(self.get_argument("delay", "0"))
        log.info("started %s", tag)
        try:
            await asyncio.sleep(delay)
            log.info("finished %s", tag)
            self.set_status(status)
            self.write({"tag": tag, "pid": os.getpid(), "request_id": self.request_id})
        except asyncio.CancelledError:
            log.info("cancelled %s", tag)
            raise
        finally:
            log.info("cleanup %s", tag)


class Slow(Base):
    """GET: cancellable by default."""

    async def get(self) -> None:
        await self.work(200)


class Work(Base):
    """POST: not cancellable (the default policy), so it runs on through a shutdown."""

    async def post(self) -> None:
        await self.work(201)


class Plain(tornado.web.RequestHandler):
    """Not a toolkit handler: shutdown can wait for it but not cancel it."""

    async def get(self) -> None:
        log.info("plain handler started")  # what a test waits for before a signal
        await asyncio.sleep(float(self.get_argument("delay", "0")))
        self.write({"pid": os.getpid()})


class Headers(Base):
    """What a proxy passed on, and the client address Tornado derived from it."""

    def get(self) -> None:
        headers = self.request.headers
        self.write(
            {
                "x-forwarded-for": headers.get("X-Forwarded-For"),
                "x-request-id": headers.get("X-Request-ID"),
                "request_id": self.request_id,
                "remote_ip": self.request.remote_ip,
                "pid": os.getpid(),
            }
        )


class Missing(Base):
    def get(self) -> None:
        raise NotFound("No such thing")


class HelloServlet(RequestIdMixin, JsonServlet):
    PATTERNS = ("/hello",)

    def on_GET(self) -> dict[str, object]:
        return {"hello": "world", "pid": os.getpid()}


class Crash(tornado.web.RequestHandler):
    """Ends this worker at once with status 7, as a segfault or an OOM kill would."""

    def get(self) -> None:
        log.info("crashing on purpose")
        os._exit(7)


def _check_start_conditions() -> None:
    if os.environ.get("PRODUCTION_APP_FAIL_START"):
        raise RuntimeError("database unreachable (PRODUCTION_APP_FAIL_START)")
    fail_file = os.environ.get("PRODUCTION_APP_FAIL_START_FILE")
    if fail_file and os.path.exists(fail_file):
        raise RuntimeError("database unreachable (PRODUCTION_APP_FAIL_START_FILE)")
    crash_file = os.environ.get("PRODUCTION_APP_CRASH_FILE")
    if crash_file and os.path.exists(crash_file):
        os._exit(9)  # a crash loop: every new worker dies while starting


def make_app() -> tornado.web.Application:
    _check_start_conditions()
    rules: list[object] = [
        (r"/crash", Crash),
        (r"/slow", Slow),
        (r"/work", Work),
        (r"/plain", Plain),
        (r"/missing", Missing),
        (r"/headers", Headers),
    ]
    if os.environ.get("PRODUCTION_APP_METRICS"):
        from tornado_jsonservlet.production.metrics_handler import metrics_urlspec

        registry = ServletRegistry(metrics=PrometheusMetrics())
        registry.register(HelloServlet)
        rules += [metrics_urlspec(), *registry.urlspecs("/api")]
    return tornado.web.Application(rules)  # type: ignore[arg-type]


async def make_app_async() -> tornado.web.Application:
    """An async factory: runs on the worker's own loop, as a pool's creation would."""
    await asyncio.sleep(0)
    log.info("factory ran in pid %d", os.getpid())
    return make_app()


def startup_hook(app: tornado.web.Application) -> None:
    log.info("startup hook in pid %d", os.getpid())


def shutdown_hook(app: tornado.web.Application) -> None:
    log.info("shutdown hook in pid %d", os.getpid())


async def async_shutdown_hook(app: tornado.web.Application) -> None:
    await asyncio.sleep(0)
    log.info("async shutdown hook in pid %d", os.getpid())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--abandon-after", type=float, default=5.0)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--xheaders", action="store_true")
    parser.add_argument("--max-restarts", type=int, default=None)
    parser.add_argument("--hooks", action="store_true", help="async factory and lifecycle hooks")
    args = parser.parse_args()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(
        logging.Formatter("%(levelname)s pid=%(process)d rid=%(request_id)s %(name)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    hooks: dict[str, object] = {}
    if args.hooks:
        hooks = {"on_startup": [startup_hook], "on_shutdown": [shutdown_hook, async_shutdown_hook]}
    serve(
        make_app_async if args.hooks else make_app,
        args.port,
        max_restarts=args.max_restarts,
        **hooks,  # type: ignore[arg-type]
        processes=args.processes,
        reuse_port=args.reuse_port,
        shutdown_grace=args.grace,
        abandon_after=args.abandon_after,
        xheaders=args.xheaders,
    )


if __name__ == "__main__":
    main()
