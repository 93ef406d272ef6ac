"""CancellableHTTPClient: a cancelled fetch aborts the request, on real connections.

The upstream here is a real Tornado server on loopback whose handlers use
``CancelOnDisconnectMixin``: when the client's connection closes, its handler is
cancelled and logs 499. So "the upstream saw its client leave" is observed, not
assumed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tornado
import tornado.netutil
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from tests.support import (
    access_statuses,
    messages,
    nothing_happens_within,
    settle,
    wait_until,
)
from tornado_jsonservlet import CancelOnDisconnectMixin
from tornado_jsonservlet.core.context import (
    deadline_header,
    deadline_remaining,
    loop_time,
    request_deadline,
)
from tornado_jsonservlet.outbound import CancellableHTTPClient

pytestmark = pytest.mark.gen_test

TORNADO_66 = tornado.version_info >= (6, 6)


class Upstream:
    """What the upstream handlers saw, with events a test can wait on."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.statuses: list[tuple[str, int]] = []
        self.headers: list[dict[str, str]] = []
        self._waiters: dict[str, asyncio.Event] = {}

    def hit(self, event: str) -> None:
        self.events.append(event)
        self._event(event).set()

    def _event(self, name: str) -> asyncio.Event:
        return self._waiters.setdefault(name, asyncio.Event())

    async def wait(self, name: str, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._event(name).wait(), timeout)

    def count(self, name: str) -> int:
        return self.events.count(name)


class UpstreamHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    def initialize(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def on_finish(self) -> None:
        self.upstream.statuses.append((self.request.path, self.get_status()))
        self.upstream.hit(f"finished {self.request.path}")


class HoldHandler(UpstreamHandler):
    """Records that it started, then works for a long time unless cancelled."""

    async def get(self) -> None:
        self.upstream.headers.append(dict(self.request.headers))
        self.upstream.hit("started")
        try:
            if self.get_argument("stream", None):
                self.write("first chunk")
                await self.flush()
            await asyncio.sleep(float(self.get_argument("wait", "30")))
            self.upstream.hit("completed")
            self.write("done")
        except asyncio.CancelledError:
            self.upstream.hit("cancelled")
            raise


class FastHandler(UpstreamHandler):
    def get(self) -> None:
        self.upstream.headers.append(dict(self.request.headers))
        self.upstream.hit("fast")
        self.write("fast")


class NotFoundHandler(UpstreamHandler):
    def get(self) -> None:
        raise tornado.web.HTTPError(404)


class RedirectHandler(UpstreamHandler):
    def get(self) -> None:
        self.upstream.hit("redirected")
        self.redirect(self.get_argument("to"))


@tornado.web.stream_request_body
class UploadHandler(UpstreamHandler):
    def prepare(self) -> None:
        self.upstream.hit("upload started")

    def data_received(self, chunk: bytes) -> None:
        self.upstream.hit("upload data")

    def post(self) -> None:
        self.upstream.hit("upload complete")


class DeadlineFrontHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    """Sets the request deadline the way the handler machinery will, then fetches.

    ``?ms=`` is the deadline from now, ``nan``/``inf`` test bad values, ``header=``
    names the deadline header, ``timeout=`` sets the request's own request_timeout.
    """

    async def get(self) -> None:
        loop = asyncio.get_running_loop()
        request_deadline.set(loop.time() + float(self.get_argument("ms")) / 1000)
        header = self.get_argument("header", None)
        if header:
            deadline_header.set(header)
        own_timeout = self.get_argument("timeout", None)
        request = HTTPRequest(
            f"http://127.0.0.1:{self.request.host.split(':')[1]}{self.get_argument('path')}",
            request_timeout=None if own_timeout is None else float(own_timeout),
        )
        started = loop.time()
        try:
            response = await CancellableHTTPClient().fetch(request)
        except HTTPClientError as error:
            self.write({"code": error.code, "error": str(error), "took": loop.time() - started})
            return
        self.write(
            {
                "code": response.code,
                "remaining": deadline_remaining(),
                "request_timeout": request.request_timeout,  # the caller's object, untouched
                "headers": dict(request.headers),
            }
        )


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def app(upstream: Upstream) -> tornado.web.Application:
    routes: list[tuple[str, type[tornado.web.RequestHandler]]] = [
        ("/hold", HoldHandler),
        ("/fast", FastHandler),
        ("/404", NotFoundHandler),
        ("/redirect", RedirectHandler),
        ("/upload", UploadHandler),
    ]
    return tornado.web.Application(
        [(path, handler, {"upstream": upstream}) for path, handler in routes]
        + [("/deadline", DeadlineFrontHandler)]
    )


@pytest.fixture
def base(port: int) -> str:
    """The running test server (the upstream), by address."""
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def client(io_loop: Any) -> Iterator[CancellableHTTPClient]:
    client = CancellableHTTPClient(force_instance=True)
    yield client
    client.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pending_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if not task.done()}


