"""The benchmark payloads served by Starlette on uvicorn: ``python starlette_app.py PORT``.

Idiomatic Starlette: ``JSONResponse`` (the stdlib encoder), uvicorn with its defaults
(uvloop and httptools when installed, as with ``uvicorn[standard]``), no access log.
Starlette does not cancel an endpoint when its client leaves; a ``StreamingResponse``
is the place where a disconnect can reach the code, so ``/wait`` uses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from apps import BIG, SMALL

CANCELLED_AT: dict[str, float] = {}


async def small(request: Request) -> Response:
    return JSONResponse(SMALL)


async def big(request: Request) -> Response:
    return JSONResponse(BIG)


async def wait(request: Request) -> Response:
    ident = request.path_params["ident"]

    async def body() -> AsyncIterator[bytes]:
        yield b" "
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            CANCELLED_AT[ident] = time.monotonic()
            raise

    return StreamingResponse(body())


async def stats(request: Request) -> Response:
    return Response(json.dumps(CANCELLED_AT), media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    print("ready starlette json", flush=True)
    yield


app = Starlette(
    routes=[
        Route("/small", small),
        Route("/big", big),
        Route("/wait/{ident}", wait),
        Route("/stats", stats),
    ],
    lifespan=lifespan,
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
