"""The benchmark payloads served by aiohttp: ``python aiohttp_app.py PORT``.

Idiomatic aiohttp: ``web.json_response`` (the stdlib encoder), no access log, and
``handler_cancellation=True`` (aiohttp >= 3.9; off by default since 3.8.0) so that
a disconnect cancels the handler and the latency probe has something to measure.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from apps import BIG, SMALL

CANCELLED_AT: dict[str, float] = {}


async def small(request: web.Request) -> web.Response:
    return web.json_response(SMALL)


async def big(request: web.Request) -> web.Response:
    return web.json_response(BIG)


async def wait(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b" ")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        CANCELLED_AT[request.match_info["ident"]] = time.monotonic()
        raise
    return response


async def stats(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(CANCELLED_AT))


async def main(port: int) -> None:
    app = web.Application()
    app.add_routes(
        [
            web.get("/small", small),
            web.get("/big", big),
            web.get("/wait/{ident}", wait),
            web.get("/stats", stats),
        ]
    )
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready aiohttp json", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