async def resources_back_to(fds: int, tasks: set[asyncio.Task[Any]]) -> None:
    await wait_until(
        lambda: open_fds() <= fds,
        what=f"file descriptors back to {fds}: {os.listdir('/proc/self/fd')}",
    )
    await wait_until(lambda: not (pending_tasks() - tasks), what="tasks back to baseline")


def assert_idle(client: SimpleAsyncHTTPClient) -> None:
    assert client.active == {}
    assert len(client.queue) == 0
    assert client.waiting == {}


# -- the configured name is the public contract ------------------------------------


async def test_configure_by_dotted_name():
    saved = AsyncHTTPClient._save_configuration()  # type: ignore[attr-defined]
    try:
        AsyncHTTPClient.configure("tornado_jsonservlet.outbound.CancellableHTTPClient")
        client = AsyncHTTPClient(force_instance=True, max_clients=3)
        assert isinstance(client, CancellableHTTPClient)
        assert client.max_clients == 3
        client.close()
    finally:
        AsyncHTTPClient._restore_configuration(saved)  # type: ignore[attr-defined]


# -- in flight ------------------------------------------------------------------------


async def give_up_after(how: str, fetch: Any, seconds: float) -> None:
    if how == "wait_for":
        await asyncio.wait_for(fetch, seconds)
    else:
        async with asyncio.timeout(seconds):  # type: ignore[attr-defined]
            await fetch


# asyncio.timeout exists from Python 3.11 on; older Pythons have the other two.
GIVE_UP_WAYS = ["task.cancel", "wait_for"] + (["timeout"] if sys.version_info >= (3, 11) else [])


@pytest.mark.parametrize("how", GIVE_UP_WAYS)
async def test_cancelled_fetch_closes_the_connection_and_the_upstream_stops(
    client, upstream, base, caplog, how
):
    fds, tasks = open_fds(), pending_tasks()
    loop = asyncio.get_running_loop()
    fetch = client.fetch(f"{base}/hold")
    if how == "task.cancel":

        async def caller() -> None:
            await fetch

        task = asyncio.ensure_future(caller())
        await upstream.wait("started")
        left = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        await upstream.wait("started")
        left = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await give_up_after(how, fetch, 0.001)
    await upstream.wait("cancelled")
    took = loop.time() - left
    await upstream.wait("finished /hold")
    assert upstream.count("completed") == 0
    assert upstream.statuses == [("/hold", 499)]
    assert took < 0.5, f"the upstream noticed after {took:.3f}s"
    assert_idle(client)
    await resources_back_to(fds, tasks)
    assert access_statuses(caplog) == [499]


async def test_bare_tornado_does_not_abort(upstream, base, caplog):
    """The problem being solved: with SimpleAsyncHTTPClient the upstream works on."""
    client = SimpleAsyncHTTPClient(force_instance=True)
    try:
        fetch = client.fetch(f"{base}/hold?wait=0.3")
        await upstream.wait("started")
        fetch.cancel()
        await upstream.wait("finished /hold")
        assert upstream.count("completed") == 1
        assert upstream.statuses == [("/hold", 200)]
    finally:
        client.close()


