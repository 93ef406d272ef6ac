"""Every write makes progress or ends: ``write_timeout`` against clients that stop reading.

Each test opens a real socket with a tiny receive buffer, sends its request and
then reads nothing (or reads slowly), so the server's writes back up for real:
the kernel's buffers fill and Tornado's ``flush()`` futures stay pending.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import weakref
from collections.abc import AsyncIterator
from typing import Any, Optional

import pytest
import tornado.httpserver
import tornado.web

from tests.support import (
    Probe,
    ProbeHandler,
    access_statuses,
    nothing_happens_within,
    settle,
    wait_until,
)
from tornado_jsonservlet import (
    WRITE_STALLED,
    EventStreamMixin,
    InMemoryBroadcaster,
    JsonLinesMixin,
    JsonResponseMixin,
    LongPollMixin,
    uncancellable,
)
from tornado_jsonservlet.core.safe_output import DEFAULT_WRITE_TIMEOUT, SafeWriteMixin
from tornado_jsonservlet.core.scope import scope_of

pytestmark = pytest.mark.gen_test

CHUNK = b"x" * 65536
# Far more than the kernel buffers of a loopback connection can hold (4 MB
# send buffer at most, plus the client's tiny receive buffer): writes must pend.
MAX_CHUNKS = 400  # 25 MB, and the loop stays bounded


class WriterBase(ProbeHandler):
    """``write`` + ``await flush()`` until the client stops taking bytes."""

    async def get(self) -> None:
        await self._write_all()

    @uncancellable
    async def post(self) -> None:
        await self._write_all()
        self.probe.hit("completed")

    async def _write_all(self) -> None:
        sndbuf = self.get_argument("sndbuf", None)
        if sndbuf:  # a small kernel buffer: the writes wait for the client at once
            stream = self.request.connection.stream  # type: ignore[union-attr]
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(sndbuf))
        try:
            for sent in range(int(self.get_argument("chunks", str(MAX_CHUNKS)))):
                self.write(CHUNK)
                self.probe.values["sent"] = sent
                flushed = self.flush()
                if not flushed.done():
                    self.probe.values["pended"] = True
                await flushed
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise
        finally:
            self.probe.values["reason"] = self.cancel_reason

    def on_finish(self) -> None:
        scope = scope_of(self)
        self.probe.values["gone, closed by server"] = (scope.client_gone, scope.closed_by_server)
        super().on_finish()


class Writer(WriterBase):
    write_timeout = 0.3


class SlowReaderWriter(WriterBase):
    write_timeout = 1.0  # a margin for a loaded machine; the whole takes longer


class PatientWriter(WriterBase):
    write_timeout = None  # the watch is off: the old behaviour, for comparison


class FromSettings(WriterBase):
    """No write_timeout of its own: the application setting applies."""


class Events(EventStreamMixin, ProbeHandler):
    write_timeout = 0.3
    heartbeat_interval = 0.05

    async def get(self) -> None:
        payload = "y" * 60000
        try:
            for n in range(MAX_CHUNKS):
                await self.send_event(payload, id=str(n))
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise


class Relayed(EventStreamMixin, ProbeHandler):
    """Events written from inside publish(); the handler only awaits its subscription."""

    write_timeout = 0.3
    max_buffered_bytes = 64 * 1024 * 1024  # the bound that never trips here

    def initialize(self, probe: Probe, broadcaster: InMemoryBroadcaster) -> None:  # type: ignore[override]
        super().initialize(probe)
        self.broadcaster = broadcaster

    async def get(self) -> None:
        async with self.broadcaster.subscribe("news") as messages:
            await self.relay_events(messages)


class Lines(JsonLinesMixin, ProbeHandler):
    write_timeout = 0.3

    async def get(self) -> None:
        async def items() -> AsyncIterator[dict[str, Any]]:
            for n in range(MAX_CHUNKS):
                yield {"n": n, "pad": "z" * 60000}

        try:
            await self.stream_json_lines(items())
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise


class Document(list):  # type: ignore[type-arg]
    """A weakly referenceable list: the document whose lifetime the test watches."""


def big_document(probe: Probe) -> Document:
    document = Document({"n": n, "pad": "w" * 200} for n in range(60000))  # about 13 MB
    probe.values["document"] = weakref.ref(document)
    return document


class BigJson(JsonResponseMixin, ProbeHandler):
    write_timeout = 5.0  # long enough to look at the response while it is stuck

    async def get(self) -> None:
        await self.write_json(big_document(self.probe))


class ShortBigJson(BigJson):
    write_timeout = 0.3


class FinishHuge(SafeWriteMixin, tornado.web.RequestHandler):
    """Hands its whole answer to finish() and returns: logged at once, sent later."""

    write_timeout = 0.3

    def get(self) -> None:
        self.finish(CHUNK * 300)  # 20 MB


class Poll(LongPollMixin, JsonResponseMixin, ProbeHandler):
    """A long-poll whose answer (a big document) the client does not read."""

    write_timeout = 0.3

    async def get(self) -> None:
        async def next_update() -> Document:
            await asyncio.sleep(0.01)
            return big_document(self.probe)

        update = await self.long_poll(next_update(), timeout=5)
        await self.write_json(update)


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    routes: list[Any] = [
        ("/write", Writer),
        ("/slow-reader", SlowReaderWriter),
        ("/patient", PatientWriter),
        ("/settings", FromSettings),
        ("/events", Events),
        ("/lines", Lines),
        ("/json", BigJson),
        ("/json-short", ShortBigJson),
        ("/poll", Poll),
    ]
    return tornado.web.Application(
        [
            ("/finish-huge", FinishHuge),
            *[(path, handler, {"probe": probe}) for path, handler in routes],
            ("/relayed", Relayed, {"probe": probe, "broadcaster": BROADCASTER}),
        ],
        write_timeout=0.4,
    )


BROADCASTER = InMemoryBroadcaster()


def stalled_client(port: int, method: str, path: str, window: int = 4096) -> socket.socket:
    """A client that sends its request and never reads: a 4 KB receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
    sock.connect(("127.0.0.1", port))
    body = "Content-Length: 0\r\n" if method == "POST" else ""
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{body}\r\n".encode())
    return sock


