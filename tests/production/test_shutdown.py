"""Graceful shutdown in one process: DrainingHTTPServer + GracefulShutdown on a real server.

The multi-process and signal tests are in ``test_processes.py``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import math
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
import tornado.httpserver
import tornado.ioloop
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse
from tornado.testing import bind_unused_port

from tests.proc_support import ROOT
from tests.sse_client import StreamReader
from tests.support import (
    Probe,
    access_lines,
    access_statuses,
    nothing_happens_within_sync,
    settle,
    wait_until,
    wait_until_sync,
)
from tornado_jsonservlet import (
    SHUTTING_DOWN,
    CancelOnDisconnectMixin,
    DrainingHTTPServer,
    EventStreamMixin,
    GracefulShutdown,
    InMemoryBroadcaster,
    JsonErrorMixin,
    JsonLinesMixin,
    LongPollMixin,
    RequestIdMixin,
    serve,
    shutdown_notice,
)
from tornado_jsonservlet.core.cancellation import running_requests
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test


class Tracked(RequestIdMixin, CancelOnDisconnectMixin, JsonErrorMixin, tornado.web.RequestHandler):
    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def work(self, status: int) -> None:
        tag = self.get_argument("tag")
        self.probe.hit(f"started {tag}")
        try:
            await asyncio.sleep(float(self.get_argument("delay")))
            self.probe.hit(f"finished {tag}")
            self.set_status(status)
            self.write({"tag": tag})
        except asyncio.CancelledError:
            self.probe.hit(f"cancelled {tag}")
            raise
        finally:
            self.probe.hit(f"cleanup {tag}")

    async def get(self) -> None:
        await self.work(200)

    async def post(self) -> None:  # not cancellable: the default policy
        await self.work(201)


class Plain(tornado.web.RequestHandler):
    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def get(self) -> None:
        self.probe.hit("plain started")
        await asyncio.sleep(float(self.get_argument("delay")))
        self.probe.hit("plain finished")
        self.write("plain")


class Server:
    def __init__(self, server: DrainingHTTPServer, port: int, probe: Probe) -> None:
        self.server, self.port, self.probe = server, port, probe
        self.client = AsyncHTTPClient()

    def fetch(self, path: str, method: str = "GET") -> asyncio.Future[HTTPResponse]:
        body = b"" if method == "POST" else None
        return asyncio.ensure_future(
            self.client.fetch(
                f"http://127.0.0.1:{self.port}{path}",
                method=method,
                body=body,
                raise_error=False,
                request_timeout=20,
            )
        )

    async def started(self, *tags: str) -> None:
        await wait_until(
            lambda: all(self.probe.count(f"started {tag}") for tag in tags),
            what=f"the handlers {tags} started",
        )


@pytest.fixture
def served(io_loop: tornado.ioloop.IOLoop) -> Iterator[Server]:
    probe = Probe()
    app = tornado.web.Application(
        [(r"/work", Tracked, {"probe": probe}), (r"/plain", Plain, {"probe": probe})]
    )
    sock, port = bind_unused_port()
    server = DrainingHTTPServer(app)
    server.add_sockets([sock])
    yield Server(server, port, probe)
    server.stop()
    io_loop.run_sync(server.close_all_connections)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_in_flight_requests_finish_within_the_grace_period(served: Server, caplog):
    replies = [served.fetch(f"/work?delay=0.2&tag=t{i}") for i in range(3)]
    await served.started("t0", "t1", "t2")
    report = await GracefulShutdown([served.server], grace=5).shutdown()
    # The server is done with them; the client (in this same loop) may still be
    # reading the last bytes on a busy machine.
    responses = await asyncio.wait_for(asyncio.gather(*replies), 5)
    for response in responses:
        assert response.code == 200
        assert response.headers["Connection"] == "close"  # a proxy stops reusing it
    assert (report.in_flight, report.cancelled, report.abandoned) == (3, 0, [])
    assert report.seconds < 2
    assert refused(served.port)
    assert sorted(access_lines(caplog))[0].startswith("200 GET /work")


async def test_requests_past_the_grace_period_get_503_shutting_down(served: Server, caplog):
    quick = served.fetch("/work?delay=0.1&tag=quick")
    slow = served.fetch("/work?delay=30&tag=slow")
    await served.started("quick", "slow")
    report = await GracefulShutdown([served.server], grace=0.3).shutdown()
    assert (await quick).code == 200
    response = await slow
    assert response.code == 503
    body = json.loads(response.body)
    assert body["errcode"] == "SHUTTING_DOWN" == SHUTTING_DOWN.errcode
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert served.probe.count("cancelled slow") == 1
    assert served.probe.count("cleanup slow") == 1  # finally ran
    assert served.probe.count("finished slow") == 0
    assert (report.in_flight, report.cancelled, report.abandoned) == (2, 1, [])
    assert 0.3 <= report.seconds < 2
    (line,) = [r for r in caplog.records if r.name == "tornado.access" and "slow" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith("503 GET /work?delay=30&tag=slow")


async def test_a_request_that_may_not_be_cancelled_runs_on_within_the_bound(served: Server):
    post = served.fetch("/work?delay=0.6&tag=post", method="POST")
    await served.started("post")
    report = await GracefulShutdown([served.server], grace=0.1, abandon_after=5).shutdown()
    response = await post
    assert response.code == 201  # it completed: never cut in half
    assert served.probe.count("finished post") == 1
    assert served.probe.count("cancelled post") == 0
    assert (report.cancelled, report.abandoned) == (0, [])
    assert 0.5 <= report.seconds < 2


async def test_what_outlives_the_bound_is_abandoned_with_a_warning(served: Server, caplog):
    post = served.fetch("/work?delay=1.0&tag=post", method="POST")
    plain = served.fetch("/plain?delay=1.0")
    await served.started("post")
    await wait_until(
        lambda: served.probe.count("plain started") > 0, what="the plain handler started"
    )
    report = await GracefulShutdown([served.server], grace=0.1, abandon_after=0.2).shutdown()
    assert len(report.abandoned) == 2
    assert report.abandoned[0].startswith("POST /work?delay=1.0&tag=post (Tracked, running ")
    assert report.abandoned[1] == "GET /plain?delay=1.0 (not a toolkit handler)"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("Shutdown: abandoning POST /work") for m in warnings)
    assert any(m.startswith("Shutdown: abandoning GET /plain") for m in warnings)
    # The connections were closed at the end; in a real process the exit cuts
    # the work too. Here it is let finish quietly.
    for reply in (post, plain):
        with pytest.raises(HTTPClientError, match="Stream closed"):
            await reply
    await wait_until(
        lambda: served.probe.count("cleanup post") + served.probe.count("plain finished") == 2,
        what="the post cleaned up and the plain handler finished",
    )
    await settle()


async def test_keepalive_connections_drain_without_dropping_a_request(served: Server):
    # An idle keep-alive connection stays open while requests are in flight; a
    # request arriving on it is served, with Connection: close, then it is closed.
    idle = await RawHTTPConnection.open(served.port)
    await idle.send_request("GET", "/work?delay=0&tag=first")
    first = await idle.stream.read_until(b'{"tag": "first"}')
    assert b"Connection: close" not in first
    never_used = await RawHTTPConnection.open(served.port)
    slow = served.fetch("/work?delay=0.5&tag=slow")
    await served.started("slow")
    shutdown = GracefulShutdown([served.server], grace=5)
    shutdown.begin()
    draining = asyncio.ensure_future(shutdown.wait())
    await idle.send_request("GET", "/work?delay=0&tag=late")
    late = await idle.read_until_close()
    assert late.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in late
    assert late.endswith(b'{"tag": "late"}')
    assert (await slow).code == 200
    report = await draining
    assert report.abandoned == []
    assert await never_used.read_until_close() == b""  # closed once nothing was in flight


async def test_signals_are_only_acted_on_once(served: Server):
    shutdown = GracefulShutdown([served.server], grace=1)
    shutdown.begin()
    shutdown.begin()  # a second SIGTERM (forwarded by the parent, say) changes nothing
    assert shutdown.started
    report = await shutdown.wait()
    assert report.in_flight == 0


async def test_configuration_mistakes_raise_at_startup():
    plain = tornado.httpserver.HTTPServer(tornado.web.Application())
    with pytest.raises(TypeError, match="DrainingHTTPServer"):
        GracefulShutdown([plain])  # type: ignore[list-item]
    for bad in (-1, math.nan):
        with pytest.raises(ValueError, match="grace must be"):
            GracefulShutdown([], grace=bad)
        with pytest.raises(ValueError, match="abandon_after must be"):
            GracefulShutdown([], abandon_after=bad)
    for processes in (-1, 1.5, True):
        with pytest.raises(ValueError, match="processes must be"):
            serve(tornado.web.Application, 0, processes=processes)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reuse_port needs a fixed port"):
        serve(tornado.web.Application, 0, processes=2, reuse_port=True)
    with pytest.raises(ValueError, match="grace must be"):
        serve(tornado.web.Application, 0, shutdown_grace=-5)


async def test_the_in_flight_registry_holds_running_toolkit_requests_only(served: Server):
    assert running_requests() == []
    reply = served.fetch("/work?delay=0.3&tag=one")
    plain = served.fetch("/plain?delay=0.3")
    await served.started("one")
    await wait_until(
        lambda: served.probe.count("plain started") > 0, what="the plain handler started"
    )
    (handler,) = running_requests()  # the plain handler is not a toolkit request
    assert isinstance(handler, Tracked)
    assert handler.request.uri == "/work?delay=0.3&tag=one"
    assert served.server.busy_connections == 2  # but the server sees both
    assert (await reply).code == 200
    assert (await plain).code == 200
    assert running_requests() == []
    assert served.server.busy_connections == 0


# -- streams, notices, and several servers in one process ---------------------------


class Ticker(EventStreamMixin, tornado.web.RequestHandler):
    """An SSE stream that never ends by itself."""

    heartbeat_interval = None

    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def get(self) -> None:
        n = 0
        try:
            while True:
                await self.send_event({"n": n})
                n += 1
                await asyncio.sleep(0.05)
        finally:
            self.probe.hit("ticker cleanup")


class Export(JsonLinesMixin, tornado.web.RequestHandler):
    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def get(self) -> None:
        async def rows() -> AsyncIterator[dict[str, int]]:
            n = 0
            try:
                while True:
                    yield {"row": n}
                    n += 1
                    await asyncio.sleep(0.05)
            finally:
                self.probe.hit("export cleanup")

        await self.stream_json_lines(rows())


class Poll(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    """A long poll that answers as soon as its server begins to drain."""

    async def get(self) -> None:
        notice = shutdown_notice(self)
        try:
            await asyncio.wait_for(notice, 30)
        except asyncio.TimeoutError:
            self.write({"news": None})
            return
        self.write({"news": "shutting down, reconnect elsewhere"})


class MixinPoll(LongPollMixin, tornado.web.RequestHandler):
    """LongPollMixin's own wait ends when the server begins to drain."""

    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def get(self) -> None:
        async with InMemoryBroadcaster().subscribe("news") as messages:
            message = await self.long_poll(messages, timeout=30)
        self.probe.hit("poll answered")
        if message is None:
            self.set_status(204)


