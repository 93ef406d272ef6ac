"""A connection the toolkit serves keeps TCP_NODELAY on between responses.

Tornado turns the flag on when a response finishes and off again before the
next request (two system calls per response). The toolkit leaves it on. These
tests read the flag from the server's own socket while requests of one
keep-alive connection are being served, and check that any other
``set_nodelay`` call is still carried out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from tornado_jsonservlet import CancelOnDisconnectMixin, JsonServlet, ServletRegistry
from tornado_jsonservlet import tornado_adapter as tornado_internals


def _nodelay(handler: tornado.web.RequestHandler) -> int:
    stream: Any = handler.request.connection.stream  # type: ignore[union-attr]
    return int(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class Flag(JsonServlet):
    PATTERNS = ("/flag",)

    async def on_GET(self) -> Any:
        return {"nodelay": _nodelay(self)}


class TurnsItOff(JsonServlet):
    PATTERNS = ("/off",)

    async def on_GET(self) -> Any:
        stream: Any = self.request.connection.stream  # type: ignore[union-attr]
        stream.set_nodelay(False)  # an application's own call: carried out
        return {"nodelay": _nodelay(self)}


class PlainFlag(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"nodelay": _nodelay(self)})


def _ws_nodelay(handler: tornado.websocket.WebSocketHandler) -> int:
    stream: Any = handler.ws_connection.stream  # type: ignore[union-attr]
    return int(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class Socket(tornado.websocket.WebSocketHandler):
    def open(self) -> None:
        before = _ws_nodelay(self)
        self.set_nodelay(True)  # the application's call, on the detached stream
        self.write_message(f"{before} {_ws_nodelay(self)}")


class ToolkitSocket(CancelOnDisconnectMixin, Socket):
    pass


def _routes() -> list[Any]:
    registry = ServletRegistry()
    registry.register(Flag)
    registry.register(TurnsItOff)
    return [
        *registry.urlspecs(catch_all=False),
        (r"/plain", PlainFlag),
        (r"/ws", Socket),
        (r"/toolkit-ws", ToolkitSocket),
    ]


@pytest.fixture
def app() -> tornado.web.Application:
    return tornado.web.Application(_routes())


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[bytes, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def _flags(port: int, paths: list[str]) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return [(await _exchange(reader, writer, path))[1] for path in paths]
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=10)
async def test_the_flag_stays_on_between_responses(port: int) -> None:
    bodies = await _flags(port, ["/flag", "/flag", "/flag"])
    assert bodies == [b'{"nodelay":1}'] * 3


@pytest.mark.gen_test(timeout=10)
async def test_plain_tornado_turns_it_off_between_responses(port: int) -> None:
    # What the toolkit changes: a connection only plain handlers served starts
    # every request with Nagle's algorithm back on.
    bodies = await _flags(port, ["/plain", "/plain"])
    assert bodies == [b'{"nodelay": 0}'] * 2


@pytest.mark.gen_test(timeout=10)
async def test_the_connection_keeps_it_for_plain_handlers_after_the_toolkit(port: int) -> None:
    bodies = await _flags(port, ["/plain", "/flag", "/plain", "/plain"])
    assert bodies == [b'{"nodelay": 0}', b'{"nodelay":1}', b'{"nodelay": 1}', b'{"nodelay": 1}']


@pytest.mark.gen_test(timeout=10)
async def test_an_applications_own_call_is_carried_out(port: int) -> None:
    # Turned off by the application, then on again as every response finishes
    # (Tornado's own call, which the toolkit skips only when it changes nothing).
    bodies = await _flags(port, ["/flag", "/off", "/flag"])
    assert bodies == [b'{"nodelay":1}', b'{"nodelay":0}', b'{"nodelay":1}']


_UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _first_message(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> bytes:
    writer.write(_UPGRADE.format(path=path).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    frame = await asyncio.wait_for(reader.readexactly(2), 5)
    assert frame[0] == 0x81  # one unmasked text frame
    return await asyncio.wait_for(reader.readexactly(frame[1]), 5)


@pytest.mark.gen_test(timeout=10)
@pytest.mark.parametrize("path", ["/ws", "/toolkit-ws"])
async def test_a_websocket_starts_as_tornado_starts_it(port: int, path: str) -> None:
    # Upgraded on a connection a toolkit response kept the flag on for, or with
    # the toolkit's mixins itself: the WebSocket starts with Nagle's algorithm
    # on, as Tornado leaves it after a 101, and its own calls are carried out.
    for earlier in ([], ["/flag"]):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for flag_path in earlier:
                assert (await _exchange(reader, writer, flag_path))[1] == b'{"nodelay":1}'
            assert await _first_message(reader, writer, path) == b"0 1"
        finally:
            writer.close()


def test_tornado_still_resets_nagle_where_the_adapter_looks() -> None:
    # If a Tornado release moved the reset, the toolkit would quietly toggle the
    # flag as Tornado does (correct, only slower); this says so first.
    assert tornado_internals._NAGLE_RESET_AFTER_RESPONSE is not None


@pytest.mark.gen_test(timeout=10)
async def test_a_unix_socket_connection_is_served_as_before() -> None:
    # TCP_NODELAY does not exist for a Unix socket: nothing is set, nothing fails.
    class Hello(JsonServlet):
        PATTERNS = ("/hello",)

        async def on_GET(self) -> Any:
            return {"hello": "unix"}

    registry = ServletRegistry()
    registry.register(Hello)
    server = tornado.httpserver.HTTPServer(
        tornado.web.Application(registry.urlspecs(catch_all=False))
    )
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "server.sock")
        server.add_socket(tornado.netutil.bind_unix_socket(path))
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                for _ in range(3):
                    head, body = await _exchange(reader, writer, "/hello")
                    assert head.startswith(b"HTTP/1.1 200 ")
                    assert body == b'{"hello":"unix"}'
            finally:
                writer.close()
        finally:
            server.stop()
            await server.close_all_connections()