def stall_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "No write progress" in r.getMessage()]


async def assert_ended_as_stall(
    probe: Probe, caplog: pytest.LogCaptureFixture, *, cancelled: bool
) -> None:
    await probe.wait_finished(timeout=5)
    await settle()
    assert probe.values["status"] == 499
    assert access_statuses(caplog) == [499]
    assert [r.levelno for r in stall_records(caplog)] == [logging.INFO]
    assert all(r.levelno <= logging.WARNING for r in caplog.records)
    assert ("cancelled" in probe.events) is cancelled
    assert probe.count("on_finish") == 1


async def test_plain_flush_to_a_client_that_stops_reading_ends_as_499(port, probe, caplog):
    sock = stalled_client(port, "GET", "/write")
    try:
        await assert_ended_as_stall(probe, caplog, cancelled=True)
        assert probe.values["reason"] is WRITE_STALLED
        assert probe.values["sent"] < MAX_CHUNKS - 1  # it was stuck, not done
        # A departure for everything downstream, and a close the server decided.
        assert probe.values["gone, closed by server"] == (True, True)
    finally:
        sock.close()


async def test_uncancellable_post_runs_to_its_end_then_logs_499(port, probe, caplog):
    sock = stalled_client(port, "POST", "/write")
    try:
        await assert_ended_as_stall(probe, caplog, cancelled=False)
        # Not cut in half: it ran to completion, its output dropped quietly.
        assert "completed" in probe.events
        assert probe.values["reason"] is WRITE_STALLED
    finally:
        sock.close()


async def test_the_application_setting_applies_when_the_class_sets_nothing(port, probe, caplog):
    sock = stalled_client(port, "GET", "/settings")
    try:
        await assert_ended_as_stall(probe, caplog, cancelled=True)
        assert "write_timeout=0.4" in stall_records(caplog)[0].getMessage()
    finally:
        sock.close()


async def test_without_a_write_timeout_the_writer_waits(port, probe, caplog):
    sock = stalled_client(port, "GET", "/patient")
    try:
        await wait_until(lambda: "sent" in probe.values, what="the writer started")
        await nothing_happens_within(0.8, what="the stalled response ending")
        assert "on_finish" not in probe.events
    finally:
        sock.close()
    await probe.wait_finished()


async def test_sse_stream_to_a_client_that_stops_reading_ends_as_499(port, probe, caplog):
    sock = stalled_client(port, "GET", "/events")
    try:
        await assert_ended_as_stall(probe, caplog, cancelled=True)
    finally:
        sock.close()


async def test_relayed_events_to_a_client_that_stops_reading_end_as_499(port, probe, caplog):
    # The producer never writes itself: it waits on its subscription while
    # publish() writes. Only the write's lack of progress can end it.
    sock = stalled_client(port, "GET", "/relayed")
    try:
        await wait_until(lambda: BROADCASTER.subscriber_count("news") == 1, what="subscribed")
        for _ in range(100):  # 6 MB: more than the kernel buffers, far below the bound
            await BROADCASTER.publish("news", "v" * 60000)
        await assert_ended_as_stall(probe, caplog, cancelled=False)
        assert BROADCASTER.subscriber_count("news") == 0
    finally:
        sock.close()


