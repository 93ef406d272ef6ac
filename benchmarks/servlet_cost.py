"""Where a small JSON request's time goes on the servlet path, in one process.

Usage::

    python benchmarks/servlet_cost.py [--requests 4000] [--rounds 7] [-c 8]
    python benchmarks/servlet_cost.py --profile servlet [--against stack] [--requests 20000]
    python benchmarks/servlet_cost.py --micro 20000

A real Tornado ``HTTPServer`` and a minimal keep-alive client share one event loop in
this process, pinned to one CPU: the client is an ``asyncio.Protocol`` on ``-c``
connections that sends the next ``GET /small`` as soon as a response is complete.
Nothing is faked: requests go through the kernel's loopback, Tornado's HTTP/1 code,
the handler and the socket writes, exactly as under wrk.

The default mode measures the process CPU time per request (``time.process_time``)
of several servers, in rounds whose order rotates, and prints the median per server.
The client's own cost is the same for all of them, so the *differences* are what the
servers cost relative to each other:

* ``bare``: Tornado's ``self.write(dict)``; ``stack``: the hand-built mixin stack of
  ``apps.py``; ``servlet``: the README's path (``JsonServlet`` registered with a
  ``ServletRegistry``, ``async def on_GET`` returning the dict);
* ablations of the servlet, each removing one piece of its per-request work (for this
  GET without a body or path parameters the response is the same), so that the
  difference to ``servlet`` is what that piece costs. They subclass the servlet in this
  script; the package is not changed.

``--profile KIND`` runs one server under cProfile and prints, per request, the own time
of the most expensive functions and the cumulative time of the servlet's layers.
cProfile inflates every Python call, so the script also prints the unprofiled CPU per
request and scales the profiled figures to it (an estimate: calls are not inflated
alike). Binds 127.0.0.1 only; every run is bounded by its request count and a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import inspect
import os
import pstats
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any, Callable, Optional

import tornado.httpserver
import tornado.web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import SMALL, BareSmall, ToolkitSmall, make_app
from loadgen import SERVER_CPU

from tornado_jsonservlet import JsonServlet, ServletRegistry
from tornado_jsonservlet.core.scope import scope_of
from tornado_jsonservlet.errors.cors import CorsMixin
from tornado_jsonservlet.jsonio.bodies import JsonBodyMixin
from tornado_jsonservlet.routing.servlets import _ServletBase
from tornado_jsonservlet.routing.signatures import DISPATCHER_COPY_MARK

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
TIMEOUT = 120.0  # seconds, for any one measurement


# -- the servers ---------------------------------------------------------------------------


class SyncServlet(JsonServlet):
    """The servlet with a plain ``def on_GET``: no coroutine of its own."""

    PATTERNS = ("/small",)

    def on_GET(self) -> Any:
        return SMALL


class NoStreamBody(SyncServlet):
    """Not ``@stream_request_body``: Tornado reads the (empty) body before ``get()``."""

    _stream_request_body = False


class NoCompleteBody(SyncServlet):
    """Skips ``_complete_body`` (joining chunks, parsing the empty Content-Type)."""

    def _jsonservlet_complete_body(self) -> None:
        scope_of(self).servlet.body_complete = True


class NoConvertParams(SyncServlet):
    """Skips ``_convert_params`` (the path's ASCII check and the converter loop)."""

    def _jsonservlet_convert_params(self, raw_params: Any) -> dict[str, Any]:
        return {}


class NoCorsHeaders(SyncServlet):
    """Skips ``CorsMixin.set_default_headers`` (an ``Origin`` look-up per request)."""

    def set_default_headers(self) -> None:
        super(CorsMixin, self).set_default_headers()


class NoJsonPrepare(SyncServlet):
    """Skips ``JsonBodyMixin.prepare`` (the ``Content-Length`` check)."""

    def prepare(self) -> Any:
        return super(JsonBodyMixin, self).prepare()


class NoDispatch(SyncServlet):
    """``get()`` writes the document itself: no ``_dispatch`` at all."""

    async def get(self, *args: str, **kwargs: str) -> None:
        await self.write_json(SMALL)


class NoDispatchSyncGet(SyncServlet):
    """``get()`` is a plain method returning ``write_json``'s future: no coroutine."""

    def get(self, *args: str, **kwargs: str) -> Any:  # type: ignore[override]
        return self.write_json(SMALL)


def _registry_app(servlet: type[JsonServlet]) -> tornado.web.Application:
    if any(
        verb in klass.__dict__ and not getattr(klass.__dict__[verb], DISPATCHER_COPY_MARK, False)
        for klass in servlet.__mro__
        if klass.__module__ == __name__
        for verb in ("get", "head")
    ):
        # An ablation replacing the dispatching get(): the registry refuses such a
        # servlet (its methods are on_GET), so it is routed by hand.
        return _plain_app(servlet)
    registry = ServletRegistry()
    registry.register(servlet)
    return tornado.web.Application(
        registry.urlspecs(catch_all=False), log_function=lambda handler: None
    )


class Proposed(JsonServlet):
    """``servlet`` with the fast paths proposed for ``routing/servlets.py``,
    ``errors/cors.py`` and ``jsonio/responses.py`` (see benchmarks/README.md), applied
    here by overriding, to measure them before they land. Same responses."""

    PATTERNS = ("/small",)

    async def on_GET(self) -> Any:
        return SMALL

    # get()/head() return _dispatch's coroutine: one coroutine less per request.
    def get(self, *args: str, **kwargs: str) -> Any:  # type: ignore[override]
        return self._jsonservlet_dispatch("GET", kwargs)

    def head(self, *args: str, **kwargs: str) -> Any:  # type: ignore[override]
        return self._jsonservlet_dispatch("GET", kwargs)

    def _jsonservlet_complete_body(self) -> None:
        if scope_of(self).json_body is None:
            # Nothing was streamed: request.body is Tornado's b"" and there is no
            # form to parse.
            scope_of(self).servlet.body_complete = True
            return
        super()._jsonservlet_complete_body()

    def set_default_headers(self) -> None:
        if self.cors_allow_origins:
            super().set_default_headers()
        else:
            # CORS off: no Origin look-up, the rest of the MRO as before.
            super(CorsMixin, self).set_default_headers()

    # A plain method returning write_json's awaitable: one coroutine less.
    def send_body(self, status: int, body: Any) -> Any:  # type: ignore[override]
        return self.write_json(body, status)


class ProposedNoStream(Proposed):
    """``proposed`` without the streamed body (Tornado's two extra loop trips)."""

    _stream_request_body = False


#: The handler of the last request served by ``Captured``, for ``--micro``.
CAPTURED: list[JsonServlet] = []


class Captured(SyncServlet):
    """Keeps its handler, so that ``--micro`` can time its methods after the request."""

    def on_GET(self) -> Any:
        CAPTURED[:] = [self]
        return SMALL


def _route_app() -> tornado.web.Application:
    registry = ServletRegistry()

    @registry.route("/small")
    def small(handler: JsonServlet) -> Any:
        return SMALL

    return tornado.web.Application(
        registry.urlspecs(catch_all=False), log_function=lambda handler: None
    )


def _plain_app(handler: type[tornado.web.RequestHandler]) -> tornado.web.Application:
    return tornado.web.Application([(r"/small", handler)], log_function=lambda handler: None)


#: name -> (what it is, application factory)
SERVERS: dict[str, tuple[str, Callable[[], tornado.web.Application]]] = {
    "bare": ("Tornado self.write(dict)", lambda: _plain_app(BareSmall)),
    "stack": ("hand-built mixin stack, write_json", lambda: _plain_app(ToolkitSmall)),
    "servlet": ("JsonServlet, async def on_GET (compare.py)", lambda: make_app("servlet")),
    "proposed": ("servlet + proposed fast paths", lambda: _registry_app(Proposed)),
    "proposed-stream": (
        "proposed, bodiless requests not streamed",
        lambda: _registry_app(ProposedNoStream),
    ),
    "route": ("@registry.route function, plain def", _route_app),
    "servlet-sync": ("the same, plain def on_GET", lambda: _registry_app(SyncServlet)),
    "-stream": ("servlet-sync without @stream_request_body", lambda: _registry_app(NoStreamBody)),
    "-complete-body": (
        "servlet-sync without _complete_body",
        lambda: _registry_app(NoCompleteBody),
    ),
    "-convert": ("servlet-sync without _convert_params", lambda: _registry_app(NoConvertParams)),
    "-cors": ("servlet-sync without CORS default headers", lambda: _registry_app(NoCorsHeaders)),
    "-json-prepare": (
        "servlet-sync without JsonBodyMixin.prepare",
        lambda: _registry_app(NoJsonPrepare),
    ),
    "-dispatch": ("servlet: async get() calls write_json", lambda: _registry_app(NoDispatch)),
    "-dispatch-sync": (
        "servlet: plain get() returns write_json",
        lambda: _registry_app(NoDispatchSyncGet),
    ),
}


# -- the client ------------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    """One keep-alive connection: a new request as soon as a response is complete."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = b""
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.run.send(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = self.run.length_of(self.buffer, head_end)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            if not self.buffer.startswith(b"HTTP/1.1 200"):
                self.run.fail(self.buffer[:end])
                return
            self.buffer = self.buffer[end:]
            assert self.transport is not None
            self.run.completed(self.transport)


class _Run:
    def __init__(self, requests: int) -> None:
        self.to_send = requests
        self.to_receive = requests
        self.done = asyncio.get_running_loop().create_future()

    def send(self, transport: asyncio.Transport) -> None:
        if self.to_send > 0:
            self.to_send -= 1
            transport.write(REQUEST)

    def completed(self, transport: asyncio.Transport) -> None:
        self.to_receive -= 1
        if self.to_receive == 0 and not self.done.done():
            self.done.set_result(None)
        else:
            self.send(transport)

    @staticmethod
    def length_of(buffer: bytes, head_end: int) -> int:
        head = buffer[: head_end + 2].lower()  # every header line ends with CRLF
        start = head.find(b"content-length:")
        if start < 0:
            raise RuntimeError(f"no Content-Length in {buffer[:head_end]!r}")
        return int(head[start + 15 : head.find(b"\r\n", start)].strip())

    def fail(self, response: bytes) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"unexpected response {response[:200]!r}"))


