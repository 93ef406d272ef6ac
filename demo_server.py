"""Demo server: the classic "client went away mid-request" problem, solved.

Run::

    python demo_server.py --port=8888 --logging=debug

``GET /?delay=3`` waits three seconds, logs ``doing application stuff...`` and
answers ``ok!``; add ``&error=yes`` to have it fail with a 400 instead. Every
request logs ``doing some application clean up...`` exactly once when it ends.

It logs with Tornado's pretty logging (``--logging=debug|info|warning|none``,
``--log-file-prefix=PATH``: the ``tornado.options`` logging options), starting with the
address it listens on and each worker's ``serving on http://...`` line.

``--processes=N`` runs N worker processes on the port (0: one per CPU); SIGTERM
or Ctrl-C lets in-flight requests finish for ``--shutdown-grace`` seconds (10),
then answers what is left with 503 ``SHUTTING_DOWN``.

Kill the client during the delay (``curl 'localhost:8888/?delay=3' & sleep 1;
kill %1``) and the delayed work never runs: the handler is cancelled at its
``await``, the clean-up still runs, the access log shows 499, and nothing is
logged at ERROR. Plain Tornado would run the work for nobody, log a
``StreamClosedError`` traceback, and record a 200.

``GET /events`` shows a live counter fed by server-sent events from
``/api/v1/events/counter``; ``/events?drop_after=5&retry=500`` has the server end
each stream after five events, and the browser resumes where it left off.
``GET /chain?delay=3`` does the same one hop away: it fetches this server's own
``/?delay=3`` through the cancellable HTTP client. Kill the client and both requests
are cancelled and logged as 499; the inner work never runs.

``/api/v1/users`` is a typed resource (create, list, get, update, delete) whose
inputs are validated from its methods' type hints; ``/api/v1/docs`` shows it, with
the rest of the API, from ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import itertools
import logging
import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Optional

import msgspec
import tornado.escape
import tornado.options
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.options import define, options

from tornado_jsonservlet import (
    BadRequest,
    CancelOnDisconnectMixin,
    EventStreamServlet,
    HtmlErrorMixin,
    HtmlServlet,
    InMemoryMetrics,
    JsonErrorMixin,
    JsonServlet,
    NegotiatedErrorMixin,
    NotFound,
    ServletError,
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


class ChainHandler(CancelOnDisconnectMixin, JsonErrorMixin, tornado.web.RequestHandler):
    """``GET /chain?delay=SECONDS``: ``/?delay=SECONDS`` of this server, fetched over HTTP.

    A service calling another one. With ``AsyncHTTPClient`` configured as the
    cancellable client (``main()`` does), a client that leaves cancels this handler,
    which aborts the fetch, whose closed connection cancels the inner handler.
    """

    def initialize(self, upstream: str) -> None:
        self.upstream = upstream

    async def get(self) -> None:
        delay = _bounded_float(self.get_argument("delay", "0"), "delay", 0, MAX_DELAY_SECONDS)
        url = f"{self.upstream}/?delay={delay:g}"
        app_log.info("chain: fetching %s", url)
        try:
            response = await AsyncHTTPClient().fetch(url, request_timeout=MAX_DELAY_SECONDS + 5)
        except (HTTPClientError, OSError) as error:
            app_log.warning("chain: %s failed: %s", url, error)
            raise ServletError(502, "The inner request failed", "UPSTREAM_FAILED") from None
        await self.finish(b"chain: " + response.body)


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


# -- server-sent events: a counter that resumes where the client left off ---------

MAX_EVENTS_PER_CONNECTION = 1000


class CounterEvents(EventStreamServlet):
    """``GET /api/v1/events/counter?every=S&drop_after=N&retry=MS``: an SSE counter.

    Sends ``{"n": n, "time": ...}`` with id ``n`` every ``every`` seconds (default 1),
    starting after the client's ``Last-Event-ID``, so a reconnecting client resumes
    without a gap or a duplicate. With ``drop_after=N`` the server ends the stream
    after N events (the browser then reconnects after ``retry`` milliseconds).
    """

    PATTERNS = ("/events/counter",)

    async def on_GET(self) -> None:
        every = _bounded_float(self.get_argument("every", "1"), "every", 0.01, MAX_DELAY_SECONDS)
        drop_after = int(
            _bounded_float(
                self.get_argument("drop_after", "0"), "drop_after", 0, MAX_EVENTS_PER_CONNECTION
            )
        )
        retry = self.get_argument("retry", None)
        retry_ms = None if retry is None else int(_bounded_float(retry, "retry", 0, 60_000))
        resume_from = self.last_event_id
        if resume_from is not None and not (resume_from.isdigit() and len(resume_from) < 16):
            raise BadRequest(
                "Last-Event-ID must be a counter value", "INVALID_HEADER", header="Last-Event-ID"
            )
        n = int(resume_from or 0)
        app_log.info("counter: stream starts after n=%d (Last-Event-ID %r)", n, resume_from)
        sent = 0
        while not drop_after or sent < drop_after:
            n += 1
            sent += 1
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
            await self.send_event({"n": n, "time": now}, id=n, retry=retry_ms)
            retry_ms = None  # once is enough
            await asyncio.sleep(every)
        app_log.info("counter: server ends the stream at n=%d", n)


_EVENTS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Server-sent events</title>
<script src="/events/page.js" defer></script>
</head>
<body>
<h1>Counter</h1>
<p>Status: <span id="status">connecting</span></p>
<p>Last: <span id="last">-</span></p>
<ol id="events"></ol>
</body>
</html>
"""

