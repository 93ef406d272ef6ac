"""Demo server: the classic "client went away mid-request" problem, solved.

Run::

    python demo_server.py --port=8888 --logging=debug

``GET /?delay=3`` waits three seconds, logs ``doing application stuff...`` and
answers ``ok!``; add ``&error=yes`` to have it fail with a 400 instead. Every
request logs ``doing some application clean up...`` exactly once when it ends.

Kill the client during the delay (``curl 'localhost:8888/?delay=3' & sleep 1;
kill %1``) and the delayed work never runs: the handler is cancelled at its
``await``, the clean-up still runs, the access log shows 499, and nothing is
logged at ERROR. Plain Tornado would run the work for nobody, log a
``StreamClosedError`` traceback, and record a 200.
"""

from __future__ import annotations

import asyncio
import logging
import math

import tornado.ioloop
import tornado.options
import tornado.web
from tornado.options import define, options

from tornado_jsonservlet import (
    BadRequest,
    CancelOnDisconnectMixin,
    HtmlErrorMixin,
    JsonErrorMixin,
    NegotiatedErrorMixin,
    NotFound,
    TooManyRequests,
)

define("port", default=8888, help="port to listen on", type=int)
define("address", default="127.0.0.1", help="address to bind (loopback by default)")

app_log = logging.getLogger("demo")

MAX_DELAY_SECONDS = 60.0


class DelayedWorkHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    """``GET /?delay=SECONDS[&error=ANY]``: wait, do the work, always clean up."""

    async def get(self) -> None:
        try:
            delay = self._delay_argument()
            failing = self.get_argument("error", None) is not None
            await asyncio.sleep(delay)  # a client that leaves now cancels us here
            app_log.info("doing application stuff...")
            if failing:
                raise tornado.web.HTTPError(400, reason="oops!")
            await self.finish("ok!\n")
        finally:
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


def make_app(**settings: object) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/", DelayedWorkHandler),
            (r"/errors/json", JsonErrorShowcase),
            (r"/errors/html", HtmlErrorShowcase),
            (r"/errors/negotiated", NegotiatedErrorShowcase),
        ],
        **settings,
    )


def main() -> None:
    tornado.options.parse_command_line()
    app = make_app()
    app.listen(options.port, address=options.address)
    app_log.info("listening on http://%s:%d/", options.address, options.port)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