async def _drive(port: int, connections: int, requests: int) -> None:
    loop = asyncio.get_running_loop()
    run = _Run(requests)
    transports = []
    for _ in range(connections):
        transport, _protocol = await loop.create_connection(lambda: _Client(run), "127.0.0.1", port)
        transports.append(transport)
    try:
        await asyncio.wait_for(run.done, TIMEOUT)
    finally:
        for transport in transports:
            transport.close()
        await asyncio.sleep(0.01)


async def _serve(app: tornado.web.Application) -> tuple[tornado.httpserver.HTTPServer, int]:
    server = tornado.httpserver.HTTPServer(app)
    server.listen(0, address="127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    return server, int(port)


async def cpu_per_request(
    factory: Callable[[], tornado.web.Application], connections: int, requests: int
) -> float:
    """Process CPU microseconds per request, client included, after a warm-up."""
    server, port = await _serve(factory())
    try:
        await _drive(port, connections, min(500, requests))
        before = time.process_time()
        await _drive(port, connections, requests)
        return (time.process_time() - before) / requests * 1e6
    finally:
        server.stop()
        await server.close_all_connections()


# -- reports -----------------------------------------------------------------------------------


async def compare(names: list[str], rounds: int, connections: int, requests: int) -> None:
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await cpu_per_request(SERVERS[name][1], connections, requests))
        print(
            f"round {round_no + 1}: "
            + ", ".join(f"{name}={values[-1]:.1f}" for name, values in samples.items()),
            flush=True,
        )
    med = {name: statistics.median(values) for name, values in samples.items()}
    print(
        f"\nCPU us per request (server + in-process client), medians of {rounds} rotated "
        f"rounds of {requests} requests on {connections} connections, CPU {SERVER_CPU}:"
    )
    for name in names:
        note = ""
        if name.startswith("-"):
            note = f"   {med['servlet-sync'] - med[name]:+6.1f} us saved vs servlet-sync"
        elif name != "bare" and "bare" in med:
            note = f"   {med[name] - med['bare']:+6.1f} us vs bare"
        spread = f"({min(samples[name]):.1f}-{max(samples[name]):.1f})"
        print(f"  {name:<16}{med[name]:>8.1f} {spread:<15} {SERVERS[name][0]:<48}{note}")