@pytest.fixture
def streams(io_loop: tornado.ioloop.IOLoop) -> Iterator[Server]:
    probe = Probe()
    app = tornado.web.Application(
        [
            (r"/ticker", Ticker, {"probe": probe}),
            (r"/export", Export, {"probe": probe}),
            (r"/poll", Poll),
            (r"/mixin-poll", MixinPoll, {"probe": probe}),
        ]
    )
    sock, port = bind_unused_port()
    server = DrainingHTTPServer(app)
    server.add_sockets([sock])
    yield Server(server, port, probe)
    server.stop()
    io_loop.run_sync(server.close_all_connections)


async def test_open_streams_end_at_once_and_are_logged_with_the_status_sent(streams, caplog):
    readers = [
        await StreamReader.open(streams.port, "/ticker"),
        await StreamReader.open(streams.port, "/ticker"),
        await StreamReader.open(streams.port, "/export"),
    ]
    try:
        for reader in readers[:2]:
            await reader.next_event()
        await readers[2].read_chunk()
        poll = streams.fetch("/poll")
        await wait_until(lambda: streams.server.busy_connections == 4, what="four requests")
        report = await GracefulShutdown([streams.server], grace=10).shutdown()
        for reader in readers:
            await reader.read_until_complete()  # the terminating chunk: a clean end
            assert reader.status == 200
        reply = await poll
    finally:
        for reader in readers:
            reader.close()
    print(f"shutdown with 3 open streams and a long poll: {report.seconds:.2f}s (grace 10s)")
    assert report.seconds < 1.0  # not the grace period
    assert report.streams_ended == 3
    assert (report.cancelled, report.abandoned) == (0, [])
    assert reply.code == 200
    assert json.loads(reply.body)["news"].startswith("shutting down")
    assert streams.probe.count("ticker cleanup") == 2
    assert streams.probe.count("export cleanup") == 1
    assert sorted(access_statuses(caplog)) == [200, 200, 200, 200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_long_poll_answers_at_once_when_a_shutdown_begins(streams, caplog):
    poll = streams.fetch("/mixin-poll")
    await wait_until(lambda: streams.server.busy_connections == 1, what="the long poll waiting")
    report = await GracefulShutdown([streams.server], grace=10).shutdown()
    reply = await poll
    assert reply.code == 204  # its "nothing yet" answer, not a 503 after the grace period
    assert report.seconds < 1.0
    assert (report.cancelled, report.abandoned) == (0, [])
    assert streams.probe.count("poll answered") == 1
    assert access_statuses(caplog) == [204]


async def test_a_shutdown_notice_outside_a_draining_server_never_comes(io_loop):
    received: list[asyncio.Future[None]] = []

    class Handler(tornado.web.RequestHandler):
        async def get(self) -> None:
            notice = shutdown_notice(self)
            received.append(notice)
            self.write("ok")

    app = tornado.web.Application([(r"/", Handler)])
    sock, port = bind_unused_port()
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    try:
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/")
        assert response.body == b"ok"
        assert not received[0].done()
    finally:
        server.stop()
        await server.close_all_connections()


async def test_draining_one_server_leaves_another_servers_requests_alone(io_loop, caplog):
    # Two servers of one application in one process (say, a public and an admin port).
    probe = Probe()
    app = tornado.web.Application([(r"/work", Tracked, {"probe": probe})])
    servers = []
    for _ in range(2):
        sock, port = bind_unused_port()
        server = DrainingHTTPServer(app)
        server.add_sockets([sock])
        servers.append(Server(server, port, probe))
    drained, other = servers
    try:
        mine = drained.fetch("/work?delay=30&tag=mine")
        # A keep-alive request (AsyncHTTPClient asks for "Connection: close" itself).
        conn = await RawHTTPConnection.open(other.port)
        await conn.send_request("GET", "/work?delay=1&tag=theirs")
        await drained.started("mine", "theirs")
        report = await GracefulShutdown([drained.server], grace=0.2, abandon_after=2).shutdown()
        assert (report.in_flight, report.cancelled, report.abandoned) == (1, 1, [])
        assert report.seconds < 0.9  # it did not wait for the other server's request
        assert (await mine).code == 503
        head = await asyncio.wait_for(conn.stream.read_until(b"\r\n\r\n"), 5)
        conn.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" not in head.lower()  # keep-alive: not draining
        assert probe.count("cancelled theirs") == 0
    finally:
        for served in servers:
            served.server.stop()
            await served.server.close_all_connections()


# -- out of file descriptors ------------------------------------------------------------

_LOW_FD_APP = """
import asyncio, logging, os, resource, sys
import tornado.web
from tornado.testing import bind_unused_port
from tornado_jsonservlet import DrainingHTTPServer

class Hello(tornado.web.RequestHandler):
    def get(self):
        self.write("ok")

async def main():
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    sock, port = bind_unused_port()
    DrainingHTTPServer(tornado.web.Application([(r"/", Hello)])).add_sockets([sock])
    in_use = len(os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 8, hard))  # room for 8 clients
    print(port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_running_out_of_file_descriptors_pauses_accepting_and_logs_once(tmp_path):
    log_path = tmp_path / "app.log"
    with open(log_path, "wb") as log_file:
        app = subprocess.Popen(
            [sys.executable, "-c", _LOW_FD_APP],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    clients: list[socket.socket] = []
    try:
        assert app.stdout is not None
        port = int(app.stdout.readline())
        for _ in range(30):  # more than the process can accept
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until_sync(
            lambda: "Cannot accept connections" in log_path.read_text(),
            what="the accept error reported",
        )
        cpu_before = _cpu_seconds(app.pid)
        nothing_happens_within_sync(1.0, what="a second report or a busy loop")
        cpu = _cpu_seconds(app.pid) - cpu_before
        for client in clients:
            client.close()
        clients.clear()
        # The descriptors are back: the queued and the new connections are served.
        assert request_sync(port, "/") == b"ok"
        log = log_path.read_text()
    finally:
        for client in clients:
            client.close()
        app.kill()
        app.wait(timeout=10)
        if app.stdout is not None:
            app.stdout.close()
    print(f"EMFILE for 1s: {log.count(chr(10))} log line(s), {cpu:.2f}s of CPU")
    assert log.count("Cannot accept connections") == 1, log
    assert "Too many open files" in log
    assert "ERROR" not in log
    assert cpu < 0.3  # Tornado's handler spins a whole core here


def request_sync(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()
