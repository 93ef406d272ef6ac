"""Run as ``python -m tests.e2e.sentry_naming``: one servlet request under Sentry's
Tornado integration, with a transport that keeps the transactions; prints their
names as JSON. A process of its own, because the integration patches Tornado for
the life of the process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import sentry_sdk
import tornado.httpserver
import tornado.netutil
import tornado.web
from sentry_sdk.integrations.tornado import TornadoIntegration
from sentry_sdk.transport import Transport
from tornado.httpclient import AsyncHTTPClient

from tornado_jsonservlet import JsonServlet, ServletRegistry

names: list[str] = []


class Capture(Transport):
    def capture_envelope(self, envelope: Any) -> None:
        for item in envelope.items:
            payload = item.payload.json
            if payload and payload.get("type") == "transaction":
                names.append(payload["transaction"])


sentry_sdk.init(
    dsn="http://key@127.0.0.1:9/1",
    transport=Capture,
    traces_sample_rate=1.0,
    integrations=[TornadoIntegration()],
    default_integrations=False,
)


class UsersServlet(JsonServlet):
    PATTERNS = ("/users/{user_id:int}",)

    def on_GET(self, user_id: int) -> Any:
        return {"id": user_id}


async def main() -> None:
    registry = ServletRegistry()
    registry.register(UsersServlet)
    app = tornado.web.Application(registry.urlspecs("/api"))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    r = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/api/users/3")
    assert r.code == 200
    sentry_sdk.flush()
    print(json.dumps(names))


if __name__ == "__main__":
    asyncio.run(main())
