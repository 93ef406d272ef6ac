"""The servers the benchmarks compare: bare Tornado and the toolkit, same payloads.

Run one with ``python benchmarks/apps.py {bare,toolkit,servlet} PORT``. It binds
127.0.0.1 only. ``toolkit`` is a hand-built mixin stack (``CancelOnDisconnectMixin +
JsonErrorMixin + JsonResponseMixin + LeanResponseMixin``, ``await write_json(...)``);
``servlet`` is the path the README shows: ``JsonServlet`` subclasses registered with a
``ServletRegistry``, whose ``on_GET`` returns the document.

``/small`` and ``/big`` (1 MB) are the JSON payloads; ``/wait/{id}`` sends its headers
and one byte, then waits, and stamps the moment its handler is cancelled (if ever),
which ``/stats`` reports: the disconnect-latency probe of ``peers.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import tornado.web

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

from tornado_jsonservlet import (
    CancelOnDisconnectMixin,
    JsonErrorMixin,
    JsonResponseMixin,
    JsonServlet,
    LeanResponseMixin,
    ServletRegistry,
    active_backend,
)

SMALL = {"id": 12345, "name": "widget", "tags": ["a", "b", "c"], "price": 9.99, "active": True}


def big_document(target_bytes: int) -> dict[str, Any]:
    """About ``target_bytes`` of JSON: a list of small records (~100 bytes each)."""
    count = max(1, target_bytes // 100)
    return {
        "count": count,
        "items": [
            {"id": i, "name": f"item-{i}", "score": i * 0.5, "tags": ["x", "y"], "ok": i % 2 == 0}
            for i in range(count)
        ],
    }


BIG = big_document(1_000_000)
SIZES: dict[int, dict[str, Any]] = {}


def sized(mb: int) -> dict[str, Any]:
    if mb not in SIZES:
        SIZES[mb] = big_document(mb * 1_000_000)
    return SIZES[mb]


class BareSmall(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(SMALL)


class BareBig(tornado.web.RequestHandler):
    def get(self) -> None:
        mb = int(self.get_argument("mb", "0"))
        self.write(sized(mb) if mb else BIG)


class BareFresh(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(big_document(int(self.get_argument("mb", "1")) * 1_000_000))


class Toolkit(
    CancelOnDisconnectMixin,
    JsonErrorMixin,
    JsonResponseMixin,
    LeanResponseMixin,
    tornado.web.RequestHandler,
):
    pass


class ToolkitSmall(Toolkit):
    async def get(self) -> None:
        await self.write_json(SMALL)


class ToolkitBig(Toolkit):
    async def get(self) -> None:
        mb = int(self.get_argument("mb", "0"))
        await self.write_json(sized(mb) if mb else BIG)


class ToolkitFresh(Toolkit):
    async def get(self) -> None:
        # A document built for this request only, as most handlers do: once it is
        # encoded, nothing but the response should keep it alive.
        await self.write_json(big_document(int(self.get_argument("mb", "1")) * 1_000_000))


#: ident -> time.monotonic() when the handler's CancelledError arrived
CANCELLED_AT: dict[str, float] = {}


async def wait_for_cancellation(handler: tornado.web.RequestHandler, ident: str) -> None:
    handler.write(" ")
    await handler.flush()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        CANCELLED_AT[ident] = time.monotonic()
        raise


class BareWait(tornado.web.RequestHandler):
    async def get(self, ident: str) -> None:
        await wait_for_cancellation(self, ident)


class ToolkitWait(Toolkit):
    async def get(self, ident: str) -> None:
        await wait_for_cancellation(self, ident)


class SmallServlet(JsonServlet):
    PATTERNS = ("/small",)

    async def on_GET(self) -> Any:
        return SMALL


class BigServlet(JsonServlet):
    PATTERNS = ("/big",)

    async def on_GET(self) -> Any:
        mb = int(self.get_argument("mb", "0"))
        return sized(mb) if mb else BIG


class WaitServlet(JsonServlet):
    PATTERNS = ("/wait/{ident}",)

    async def on_GET(self, ident: str) -> None:
        await wait_for_cancellation(self, ident)


def servlet_routes() -> list[Any]:
    registry = ServletRegistry()
    for servlet in (SmallServlet, BigServlet, WaitServlet):
        registry.register(servlet)
    return registry.urlspecs(catch_all=False)


class Stats(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(json.dumps(CANCELLED_AT))


def make_app(kind: str) -> tornado.web.Application:
    routes: list[Any]
    if kind == "bare":
        routes = [(r"/small", BareSmall), (r"/big", BareBig), (r"/wait/(\w+)", BareWait)]
        routes.append((r"/fresh", BareFresh))
    elif kind == "toolkit":
        routes = [(r"/small", ToolkitSmall), (r"/big", ToolkitBig), (r"/wait/(\w+)", ToolkitWait)]
        routes.append((r"/fresh", ToolkitFresh))
    elif kind == "servlet":
        routes = servlet_routes()
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    routes.append((r"/stats", Stats))
    # Default settings on both sides, and no access log (as for the peers): the
    # toolkit logs a departed client's 499 at WARNING, which Python's last-resort
    # handler would otherwise print to stderr during the disconnect measurement.
    return tornado.web.Application(routes, log_function=lambda handler: None)


async def main(kind: str, port: int, preload_mb: int = 0) -> None:
    if preload_mb:
        sized(preload_mb)  # build the document now, so it is part of the baseline RSS
    make_app(kind).listen(port, address="127.0.0.1")
    encoder = "json" if kind == "bare" else active_backend()  # bare: Tornado's json.dumps
    print(f"ready {kind} {encoder}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0))