# No markup is built from data: values go in with textContent. The stream's
# parameters come from the page's own query string and are re-encoded.
_EVENTS_SCRIPT = """"use strict";
window.receivedIds = [];
window.openCount = 0;
const page = new URLSearchParams(window.location.search);
const query = new URLSearchParams();
for (const name of ["every", "drop_after", "retry"]) {
  if (page.has(name)) query.set(name, page.get(name));
}
const source = new EventSource("/api/v1/events/counter?" + query.toString());
const status = document.getElementById("status");
source.onopen = () => { window.openCount += 1; status.textContent = "open"; };
source.onerror = () => { status.textContent = "reconnecting"; };
source.onmessage = (event) => {
  const value = JSON.parse(event.data);
  window.receivedIds.push(event.lastEventId);
  document.getElementById("last").textContent = value.n + " at " + value.time;
  const item = document.createElement("li");
  item.textContent = "#" + event.lastEventId + ": " + event.data;
  const list = document.getElementById("events");
  list.prepend(item);
  while (list.children.length > 20) list.lastElementChild.remove();
};
"""


class EventsPage(tornado.web.RequestHandler):
    """``GET /events[?every=S&drop_after=N&retry=MS]``: a page showing the counter."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", "default-src 'self'")
        self.set_header("X-Content-Type-Options", "nosniff")

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(_EVENTS_PAGE)


class EventsScript(EventsPage):
    def get(self) -> None:
        self.set_header("Content-Type", "text/javascript; charset=UTF-8")
        self.finish(_EVENTS_SCRIPT)


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


# -- a typed resource: /api/v1/users, validated and documented from type hints --------

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Age = Annotated[int, msgspec.Meta(ge=0, le=150)]
MAX_USERS = 10_000


class UserIn(msgspec.Struct, forbid_unknown_fields=True):
    """What a client sends to create or replace a user."""

    name: Name
    email: Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+$", max_length=200)]
    age: Optional[Age] = None


class User(UserIn):
    """A stored user."""

    id: int = 0
    created: datetime.datetime = msgspec.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
    )


class UserPage(msgspec.Struct):
    items: list[User]
    total: int


class Users(JsonServlet):
    PATTERNS = ("/users",)

    def initialize(self, store: dict[int, User], ids: Iterator[int]) -> None:
        self.store, self.ids = store, ids

    def on_GET(
        self,
        limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20,
        offset: Annotated[int, msgspec.Meta(ge=0)] = 0,
        min_age: Optional[Age] = None,
        order: Literal["id", "name"] = "id",
    ) -> UserPage:
        """List users, filtered by age and paginated."""
        found = [u for u in self.store.values() if min_age is None or (u.age or 0) >= min_age]
        found.sort(key=lambda u: u.id if order == "id" else u.name)
        return UserPage(items=found[offset : offset + limit], total=len(found))

    def on_POST(self, body: UserIn) -> tuple[Literal[201], User]:
        """Create a user."""
        if len(self.store) >= MAX_USERS:
            raise ServletError(409, "Too many users in this demo", "LIMIT_EXCEEDED")
        user_id = next(self.ids)  # never reused: a deleted user's URL stays a 404
        user = self.store[user_id] = User(**msgspec.structs.asdict(body), id=user_id)
        return 201, user


class UserById(JsonServlet):
    PATTERNS = ("/users/{user_id:int}",)

    def initialize(self, store: dict[int, User]) -> None:
        self.store = store

    def _find(self, user_id: int) -> User:
        if user_id not in self.store:
            raise NotFound("No such user")
        return self.store[user_id]

    def on_GET(self, user_id: int) -> User:
        """Get one user."""
        return self._find(user_id)

    def on_PUT(self, user_id: int, body: UserIn) -> User:
        """Replace a user's fields."""
        old = self._find(user_id)
        fields = msgspec.structs.asdict(body)
        user = self.store[user_id] = User(**fields, id=user_id, created=old.created)
        return user

    def on_DELETE(self, user_id: int) -> tuple[Literal[204], None]:
        """Delete a user."""
        self._find(user_id)
        del self.store[user_id]
        return 204, None