#: (label, file suffix, function) of the layers reported by --profile
LAYERS = [
    ("HTTP/1 connection: read request, write response", "http1connection.py", "_read_message"),
    ("handler __init__ (incl. clear())", "web.py", "__init__"),
    ("RequestHandler._execute (whole handler)", "web.py", "_execute"),
    ("  CancelOnDisconnectMixin._execute", "cancellation.py", "_execute"),
    ("  set_default_headers (CORS, Lean)", "cors.py", "set_default_headers"),
    ("  JsonBodyMixin.prepare", "responses.py", "prepare"),
    ("  servlet get() -> _dispatch", "servlets.py", "_dispatch"),
    ("    _complete_body", "servlets.py", "_complete_body"),
    ("    _convert_params", "servlets.py", "_convert_params"),
    ("    send_body -> write_json", "servlets.py", "send_body"),
    ("      write_json", "responses.py", "write_json"),
    ("      JSON encoding", "codec.py", "encode"),
    ("      finish()", "web.py", "finish"),
    ("        flush() + write_headers", "web.py", "flush"),
    ("        _log (access log, metrics)", "web.py", "log_request"),
    ("iostream writes (socket send)", "iostream.py", "_handle_write"),
    ("client: responses read (asyncio transports)", "selector_events.py", "_read_ready"),
    ("client: requests sent (asyncio transports)", "selector_events.py", "write"),
]