async def test_json_lines_to_a_client_that_stops_reading_ends_as_499(port, probe, caplog):
    sock = stalled_client(port, "GET", "/lines")
    try:
        await assert_ended_as_stall(probe, caplog, cancelled=True)
    finally:
        sock.close()


async def test_big_write_json_to_a_client_that_stops_reading_ends_as_499(port, probe, caplog):
    sock = stalled_client(port, "GET", "/json-short")
    try:
        await assert_ended_as_stall(probe, caplog, cancelled=False)
    finally:
        sock.close()


async def test_a_long_poll_answer_to_a_client_that_stops_reading_ends_as_499(port, probe, caplog):
    sock = stalled_client(port, "GET", "/poll")
    try:
        await assert_ended_as_stall(probe, caplog, cancelled=False)
    finally:
        sock.close()


async def test_a_finished_response_whose_last_bytes_stall_is_closed_and_logged_once(port, caplog):
    sock = stalled_client(port, "GET", "/finish-huge")
    try:
        await wait_until(lambda: stall_records(caplog), what="the stall noticed")
        # The access line was written at finish(), with the status sent; the stall
        # closes the connection without a second line.
        assert access_statuses(caplog) == [200]
        await nothing_happens_within(0.5, what="a second stall record or access line")
        assert len(stall_records(caplog)) == 1
        assert access_statuses(caplog) == [200]
        # The connection was closed: what the kernels held, then the end, short
        # of the 20 MB announced.
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        received = 0
        while True:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
        assert received < len(CHUNK) * 300
    finally:
        sock.close()


async def test_a_stuck_big_response_holds_its_bytes_not_its_document(port, probe, caplog):
    sock = stalled_client(port, "GET", "/json")
    try:
        await wait_until(lambda: "document" in probe.values, what="the document built")

        def document_released() -> bool:
            gc.collect()
            ref: Optional[weakref.ref[Document]] = probe.values["document"]
            return ref is not None and ref() is None

        await wait_until(document_released, what="the document released once encoded")
        assert "on_finish" not in probe.events  # still stuck, well before write_timeout
    finally:
        sock.close()
    await probe.wait_finished(timeout=10)


async def test_a_slow_reader_that_keeps_reading_is_not_cut(port, probe, caplog):
    # A second without a single byte ends a response; this client takes 32 KB (its
    # whole window) every 20 ms, so the writes progress, however long the whole
    # takes (about 2.5 s, more than write_timeout).
    chunks = 60
    path = f"/slow-reader?chunks={chunks}&sndbuf=65536"
    sock = stalled_client(port, "GET", path, window=32768)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 0
    try:
        while "on_finish" not in probe.events or received < chunks * len(CHUNK):
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 32768), 2)
            except asyncio.TimeoutError:
                break
            if not data:
                break
            received += len(data)
            await nothing_happens_within(0.02, what="(pacing a slow reader)")
    finally:
        sock.close()
    await probe.wait_finished()
    assert stall_records(caplog) == []
    assert probe.values.get("pended")  # the writes did wait for the client
    assert probe.values["status"] == 200
    assert received > chunks * len(CHUNK)
    assert loop.time() - started > SlowReaderWriter.write_timeout  # longer than the bound


def test_write_timeout_is_checked_at_class_definition() -> None:
    for bad in (0, -1, float("nan"), float("inf"), True, "30"):
        with pytest.raises(ValueError, match="write_timeout"):
            type("Bad", (SafeWriteMixin, tornado.web.RequestHandler), {"write_timeout": bad})
    assert DEFAULT_WRITE_TIMEOUT == 30.0


@pytest.mark.allow_error_log("Ignoring the write_timeout setting")
async def test_a_bad_setting_is_reported_once_and_the_default_kept(caplog) -> None:
    from tornado.httpclient import AsyncHTTPClient
    from tornado.testing import bind_unused_port

    class Plain(SafeWriteMixin, tornado.web.RequestHandler):
        def get(self) -> None:
            self.write(str(self._jsonservlet_write_timeout()))

    app = tornado.web.Application([("/", Plain)], write_timeout="soon")
    sock, port = bind_unused_port()
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    try:
        client = AsyncHTTPClient()
        for _ in range(2):
            response = await client.fetch(f"http://127.0.0.1:{port}/")
            assert response.body == b"30.0"
    finally:
        server.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