def make_registry(metrics: InMemoryMetrics | None = None) -> ServletRegistry:
    registry = ServletRegistry(metrics=metrics)
    for servlet in (EchoServlet, SlowServlet, BigServlet, HelloPage, CounterEvents):
        registry.register(servlet)
    store: dict[int, User] = {}
    registry.register(Users, store=store, ids=itertools.count(1))
    registry.register(UserById, store=store)
    registry.mount_openapi(title="tornado-jsonservlet demo", version="1.0")

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


class DeadlineChainHandler(ChainHandler):
    """``GET /chain/deadline?delay=SECONDS``: ``/chain`` with a one-second deadline.

    Past the deadline the client gets 504 ``DEADLINE_EXCEEDED``; the inner request
    was told the time left (``X-Envoy-Expected-Rq-Timeout-Ms``) and stops too.
    """

    request_deadline = 1.0


def make_app(chain_upstream: str | None = None, **settings: object) -> tornado.web.Application:
    """The demo application. ``chain_upstream`` (this server's own base URL) enables
    ``/chain``; ``main()`` passes it."""
    registry = make_registry(InMemoryMetrics())
    chain: list[Any] = []
    if chain_upstream is not None:
        chain = [
            (r"/chain", ChainHandler, {"upstream": chain_upstream}),
            (r"/chain/deadline", DeadlineChainHandler, {"upstream": chain_upstream}),
        ]
    # Every handler honours the deadline its caller sends (the inner hop of /chain).
    settings.setdefault("accept_deadline_header", True)
    return tornado.web.Application(
        [
            (r"/", DelayedWorkHandler),
            *chain,
            (r"/errors/json", JsonErrorShowcase),
            (r"/errors/html", HtmlErrorShowcase),
            (r"/errors/negotiated", NegotiatedErrorShowcase),
            (r"/events", EventsPage),
            (r"/events/page\.js", EventsScript),
            *registry.urlspecs("/api/v1"),
        ],
        **settings,
    )


def main() -> None:
    tornado.options.parse_command_line()
    if options.debug and options.processes != 1:
        # Autoreload restarts one process; it cannot restart a family of forked workers.
        raise SystemExit("--debug needs --processes=1")
    # Outbound requests abort when the handler awaiting them is cancelled.
    AsyncHTTPClient.configure("tornado_jsonservlet.outbound.CancellableHTTPClient")
    host = options.address if options.address not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    app_log.info(
        "listening on http://%s:%d/ (%s)",
        options.address,
        options.port,
        "one process per CPU" if options.processes == 0 else f"processes: {options.processes}",
    )
    serve(
        functools.partial(
            make_app, chain_upstream=f"http://{host}:{options.port}", debug=options.debug
        ),
        options.port,
        options.address,
        processes=options.processes,
        shutdown_grace=options.shutdown_grace,
    )


if __name__ == "__main__":
    main()