async def _profiled(name: str, connections: int, requests: int) -> tuple[pstats.Stats, float]:
    """cProfile of ``requests`` requests to one server, and its CPU us per request."""
    server, port = await _serve(SERVERS[name][1]())
    profiler = cProfile.Profile()
    try:
        await _drive(port, connections, 500)
        profiler.enable()
        before = time.process_time()
        await _drive(port, connections, requests)
        used = (time.process_time() - before) / requests * 1e6
        profiler.disable()
    finally:
        server.stop()
        await server.close_all_connections()
    return pstats.Stats(profiler), used


def _by_function(stats: pstats.Stats, requests: int) -> dict[str, tuple[float, float]]:
    """``file:function`` -> (calls, own us) per request, overrides of one name summed."""
    table: dict[str, tuple[float, float]] = {}
    for (filename, _, function), (_, calls, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = f"{Path(filename).name}:{function}"
        old_calls, old_own = table.get(key, (0.0, 0.0))
        table[key] = (old_calls + calls / requests, old_own + own / requests * 1e6)
    return table


async def profile(
    name: str, connections: int, requests: int, top: int, against: Optional[str]
) -> None:
    plain = await cpu_per_request(SERVERS[name][1], connections, requests)
    stats, profiled = await _profiled(name, connections, requests)
    scale = plain / profiled
    print(
        f"{name} ({SERVERS[name][0]}): {plain:.1f} us/request unprofiled, {profiled:.1f} under "
        f"cProfile; profiled figures are also shown scaled by {scale:.2f} (system calls are "
        "not inflated by the profiler, so scaling understates them)\n"
    )
    print(f"{'layer (cumulative per request)':<52}{'profiled':>10}{'scaled':>9}")
    for label, suffix, function in LAYERS:
        total = _cumulative(stats, suffix, function)
        if total:
            per = total / requests * 1e6
            print(f"  {label:<50}{per:>10.1f}{per * scale:>9.1f}")
    print(f"\nTop {top} functions by own time, us per request (profiled / scaled), calls/request:")
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])  # type: ignore[attr-defined]
    for (filename, line, function), (_, calls, own, _cum, _) in rows[:top]:
        per = own / requests * 1e6
        where = f"{Path(filename).name}:{line}({function})"
        print(f"  {per:>7.2f} {per * scale:>7.2f}  {calls / requests:>5.1f}  {where}")
    mine = _by_function(stats, requests)
    print(f"\nPython function calls per request (client included): {_calls(mine):.0f}")
    if against is None:
        return
    other_stats, _ = await _profiled(against, connections, requests)
    other = _by_function(other_stats, requests)
    print(
        f"\n{name} - {against}: {_calls(mine) - _calls(other):+.0f} calls per request; "
        "functions whose calls or own time differ most (profiled us):"
    )
    keys = set(mine) | set(other)
    diffs = []
    for key in keys:
        calls_a, own_a = mine.get(key, (0.0, 0.0))
        calls_b, own_b = other.get(key, (0.0, 0.0))
        if abs(calls_a - calls_b) >= 0.5 or abs(own_a - own_b) >= 1.0:
            diffs.append((own_a - own_b, calls_a - calls_b, key))
    for own_diff, calls_diff, key in sorted(diffs, key=lambda row: -abs(row[0]))[:top]:
        print(f"  {own_diff:>+8.2f} us  {calls_diff:>+5.1f} calls  {key}")