async def test_streaming_response_aborted_mid_body(client, upstream, base):
    chunks: list[bytes] = []
    got_chunk = asyncio.Event()

    def on_chunk(chunk: bytes) -> None:
        chunks.append(chunk)
        got_chunk.set()

    fetch = client.fetch(f"{base}/hold?stream=1", streaming_callback=on_chunk)
    await asyncio.wait_for(got_chunk.wait(), 5)
    fetch.cancel()
    await upstream.wait("cancelled")
    await upstream.wait("finished /hold")
    assert chunks == [b"first chunk"]
    assert upstream.statuses == [("/hold", 499)]
    assert_idle(client)


async def test_body_producer_waiting_is_stopped(client, upstream, base):
    producer_state: list[str] = []

    async def body_producer(write: Any) -> None:
        await write(b"part one")
        try:
            await asyncio.sleep(30)
            producer_state.append("finished")
        except asyncio.CancelledError:
            producer_state.append("cancelled")
            raise

    tasks = pending_tasks()
    fetch = client.fetch(
        f"{base}/upload",
        method="POST",
        body_producer=body_producer,
        headers={"Content-Length": "100"},
    )
    await upstream.wait("upload data")
    fetch.cancel()
    await wait_until(lambda: producer_state == ["cancelled"], what="producer cancelled")
    await upstream.wait("finished /upload")
    assert upstream.count("upload complete") == 0
    assert_idle(client)
    await wait_until(lambda: not (pending_tasks() - tasks), what="tasks back to baseline")


async def test_redirect_being_followed_is_aborted(client, upstream, base):
    fetch = client.fetch(f"{base}/redirect?to=/hold")
    await upstream.wait("started")
    assert upstream.count("redirected") == 1
    fetch.cancel()
    await upstream.wait("cancelled")
    await upstream.wait("finished /hold")
    assert upstream.statuses == [("/redirect", 302), ("/hold", 499)]
    assert_idle(client)


# -- queued behind max_clients --------------------------------------------------------


async def test_queued_fetch_leaves_the_queue_and_is_never_sent(upstream, base, io_loop):
    client = CancellableHTTPClient(force_instance=True, max_clients=1)
    try:
        first = client.fetch(f"{base}/hold?wait=0.3")
        queued = client.fetch(f"{base}/fast")
        assert len(client.queue) == 1
        assert len(client.waiting) == 1
        queued.cancel()
        await settle()
        assert len(client.queue) == 0
        assert client.waiting == {}
        response = await first
        assert response.body == b"done"
        await settle()
        assert upstream.count("fast") == 0
        assert_idle(client)
        # The slot is free: the next fetch goes out at once.
        assert (await client.fetch(f"{base}/fast")).body == b"fast"
    finally:
        client.close()


async def test_cancelled_in_flight_fetch_frees_its_slot_for_the_queue(upstream, base):
    client = CancellableHTTPClient(force_instance=True, max_clients=1)
    try:
        first = client.fetch(f"{base}/hold")
        second = client.fetch(f"{base}/fast")
        await upstream.wait("started")
        first.cancel()
        assert (await asyncio.wait_for(second, 5)).body == b"fast"
        await upstream.wait("finished /hold")
        assert ("/hold", 499) in upstream.statuses
        assert_idle(client)
    finally:
        client.close()


# -- before a connection exists ---------------------------------------------------


class SlowResolver(tornado.netutil.Resolver):
    """Answers (127.0.0.1, or a failure) after a delay: a fetch can be cancelled meanwhile."""

    def initialize(self, delay: float = 0.5, fail: bool = False) -> None:  # type: ignore[override]
        self.delay = delay
        self.fail = fail
        self.calls = 0
        self.answered = 0

    async def resolve(self, host: str, port: int, family: Any = socket.AF_UNSPEC) -> Any:
        self.calls += 1
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise OSError(f"no such host: {host}")
            return [(socket.AF_INET, ("127.0.0.1", port))]
        finally:
            self.answered += 1


