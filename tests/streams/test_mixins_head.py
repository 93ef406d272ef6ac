"""HEAD on a stream endpoint: the stream's headers, then the end; the connection stays usable.

A HEAD response has no body, so a stream has nothing to send after its headers.
Left to run, the producer would keep the request open forever (writing nothing),
and the keep-alive connection, which serves one request at a time, with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.web

from tests.support import Probe, access_statuses, settle, wait_until
from tornado_jsonservlet import (
    EventStreamMixin,
    EventStreamServlet,
    InMemoryBroadcaster,
    JsonLinesMixin,
    ServletRegistry,
)
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test


class Events(EventStreamMixin, tornado.web.RequestHandler):
    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def get(self) -> None:
        try:
            for n in range(1_000_000):
                await self.send_event({"n": n})
                await asyncio.sleep(0.01)
        finally:
            self.probe.hit("producer-ended")

    async def head(self) -> None:
        await self.get()


class Relayed(EventStreamMixin, tornado.web.RequestHandler):
    def initialize(self, broadcaster: InMemoryBroadcaster) -> None:
        self.broadcaster = broadcaster

    async def get(self) -> None:
        async with self.broadcaster.subscribe("news") as messages:
            await self.relay_events(messages)

    head = get


class Lines(JsonLinesMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        async def forever() -> AsyncIterator[dict[str, Any]]:
            n = 0
            while True:
                yield {"n": n}
                n += 1
                await asyncio.sleep(0.01)

        await self.stream_json_lines(forever())

    head = get


class Ticker(EventStreamServlet):
    PATTERNS = ("/servlet-events",)

    async def on_GET(self) -> None:
        while True:
            await self.send_event("tick")
            await asyncio.sleep(0.01)


class Ping(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("pong")


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    registry = ServletRegistry()
    registry.register(Ticker)
    return tornado.web.Application(
        [
            ("/events", Events, {"probe": probe}),
            ("/relayed", Relayed, {"broadcaster": InMemoryBroadcaster()}),
            ("/lines", Lines),
            ("/ping", Ping),
            *registry.urlspecs(),
        ]
    )


async def read_head(conn: RawHTTPConnection) -> bytes:
    return await asyncio.wait_for(conn.stream.read_until(b"\r\n\r\n"), 5)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/events", b"text/event-stream"),
        ("/relayed", b"text/event-stream"),
        ("/lines", b"application/x-ndjson"),
        ("/servlet-events", b"text/event-stream"),
    ],
)
async def test_head_answers_the_stream_headers_and_ends(port, caplog, path, content_type):
    conn = await RawHTTPConnection.open(port)
    try:
        await conn.send_request("HEAD", path)
        head = await read_head(conn)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert content_type in head
        # The same connection serves the next request: the HEAD has ended.
        await conn.send_request("GET", "/ping")
        answer = await read_head(conn)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        body = await asyncio.wait_for(conn.stream.read_bytes(4), 5)
        assert body == b"pong"
    finally:
        conn.close()
    await settle()
    assert access_statuses(caplog) == [200, 200]


async def test_the_producer_of_a_head_request_is_ended(port, probe):
    conn = await RawHTTPConnection.open(port)
    try:
        await conn.send_request("HEAD", "/events")
        await read_head(conn)
        await wait_until(lambda: "producer-ended" in probe.events, what="the producer ended")
    finally:
        conn.close()
