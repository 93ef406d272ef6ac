"""Servlets served by event loops in several threads at once.

The route's matcher tells Tornado's delegate that a request has no body through a
module variable tagged with the routing thread (a context variable cost more than
the rest of the decision). Two threads, each with its own loop and server, route
requests at the same time, with the interpreter switching threads as often as it
can: every response must be right, every body must arrive, and a request with a
body is always streamed. A bodiless request may be streamed when the other thread
routed in between (that answer is always safe); it may never lose its response.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from typing import Any

import pytest
import tornado.httpserver
import tornado.httputil
import tornado.web

from tornado_jsonservlet import JsonServlet, ServletRegistry
from tornado_jsonservlet import tornado_adapter as tornado_internals

ROUNDS = 150
THREADS = 3


class Echo(JsonServlet):
    PATTERNS = ("/echo",)

    def on_GET(self) -> Any:
        return {"method": "GET", "streamed": self._prepared_future is not None}

    def on_POST(self) -> Any:
        return {"body": self.json_body, "streamed": self._prepared_future is not None}


async def _serve_and_hammer(results: list[tuple[str, int, dict[str, Any]]]) -> None:
    registry = ServletRegistry()
    registry.register(Echo)
    server = tornado.httpserver.HTTPServer(
        tornado.web.Application(registry.urlspecs(catch_all=False))
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server.add_sockets([sock])
    reader, writer = await asyncio.open_connection(*sock.getsockname())
    try:
        for number in range(ROUNDS):
            if number % 2:
                body = json.dumps({"n": number}).encode()
                writer.write(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                kind = "POST"
            else:
                writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
                kind = "GET"
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split()[1])
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            document = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
            results.append((kind, status, document))
    finally:
        writer.close()
        server.stop()
        await server.close_all_connections()


def test_loops_in_several_threads_route_their_own_requests() -> None:
    results: list[list[tuple[str, int, dict[str, Any]]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            asyncio.run(_serve_and_hammer(results[index]))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    for per_thread in results:
        assert len(per_thread) == ROUNDS
        for number, (kind, status, document) in enumerate(per_thread):
            assert status == 200, (kind, document)
            if kind == "POST":
                assert document == {"body": {"n": number}, "streamed": True}
            else:
                assert document["method"] == "GET"


class _ConnectionReading:
    """Stands for an ``HTTP1Connection`` still reading its request (what the
    decision checks of it), so that the race below can be played step by step."""

    _read_finished = False


def _request(**headers: str) -> tornado.httputil.HTTPServerRequest:
    method = "POST" if headers else "GET"  # an upload says its Content-Length
    return tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine(method, "/echo", "HTTP/1.1"),
        headers=tornado.httputil.HTTPHeaders({"Host": "x", **headers}),
        connection=_ConnectionReading(),  # type: ignore[arg-type]
    )


def test_a_decision_routed_in_another_thread_is_not_taken() -> None:
    """Thread A routes an upload (nothing recorded); thread B routes a bodiless GET
    (recorded); A's delegate asks first. A must stream its upload: taking B's
    decision would read the upload as if it had no body."""
    answers: dict[str, bool] = {}
    a_routed, b_routed = threading.Event(), threading.Event()

    async def thread_a() -> None:
        tornado_internals.route_without_body(_request(**{"Content-Length": "9"}))
        a_routed.set()
        assert b_routed.wait(10)
        answers["A"] = Echo._stream_request_body

    async def thread_b() -> None:
        assert a_routed.wait(10)
        tornado_internals.route_without_body(_request())
        b_routed.set()

    threads = [
        threading.Thread(target=asyncio.run, args=(thread_a(),)),
        threading.Thread(target=asyncio.run, args=(thread_b(),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers == {"A": True}
    # B's delegate then finds nothing recorded: it streams too, which is safe (its
    # body future is already resolved), and nothing is left over for later.
    assert Echo._stream_request_body is True


@pytest.mark.gen_test
async def test_a_bodiless_request_routed_in_this_thread_is_not_streamed() -> None:
    request = _request()
    tornado_internals.route_without_body(request)
    assert Echo._stream_request_body is False
    assert Echo._stream_request_body is True  # read once: later reads say "stream"
    assert request._body_future.done()  # type: ignore[attr-defined]
