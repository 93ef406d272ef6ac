"""How a servlet request starts: bodies streamed only when sent, the task started at once.

A request without a body is not streamed (Tornado reads it whole, as for any
handler), and on Python 3.12+ its task starts eagerly. Neither may change what
the servlet or the client sees: these tests check the mode chosen per request and
that requests of every framing, mixed on one keep-alive connection, come back
right.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from typing import Any, Optional

import pytest
import tornado.web

from tornado_jsonservlet import JsonServlet, ServletRegistry
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

#: What each servlet request saw: (path, streamed, task, body).
SEEN: list[tuple[str, bool, Optional[asyncio.Task[Any]], Any]] = []
#: Whether each GET ran inside Tornado's connection code (its task started eagerly).
STARTED_FROM_CONNECTION: list[bool] = []


class Echo(JsonServlet):
    PATTERNS = ("/echo",)

    def _record(self, body: Any = None) -> None:
        # Tornado gives a streamed request's handler a future for prepare();
        # a request read whole has none.
        streamed = self._prepared_future is not None
        SEEN.append((self.request.path, streamed, asyncio.current_task(), body))

    async def on_GET(self) -> Any:
        self._record()
        STARTED_FROM_CONNECTION.append(
            any(
                frame.filename.endswith("http1connection.py") for frame in traceback.extract_stack()
            )
        )
        return {"method": "GET"}

    async def on_POST(self) -> Any:
        if not self.request.body:
            self._record()
            return {"method": "POST", "body": None}
        self._record(self.json_body)
        await asyncio.sleep(0)  # a real suspension in the middle of the request
        return {"method": "POST", "body": self.json_body}


class ByHand(Echo):
    """The same servlet, routed with a plain ``tornado.web.url`` (no registry)."""

    PATTERNS = ()


@pytest.fixture
def app() -> tornado.web.Application:
    SEEN.clear()
    STARTED_FROM_CONNECTION.clear()
    registry = ServletRegistry()
    registry.register(Echo)
    return tornado.web.Application(
        [tornado.web.url("/by-hand", ByHand), *registry.urlspecs(catch_all=False)]
    )


async def exchange(
    conn: RawHTTPConnection, method: str, path: str, body: bytes = b"", **framing: str
) -> tuple[int, dict[str, Any], bytes]:
    """Send one request on a kept-alive connection and read its whole response."""
    headers = {"Content-Type": "application/json", **framing}
    if "Transfer-Encoding" in framing:
        await conn.send_raw(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
            + b"\r\n"
            + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"")
            + b"0\r\n\r\n"
        )
    else:
        await conn.send_request(method, path, headers=headers, body=body)
    head = await asyncio.wait_for(conn.stream.read_until(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = dict(line.split(": ", 1) for line in lines[1:] if line)
    data = await asyncio.wait_for(conn.stream.read_bytes(int(fields["Content-Length"])), 5)
    return status, json.loads(data), head


@pytest.mark.parametrize(
    ("method", "body", "framing", "streamed"),
    [
        ("GET", b"", {}, False),
        ("POST", b"", {}, False),  # Content-Length: 0
        ("POST", b'{"a": 1}', {}, True),
        ("POST", b'{"a": 1}', {"Transfer-Encoding": "chunked"}, True),
        ("POST", b"", {"Transfer-Encoding": "chunked"}, True),  # framed as a body
    ],
    ids=["get", "empty-post", "post-body", "chunked-body", "chunked-empty"],
)
async def test_only_a_request_with_a_body_is_streamed(port, method, body, framing, streamed):
    conn = await RawHTTPConnection.open(port)
    try:
        status, answer, _ = await exchange(conn, method, "/echo", body, **framing)
    finally:
        conn.close()
    assert SEEN[-1][1] is streamed
    if method == "POST" and body:
        assert (status, answer) == (200, {"method": "POST", "body": {"a": 1}})
    else:
        assert status == 200
        assert answer["method"] == method


async def test_framings_mixed_on_one_kept_alive_connection(port):
    # Each request of the connection is routed on its own: a bodiless one leaves
    # no trace that would make the next (with a body, routed by hand) unstreamed.
    conn = await RawHTTPConnection.open(port)
    sequence = [
        ("GET", "/echo", b"", {}),
        ("POST", "/by-hand", b'{"n": 1}', {}),
        ("GET", "/echo", b"", {}),
        ("POST", "/echo", b'{"n": 2}', {"Transfer-Encoding": "chunked"}),
        ("POST", "/echo", b"", {}),
        ("GET", "/by-hand", b"", {}),
        ("POST", "/echo", b'{"n": 3}', {}),
    ]
    try:
        for method, path, body, framing in sequence:
            status, answer, head = await exchange(conn, method, path, body, **framing)
            assert status == 200, (method, path, head)
            assert answer["method"] == method
            if body:
                assert answer["body"] == json.loads(body)
        assert not conn.closed  # kept alive throughout
    finally:
        conn.close()
    # Routed by hand, a servlet streams every request, as before.
    assert [streamed for path, streamed, _, _ in SEEN] == [
        False,
        True,
        False,
        True,
        False,
        True,
        True,
    ]


async def test_each_request_runs_in_its_own_task_started_at_once(port):
    conn = await RawHTTPConnection.open(port)
    try:
        for _ in range(3):
            status, _, _ = await exchange(conn, "GET", "/echo")
            assert status == 200
    finally:
        conn.close()
    tasks = [task for _, _, task, _ in SEEN]
    assert all(task is not None for task in tasks)
    assert len({id(task) for task in tasks}) == 3  # not the connection's own task
    assert all(task.done() for task in tasks if task is not None)
    # Started eagerly (Python 3.12+, which has eager tasks): the servlet ran within
    # Tornado's call that handed the request over, not on a later turn of the loop.
    eager = sys.version_info >= (3, 12)
    assert len(STARTED_FROM_CONNECTION) == 3
    assert all(started is eager for started in STARTED_FROM_CONNECTION)


async def test_an_application_task_factory_still_makes_the_task(port):
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", ""))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        conn = await RawHTTPConnection.open(port)
        try:
            status, _, _ = await exchange(conn, "GET", "/echo")
        finally:
            conn.close()
    finally:
        loop.set_task_factory(None)
    assert status == 200
    assert SEEN[-1][2] is not None
    assert "RequestLifecycle._execute" in made
    assert STARTED_FROM_CONNECTION == [False]  # the factory's task starts as usual
