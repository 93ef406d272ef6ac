"""An early answer reaches the client: a 413 sent before the upload is read.

The client here behaves like most HTTP clients: it sends its whole request, body
included, and only then reads the answer. If the server closes the connection
with part of the body unread, the kernel resets it: the client's ``send`` fails
with "connection reset" or "broken pipe" and it never reads the 413.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Optional

import pytest
import tornado.web

from tests.support import access_statuses, settle, wait_until
from tornado_jsonservlet import CancelOnDisconnectMixin, JsonBodyMixin, JsonErrorMixin
from tornado_jsonservlet.core.connection import DISCARD_MAX_BYTES, discarding_connections

pytestmark = pytest.mark.gen_test


@tornado.web.stream_request_body
class Upload(JsonBodyMixin, JsonErrorMixin, CancelOnDisconnectMixin, tornado.web.RequestHandler):
    json_body_limit = 1000

    async def post(self) -> None:
        self.write({"got": self.json_body})


@pytest.fixture
def app() -> tornado.web.Application:
    return tornado.web.Application([("/upload", Upload)])


def send_then_read(
    port: int, size: int, *, chunked: bool = False
) -> tuple[Optional[OSError], bytes]:
    """Send a ``size``-byte body in full, then read the answer: (send error, answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        head = (
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n"
        )
        error: Optional[OSError] = None
        try:
            sock.sendall(head.encode())
            piece = b"x" * 65536
            sent = 0
            while sent < size:
                data = piece[: size - sent]
                sock.sendall(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
                sent += len(data)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError as failed:
            error = failed
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError as failed:
            error = error or failed
        return error, answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_413_reaches_a_client_still_sending_its_body(port, caplog, chunked):
    loop = asyncio.get_running_loop()
    # 4 MB: far more than the kernel buffers of both ends take without reading.
    error, answer = await loop.run_in_executor(
        None, functools.partial(send_then_read, port, 4_000_000, chunked=chunked)
    )
    await settle()
    assert error is None, error  # no reset while the client was sending
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
    assert b'"errcode":"TOO_LARGE"' in answer.replace(b" ", b"")
    assert access_statuses(caplog) == [413]
    await wait_until(lambda: discarding_connections() == 0, what="the drain closed at EOF")


async def test_what_is_discarded_is_bounded(port):
    # A client that sends far more than the bound is cut off (a reset is the
    # only way to stop it), after the answer was sent.
    loop = asyncio.get_running_loop()
    error, answer = await loop.run_in_executor(None, send_then_read, port, 4 * DISCARD_MAX_BYTES)
    assert isinstance(error, (ConnectionResetError, BrokenPipeError)), error
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413 ")
    await wait_until(lambda: discarding_connections() == 0, what="the drain closed at its bound")


async def test_a_small_body_within_the_limit_keeps_working(port):
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}/upload",
        method="POST",
        body=b'{"a": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert response.code == 200


def test_a_drain_whose_loop_closed_is_closed_with_it():
    # A loop closed while one of its connections was still discarding (a test's
    # loop, an application's second loop): the drain would never end, and its
    # duplicate socket would stay open; the next count closes it.
    from tornado_jsonservlet.core.connection import _InputDrain

    ours, peer = socket.socketpair()
    loop = asyncio.new_event_loop()

    async def start_draining() -> _InputDrain:
        drain = _InputDrain(ours)
        sent = loop.create_future()
        sent.set_result(None)
        drain.start(sent)
        return drain

    try:
        drain = loop.run_until_complete(start_draining())
        assert discarding_connections() == 1
    finally:
        loop.close()
    assert discarding_connections() == 0
    assert drain.sock.fileno() == -1
    peer.close()