async def micro(repeat: int) -> None:
    """Time pieces of the servlet's per-request work on a real handler, after its request.

    The handler comes from a real request (``Captured``); each piece is called again on
    it ``repeat`` times, best of 5. A piece's cost is its time minus the time of what
    it would be replaced by (a call to the next class in the MRO, say).
    """
    server, port = await _serve(_registry_app(Captured))
    try:
        await _drive(port, 1, 1)
    finally:
        server.stop()
        await server.close_all_connections()
    handler = CAPTURED[0]
    base = _ServletBase

    async def inner() -> int:
        return 1

    async def outer() -> int:
        return await inner()

    def drive(coroutine: Any) -> None:
        with contextlib.suppress(StopIteration):
            coroutine.send(None)

    pieces: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        (
            "_jsonservlet_convert_params({}) (ASCII check of the path, the converter loop)",
            lambda: handler._jsonservlet_convert_params({}),
            lambda: {},
        ),
        (
            "_jsonservlet_complete_body() with nothing streamed",
            handler._jsonservlet_complete_body,
            lambda: None,
        ),
        (
            "CorsMixin.set_default_headers with CORS off",
            handler.set_default_headers,
            lambda: super(CorsMixin, handler).set_default_headers(),
        ),
        (
            "JsonBodyMixin.prepare (Content-Length look-up)",
            handler.prepare,
            lambda: super(JsonBodyMixin, handler).prepare(),
        ),
        (
            "_ServletBase._jsonservlet_log (metrics check)",
            lambda: handler._jsonservlet_log(lambda: None),
            lambda: super(base, handler)._jsonservlet_log(lambda: None),
        ),
        (
            "getattr(self, f'on_{method}') in _dispatch",
            lambda: getattr(handler, f"on_{'GET'}", None),
            lambda: None,
        ),
        (
            "inspect.isawaitable(result) in _dispatch",
            lambda: inspect.isawaitable(SMALL),
            lambda: None,
        ),
        (
            "one more coroutine layer (created, awaited, returns at once)",
            lambda: drive(outer()),
            lambda: drive(inner()),
        ),
    ]
    empty = _best(lambda: None, repeat)
    print(f"us per call on a real servlet handler, best of 5 x {repeat} (call overhead removed):")
    for label, piece, replacement in pieces:
        cost = _best(piece, repeat) - _best(replacement, repeat)
        print(f"  {cost:>6.2f}  {label}")
    print(f"  (an empty lambda call: {empty:.3f} us)")


def _best(fn: Callable[[], Any], repeat: int) -> float:
    return min(timeit.repeat(fn, number=repeat, repeat=5)) / repeat * 1e6


def _calls(table: dict[str, tuple[float, float]]) -> float:
    return sum(calls for calls, _ in table.values())


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    # Overrides of one name along the MRO nest; the outermost has the largest total.
    return max(
        (
            cumulative
            for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
            if function == name and filename.endswith(suffix)
        ),
        default=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-c", "--connections", type=int, default=8)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--profile", choices=sorted(SERVERS), help="cProfile one server")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--micro", type=int, metavar="N", help="time pieces, N calls each")
    parser.add_argument("--against", choices=sorted(SERVERS), help="with --profile: diff")
    args = parser.parse_args()
    os.sched_setaffinity(0, {SERVER_CPU})
    if args.micro:
        asyncio.run(micro(args.micro))
        return
    if args.profile:
        asyncio.run(profile(args.profile, args.connections, args.requests, args.top, args.against))
        return
    names = [name for name in args.servers.split(",") if name]
    unknown = [name for name in names if name not in SERVERS]
    if unknown:
        parser.error(f"unknown servers {unknown}; choose from {list(SERVERS)}")
    if any(name.startswith("-") for name in names) and "servlet-sync" not in names:
        names.append("servlet-sync")
    asyncio.run(compare(names, args.rounds, args.connections, args.requests))


if __name__ == "__main__":
    main()