@pytest.mark.parametrize("fail", [False, True], ids=["answers", "fails"])
async def test_cancelled_while_resolving(upstream, port, fail):
    """Nobody waits for the lookup any more: its late answer or failure stays quiet."""
    resolver = SlowResolver(delay=0.3, fail=fail)
    client = CancellableHTTPClient(force_instance=True, resolver=resolver)
    fds, tasks = open_fds(), pending_tasks()
    try:
        fetch = client.fetch(f"http://upstream.invalid:{port}/fast")
        await wait_until(lambda: resolver.calls == 1, what="resolving")
        fetch.cancel()
        await settle()
        assert_idle(client)
        await wait_until(lambda: resolver.answered == 1, what="the resolver answering, to nobody")
        await settle()  # its answer or failure reaches the abandoned future
        gc.collect()  # an unread failure would be reported now (the suite fails on it)
        assert upstream.events == []
        await resources_back_to(fds, tasks)
    finally:
        client.close()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full: a connection attempt to it stays pending."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    yield listener.getsockname()[1]
    filler.close()
    listener.close()


async def test_cancelled_while_connecting_closes_the_attempt(client, full_backlog):
    fds, tasks = open_fds(), pending_tasks()
    fetch = client.fetch(f"http://127.0.0.1:{full_backlog}/")
    await wait_until(lambda: open_fds() > fds, what="connection attempt opened")
    await nothing_happens_within(0.05, what="the connection completing against a full backlog")
    assert not fetch.done()  # still connecting
    fetch.cancel()
    took = await wait_until(lambda: open_fds() <= fds, what="attempt closed")
    assert took < 0.1
    assert_idle(client)
    await resources_back_to(fds, tasks)


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """Lets the kernel accept connections, then never says a word: TLS stalls."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener
    listener.close()


async def test_cancelled_during_tls_handshake(client, silent_listener):
    port = silent_listener.getsockname()[1]
    fds, tasks = open_fds(), pending_tasks()
    fetch = client.fetch(f"https://127.0.0.1:{port}/", validate_cert=False)
    await wait_until(lambda: open_fds() == fds + 1, what="connected")
    # The ClientHello goes out; the listener never answers it.
    await nothing_happens_within(0.05, what="the TLS handshake completing")
    assert not fetch.done()
    fetch.cancel()
    await settle()
    assert_idle(client)  # on every Tornado, the slot is free at once
    if TORNADO_66:
        took = await wait_until(lambda: open_fds() <= fds, what="handshake closed")
        assert took < 0.1
    else:
        # Tornado < 6.6 cannot interrupt a handshake: it ends when the server hangs up,
        # and the socket is closed then, quietly.
        server_side, _ = silent_listener.accept()
        server_side.close()
    await resources_back_to(fds, tasks)


# -- an answer already on its way -------------------------------------------------------


async def test_fetch_cancelled_at_once_is_never_sent(client, upstream, base, caplog):
    """Tornado sends it anyway and logs "Exception after Future was cancelled" at ERROR."""
    fetch = client.fetch(f"{base}/404")
    assert fetch.cancel()
    await nothing_happens_within(0.1, what="the cancelled fetch reaching the upstream")
    assert upstream.statuses == []
    assert access_statuses(caplog) == []
    assert_idle(client)


async def test_answer_arriving_before_the_abort_is_dropped_quietly(client, base, caplog):
    """A cancel lands while the 404 is being read: the error must not reach the future.

    ``header_callback`` runs inside the connection's task while it reads the response;
    the cancel queued from there runs before the abort (a done-callback queued behind
    it), while the response is already being delivered.
    """
    loop = asyncio.get_running_loop()
    fetch: Any = None

    def on_header(line: str) -> None:
        if line.startswith("HTTP/"):
            loop.call_soon(fetch.cancel)

    fetch = client.fetch(f"{base}/404", header_callback=on_header)
    await wait_until(lambda: access_statuses(caplog) == [404], what="the upstream answered")
    await wait_until(fetch.cancelled, what="the fetch cancelled from its header callback")
    await nothing_happens_within(0.05, what="a log record of a result after the cancel")
    assert fetch.cancelled()
    assert not [m for m in messages(caplog) if "after Future was cancelled" in m]
    assert_idle(client)


async def test_uncancelled_fetches_behave_as_usual(client, base):
    assert (await client.fetch(f"{base}/fast")).body == b"fast"
    with pytest.raises(HTTPClientError) as raised:
        await client.fetch(f"{base}/404")
    assert raised.value.code == 404
    response = await client.fetch(f"{base}/404", raise_error=False)
    assert response.code == 404
    assert_idle(client)


# -- deadlines ----------------------------------------------------------------------


async def front(http_client: Any, base: str, query: str) -> dict[str, Any]:
    response = await http_client.fetch(f"{base}/deadline?{query}", request_timeout=10)
    result: dict[str, Any] = json.loads(response.body)
    return result


async def test_deadline_is_sent_as_remaining_milliseconds(http_client, base, upstream):
    result = await front(http_client, base, "ms=3000&path=/fast")
    assert result["code"] == 200, result
    sent = int(upstream.headers[0]["X-Envoy-Expected-Rq-Timeout-Ms"])
    assert 2000 < sent <= 3000
    # The caller's own request object is left alone.
    assert result["request_timeout"] is None
    assert "X-Envoy-Expected-Rq-Timeout-Ms" not in result["headers"]


async def test_deadline_header_name_comes_from_the_context(http_client, base, upstream):
    await front(http_client, base, "ms=3000&path=/fast&header=X-Deadline-Ms")
    assert 2000 < int(upstream.headers[0]["X-Deadline-Ms"]) <= 3000
    assert "X-Envoy-Expected-Rq-Timeout-Ms" not in upstream.headers[0]


async def test_shorter_request_timeout_is_what_the_upstream_is_told(http_client, base, upstream):
    await front(http_client, base, "ms=5000&path=/fast&timeout=0.8")
    assert 700 < int(upstream.headers[0]["X-Envoy-Expected-Rq-Timeout-Ms"]) <= 800


async def test_deadline_caps_the_request_timeout(http_client, base, upstream, caplog):
    result = await front(http_client, base, "ms=300&path=/hold")
    assert result["code"] == 599
    assert "Timeout" in result["error"]
    assert 0.25 < result["took"] < 1.5  # not the 20 s default
    # Tornado's timeout closes the connection: the upstream saw its client leave.
    await upstream.wait("finished /hold")
    assert upstream.count("cancelled") == 1
    assert ("/hold", 499) in upstream.statuses


async def test_passed_deadline_sends_nothing(http_client, base, upstream):
    result = await front(http_client, base, "ms=-5&path=/fast")
    assert result["code"] == 599
    assert "deadline passed" in result["error"]
    assert result["took"] < 0.1
    await nothing_happens_within(0.05, what="a request reaching the upstream")
    assert upstream.events == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
async def test_non_finite_deadline_is_no_deadline(http_client, base, upstream, value):
    result = await front(http_client, base, f"ms={value}&path=/fast")
    assert result["code"] == 200
    assert result["remaining"] is None
    assert "X-Envoy-Expected-Rq-Timeout-Ms" not in upstream.headers[0]


async def test_redirect_keeps_the_deadline(http_client, base, upstream):
    await front(http_client, base, "ms=3000&path=/redirect?to=/fast")
    assert upstream.events == ["redirected", "finished /redirect", "fast", "finished /fast"]
    assert 2000 < int(upstream.headers[0]["X-Envoy-Expected-Rq-Timeout-Ms"]) <= 3000


async def test_deadline_keeps_the_usual_argument_errors(client, base, upstream):
    token = request_deadline.set(loop_time() + 5)
    try:
        with pytest.raises(ValueError, match="kwargs can't be used"):
            client.fetch(HTTPRequest(f"{base}/fast"), method="POST")
        with pytest.raises(TypeError):
            client.fetch(f"{base}/fast", no_such_option=1)
    finally:
        request_deadline.reset(token)
    assert_idle(client)
    assert upstream.events == []


async def test_without_deadline_nothing_changes(client, base, upstream):
    assert deadline_remaining() is None
    await client.fetch(f"{base}/fast")
    assert "X-Envoy-Expected-Rq-Timeout-Ms" not in upstream.headers[0]


def test_deadline_remaining_outside_a_loop():
    token = request_deadline.set(time.monotonic() + 10)
    try:
        remaining = deadline_remaining()
        assert remaining is not None
        assert 9 < remaining <= 10
    finally:
        request_deadline.reset(token)
    token = request_deadline.set(time.monotonic() - 10)
    try:
        assert deadline_remaining() == 0.0
    finally:
        request_deadline.reset(token)
