"""relay_events and the direct write path, against real servers and real clients.

``relay_events`` writes each published message to each subscriber from inside
``publish()``, and a stream's chunks after the headers skip ``RequestHandler.flush``
(straight to the socket when it can). These tests check what a client sees on the
wire (byte for byte, with strictly parsed chunked framing, as HTTP/1.0, gzipped,
for HEAD), what happens to clients that read slowly, fall behind or leave, how a
relay ends, and that several writers on one response never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import zlib
from collections.abc import AsyncIterator
from typing import Any, Optional

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.test
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.iostream import IOStream, StreamClosedError

from tests.sse_client import StreamReader, parse_events
from tests.support import (
    Probe,
    ProbeStream,
    access_lines,
    nothing_happens_within,
    settle,
    wait_until,
)
from tornado_jsonservlet import EndReason, EventStreamMixin, InMemoryBroadcaster, JsonErrorMixin
from tornado_jsonservlet.streams.sse_format import ServerSentEvent, format_event
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

HOW = pytest.mark.parametrize("how", ["fin", "rst"])

# Small kernel buffers on both ends, so that a client that does not read blocks
# the server's writes after a few kilobytes.
SERVER_SNDBUF = 8192
CLIENT_RCVBUF = 4096


class RelayProbeStream(ProbeStream):
    """The shared probe reporting, plus a way to shrink the server's send buffer."""

    def small_send_buffer(self) -> None:
        stream = self.request.connection.stream  # type: ignore[attr-defined]
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SNDBUF)


class Relay(RelayProbeStream, EventStreamMixin, JsonErrorMixin, tornado.web.RequestHandler):
    """``/relay/<channel>``: relays the channel until it ends.

    ``?event=`` names plain messages; ``?sndbuf=1`` shrinks the server's send
    buffer; ``?max_queued=N`` bounds the subscription; ``?hold=1`` opens the
    stream, then waits for the test's ``go`` before relaying.
    """

    heartbeat_interval = None

    async def get(self, channel: str) -> None:
        self.probe.values.setdefault("handlers", []).append(self)
        if self.get_argument("sndbuf", None):
            self.small_send_buffer()
        max_queued = self.get_argument("max_queued", None)
        try:
            async with self.broadcaster.subscribe(
                channel, max_queued=int(max_queued) if max_queued else None
            ) as messages:
                if self.get_argument("hold", None):
                    await self.start_stream()
                    self.probe.suspended.set()
                    await self.probe.values["go"].wait()
                ended = await self.relay_events(messages, event=self.get_argument("event", None))
                self.probe.hit("returned")
                self.probe.values.setdefault("ended", []).append(ended)
                self.probe.values.setdefault("buffered_at_return", []).append(self.buffered_bytes)
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise
        except StreamClosedError:
            self.probe.hit("stream-closed")
            raise
        except Exception as error:
            self.probe.hit(f"raised {type(error).__name__}")
            raise
        finally:
            self.probe.hit("finally")

    head = get


class Limited(Relay):
    max_buffered_bytes = 64 * 1024


class Uncancellable(Relay):
    cancel_policy = "none"


class Beating(Relay):
    heartbeat_interval = 0.02


class Padded(Beating):
    """Writes a big preamble before the stream starts (a padding comment)."""

    async def get(self, channel: str) -> None:
        self.write(":" + " " * 300_000 + "\n\n")
        await super().get(channel)


class Resume(RelayProbeStream, EventStreamMixin, JsonErrorMixin, tornado.web.RequestHandler):
    """The resume pattern: subscribe, replay the history after Last-Event-ID, relay."""

    heartbeat_interval = None

    async def get(self) -> None:
        history: list[ServerSentEvent] = self.probe.values["history"]
        last = self.last_event_id  # a bad header is a 400 here, before the stream starts
        async with self.broadcaster.subscribe("news") as messages:
            # Subscribed first: whatever is published while the history is sent
            # is queued, and relayed after it.
            backlog = [e for e in history if last is None or int(str(e.id)) > int(last)]
            for event in backlog:
                await self.send_event(event)
            self.probe.suspended.set()
            await self.relay_events(messages)


class Senders(RelayProbeStream, EventStreamMixin, tornado.web.RequestHandler):
    """Five tasks send to one slow client; the third small one is cancelled while it waits."""

    heartbeat_interval = None

    async def get(self) -> None:
        self.small_send_buffer()
        await self.start_stream()
        calls: list[str] = []
        done: list[str] = []

        async def send(name: str, data: str) -> None:
            calls.append(name)
            try:
                await self.send_event(data, event=name)
            except asyncio.CancelledError:
                done.append(f"{name} cancelled")
                raise
            done.append(name)

        tasks = {}
        for name, data in (("a", "a"), ("big", "x" * 300_000), ("b", "b"), ("c", "c"), ("d", "d")):
            tasks[name] = self.spawn(send(name, data))
            await asyncio.sleep(0)  # the task starts, and sends, before the next one
        await asyncio.sleep(0.05)
        self.probe.values["calls"] = list(calls)
        self.probe.values["done before the client reads"] = list(done)
        tasks["c"].cancel()
        self.probe.suspended.set()
        await asyncio.gather(*(task for name, task in tasks.items() if name != "c"))
        self.probe.values["done"] = list(done)


class EndsWithASendQueued(RelayProbeStream, EventStreamMixin, tornado.web.RequestHandler):
    """Returns while a spawned send still waits behind a big one in flight."""

    heartbeat_interval = None

    async def get(self) -> None:
        self.small_send_buffer()
        await self.start_stream()
        self.spawn(self.send_event("x" * 300_000))
        await asyncio.sleep(0)
        self.spawn(self.send_event("late"))
        await asyncio.sleep(0)
        self.probe.values["buffered_at_return"] = self.buffered_bytes


class Length(RelayProbeStream, EventStreamMixin, JsonErrorMixin, tornado.web.RequestHandler):
    """A stream with a Content-Length set by the application (a programming error).

    ``?mode=sequential`` sends three events in turn; ``concurrent`` sends a big
    event and, from another task, a small one queued behind it; ``relay`` relays
    channel "length".
    """

    heartbeat_interval = None

    async def get(self) -> None:
        self.set_header("Content-Length", self.get_argument("cl"))
        mode = self.get_argument("mode")
        try:
            if mode == "sequential":
                for text in ("first", "second", "third"):
                    await self.send_event(text)
            elif mode == "concurrent":
                self.small_send_buffer()
                await self.start_stream()
                big = self.spawn(self.send_event("x" * 300_000))
                await asyncio.sleep(0)
                small = self.spawn(self.send_event("a" * 30))
                self.probe.suspended.set()
                await asyncio.gather(big, small)
            else:
                async with self.broadcaster.subscribe("length") as messages:
                    await self.relay_events(messages)
        except Exception as error:
            self.probe.hit(f"raised {type(error).__name__}")
            raise


class Plain(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("plain")


class Prepared(EventStreamMixin, tornado.web.RequestHandler):
    """``/prepared``: sends ServerSentEvents with ``send_event``; a misuse is reported
    in the stream itself (as a comment) so the test can see the error's text."""

    heartbeat_interval = None

    async def get(self) -> None:
        await self.send_event(ServerSentEvent({"n": 1}, event="tick", id=1))
        try:
            await self.send_event(ServerSentEvent({"n": 2}, id=2), event="other")
        except TypeError as error:
            await self.send_comment(str(error))
        await self.send_event(ServerSentEvent("last", id=3, retry=500))


def make_app(
    probe: Probe, broadcaster: InMemoryBroadcaster, **settings: Any
) -> tornado.web.Application:
    shared = {"probe": probe, "broadcaster": broadcaster}
    return tornado.web.Application(
        [
            (r"/relay/(\w+)", Relay, shared),
            (r"/limited/(\w+)", Limited, shared),
            (r"/uncancellable/(\w+)", Uncancellable, shared),
            (r"/beating/(\w+)", Beating, shared),
            (r"/padded/(\w+)", Padded, shared),
            (r"/resume", Resume, shared),
            (r"/senders", Senders, shared),
            (r"/ends-early", EndsWithASendQueued, shared),
            (r"/length", Length, shared),
            (r"/plain", Plain),
            (r"/prepared", Prepared),
        ],
        **settings,
    )


@pytest.fixture
def broadcaster() -> InMemoryBroadcaster:
    return InMemoryBroadcaster()


@pytest.fixture
def app(io_loop: Any, probe: Probe, broadcaster: InMemoryBroadcaster) -> tornado.web.Application:
    return make_app(probe, broadcaster)


@pytest.fixture(autouse=True)
def close_readers(io_loop: Any) -> Any:
    # After the test, before its loop closes.
    yield
    while StreamReader.opened:
        StreamReader.opened.pop().close()


@contextlib.asynccontextmanager
async def serving(app: tornado.web.Application, **server_options: Any) -> AsyncIterator[int]:
    """``app`` on a loopback port of its own (for other settings)."""
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app, **server_options)
    server.add_sockets(sockets)
    try:
        yield sockets[0].getsockname()[1]
    finally:
        server.stop()
        await server.close_all_connections()


async def open_stream(
    port: int,
    path: str,
    *,
    headers: Optional[dict[str, str]] = None,
    method: str = "GET",
    small_receive_buffer: bool = False,
) -> StreamReader:
    """A streamed response on a raw connection, headers read.

    ``small_receive_buffer``: the socket's receive buffer is set before it
    connects (the window is negotiated then), so a client that does not read
    stops the server's writes quickly.
    """
    sock = socket.socket()
    if small_receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    stream = IOStream(sock)
    await stream.connect(("127.0.0.1", port))
    conn = RawHTTPConnection(stream)
    await conn.send_request(method, path, headers=headers)
    reader = StreamReader(conn)
    await reader.read_head()
    return reader


def sse_bytes(messages: list[Any], event: Optional[str] = None) -> bytes:
    """What a relay sends for ``messages``: each exactly as send_event would."""
    return b"".join(
        m.encoded if isinstance(m, ServerSentEvent) else format_event(m, event=event)
        for m in messages
    )


def error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def statuses(caplog: pytest.LogCaptureFixture, path: str) -> list[int]:
    """Access-log statuses of the requests to ``path`` (whatever their query)."""
    found = []
    for line in access_lines(caplog):
        status, _method, uri = line.split()[:3]
        if uri.split("?")[0] == path:
            found.append(int(status))
    return found


class CountedJson:
    """A message whose encoding is counted (ujson calls ``__json__``)."""

    encodings = 0

    def __json__(self) -> str:
        CountedJson.encodings += 1
        return '{"counted":true}'


class ExplodingJson:
    """A message whose encoding fails with something other than TypeError."""

    def __json__(self) -> str:
        raise KeyError("no such field")


# -- delivery ---------------------------------------------------------------------


async def test_every_message_reaches_every_client_in_order_byte_for_byte(
    port, probe, broadcaster, caplog
):
    CountedJson.encodings = 0
    plain = [
        await open_stream(port, "/relay/news", headers={"Accept": "text/event-stream"})
        for _ in range(25)
    ]
    named = [await open_stream(port, "/relay/news?event=update") for _ in range(25)]
    await wait_until(
        lambda: broadcaster.subscriber_count("news") == 50, what="50 subscriber(s) on channel news"
    )
    counted = CountedJson()
    messages: list[Any] = [
        {"n": 0, "text": "café"},
        "line one\nline two\r\nline three",
        ServerSentEvent({"n": 2}, id=2),
        ServerSentEvent("special", event="special", id="x-3", retry=2500),
        counted,
        [1, None, True],
        *({"n": n} for n in range(6, 60)),
    ]
    for message in messages:
        assert await broadcaster.publish("news", message) == 50
    # Encoded once per publish and event name, not once per subscriber.
    assert CountedJson.encodings == 2
    await broadcaster.close()

    bodies = await asyncio.gather(*(reader.read_until_complete() for reader in plain + named))
    assert all(body == sse_bytes(messages) for body in bodies[:25])
    assert all(body == sse_bytes(messages, event="update") for body in bodies[25:])
    # The fields on the wire, literally.
    assert b'id: 2\ndata: {"n":2}\n\n' in bodies[0]
    assert b"event: special\nid: x-3\nretry: 2500\ndata: special\n\n" in bodies[30]
    assert b"event: update\ndata: line one\ndata: line two\ndata: line three\n\n" in bodies[30]
    events, _ = parse_events(bodies[30].decode())
    # event= names plain messages; a ServerSentEvent keeps its own fields.
    assert [e.event for e in events[:5]] == ["update", "update", "message", "special", "update"]
    assert [e.id for e in events[:4]] == [None, None, "2", "x-3"]
    assert json.loads(events[4].data) == {"counted": True}

    await probe.wait_finished()
    await wait_until(lambda: probe.count("on_finish") == 50, what="50 handler(s) finished")
    assert probe.values["ended"] == [EndReason.BROADCASTER_CLOSED] * 50
    assert probe.values["buffered_at_return"] == [0] * 50
    assert statuses(caplog, "/relay/news") == [200] * 50
    assert error_records(caplog) == []


async def test_messages_queued_before_the_relay_starts_go_first(port, probe, broadcaster):
    probe.values["go"] = asyncio.Event()
    reader = await open_stream(port, "/relay/c?hold=1")
    await probe.wait_suspended()
    for n in range(3):
        await broadcaster.publish("c", {"n": n})
    probe.values["go"].set()
    for n in range(3, 5):
        await broadcaster.publish("c", {"n": n})
        await asyncio.sleep(0)
    await broadcaster.close()
    body = await reader.read_until_complete()
    assert body == sse_bytes([{"n": n} for n in range(5)])


async def test_a_client_resumes_after_its_last_event_id(port, probe, broadcaster):
    history: list[ServerSentEvent] = []
    probe.values["history"] = history

    async def publish(n: int) -> None:
        event = ServerSentEvent({"n": n}, id=n)
        history.append(event)
        await broadcaster.publish("news", event)

    for n in range(1, 6):
        await publish(n)
    reader = await open_stream(port, "/resume", headers={"Last-Event-ID": "3"})
    await probe.wait_suspended()
    await publish(6)
    await publish(7)
    received = [await reader.next_event() for _ in range(4)]
    assert [(json.loads(e.data)["n"], e.id) for e in received] == [
        (4, "4"),
        (5, "5"),
        (6, "6"),
        (7, "7"),
    ]
    await broadcaster.close()
    await reader.read_until_complete()


# -- on the wire ------------------------------------------------------------------


async def test_http_1_0_client_gets_the_events_raw_and_the_connection_closes(
    port, probe, broadcaster, caplog
):
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(b"GET /relay/c HTTP/1.0\r\nHost: x\r\n\r\n")
    reader = StreamReader(conn)
    await reader.read_head()
    assert reader.status == 200
    assert "Transfer-Encoding" not in reader.headers
    assert "Content-Length" not in reader.headers
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    messages = [{"n": n} for n in range(20)] + ["a\nb", ServerSentEvent("x", id=9)]
    for message in messages:
        await broadcaster.publish("c", message)
    await broadcaster.close()
    assert await conn.read_until_close() == sse_bytes(messages)
    assert conn.stream.closed()
    await probe.wait_finished()
    await settle()
    assert statuses(caplog, "/relay/c") == [200]


async def test_send_event_sends_a_server_sent_event_as_it_was_encoded(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/prepared", request_timeout=10)
    first = ServerSentEvent({"n": 1}, event="tick", id=1)
    last = ServerSentEvent("last", id=3, retry=500)
    body = response.body
    assert body.startswith(first.encoded)
    assert body.endswith(last.encoded)
    # Fields given beside a ServerSentEvent are refused, and nothing of it is sent.
    assert b"carries its own event, id and retry" in body
    assert b'"n":2' not in body
    events, comments = parse_events(body.decode())
    assert [(e.data, e.id) for e in events] == [('{"n":1}', "1"), ("last", "3")]
    assert events[0].event == "tick"
    assert events[1].retry == 500
    assert any("carries its own event, id and retry" in comment for comment in comments)


async def test_chunked_framing_parses_with_tornados_client(http_client, base_url, broadcaster):
    received: list[bytes] = []
    response_future = http_client.fetch(
        f"{base_url}/relay/c", streaming_callback=received.append, request_timeout=10
    )
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    messages = [{"n": n, "pad": "p" * n} for n in range(40)]
    for message in messages[:20]:
        await broadcaster.publish("c", message)
    # Delivered as published, not only at the end.
    await wait_until(
        lambda: b"".join(received) == sse_bytes(messages[:20]), what="the first 20 events received"
    )
    for message in messages[20:]:
        await broadcaster.publish("c", message)
    await broadcaster.close()
    response = await response_future
    assert response.code == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert b"".join(received) == sse_bytes(messages)


async def test_gzip_transform_still_gives_a_valid_gzip_stream(probe, broadcaster, caplog):
    async with serving(make_app(probe, broadcaster, compress_response=True)) as port:
        reader = await open_stream(port, "/relay/c", headers={"Accept-Encoding": "gzip"})
        assert reader.headers["Content-Encoding"] == "gzip"
        await wait_until(
            lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
        )
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = b""
        messages = [{"n": n, "text": "é" * n} for n in range(15)]
        for n, message in enumerate(messages):
            await broadcaster.publish("c", message)
            # Each event can be decoded as soon as it arrives (a sync flush per write).
            expected = sse_bytes(messages[: n + 1])
            while len(text) < len(expected):
                text += inflater.decompress(await reader.read_chunk())
            assert text == expected
        already = len(reader.chunks)
        await broadcaster.close()
        await reader.read_until_complete()
        for chunk in reader.chunks[already:]:
            text += inflater.decompress(chunk)
        assert inflater.eof  # the gzip trailer arrived: a complete gzip stream
        assert inflater.unused_data == b""
        assert text == sse_bytes(messages)
        await probe.wait_finished()
    await settle()
    assert statuses(caplog, "/relay/c") == [200]


async def test_tls_connections_are_written_through_tornado(probe, broadcaster, caplog):
    """Only a plain TCP stream is written to directly; TLS goes through the
    connection, and big events are still whole and in order."""
    certificates = os.path.dirname(tornado.test.__file__)
    tls = {
        "certfile": os.path.join(certificates, "test.crt"),
        "keyfile": os.path.join(certificates, "test.key"),
    }
    received: list[bytes] = []
    messages = [{"n": n, "pad": "p" * (n * 20_000)} for n in range(12)]
    async with serving(make_app(probe, broadcaster), ssl_options=tls) as port:
        response_future = AsyncHTTPClient().fetch(
            f"https://127.0.0.1:{port}/relay/c",
            validate_cert=False,
            streaming_callback=received.append,
            request_timeout=10,
        )
        await wait_until(
            lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
        )
        for message in messages:
            await broadcaster.publish("c", message)
        await broadcaster.close()
        response = await response_future
        await probe.wait_finished()
    assert response.code == 200
    assert b"".join(received) == sse_bytes(messages)
    assert probe.values["ended"] == [EndReason.BROADCASTER_CLOSED]
    await settle()
    assert statuses(caplog, "/relay/c") == [200]


async def test_head_gets_the_headers_and_no_body(port, probe, broadcaster, caplog):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("HEAD", "/relay/c")
    head = StreamReader(conn)
    await head.read_head()
    assert head.status == 200
    assert head.headers["Content-Type"] == "text/event-stream"
    assert "Transfer-Encoding" not in head.headers
    # A HEAD has no body to relay anything into: it ends after its headers, and
    # its subscription with it.
    await probe.wait_finished()
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 0, what="the HEAD's subscription closed"
    )
    # The connection is kept alive: had any body byte been sent, the next
    # response would not start where it must.
    await conn.send_request("GET", "/plain")
    follow_up = StreamReader(conn)
    await follow_up.read_head()
    assert follow_up.status == 200
    length = int(follow_up.headers["Content-Length"])
    assert await asyncio.wait_for(conn.stream.read_bytes(length), 5) == b"plain"
    await settle()
    assert statuses(caplog, "/relay/c") == [200]
    assert error_records(caplog) == []


async def test_a_send_still_queued_when_the_response_ends_is_not_written_after_it(
    port, probe, caplog
):
    """The handler returns while a spawned send waits behind a big event. Spawned
    work ends with the request: that send is dropped (as before the direct write
    path), never written after the terminating chunk, where the next response on
    the connection begins."""
    reader = await open_stream(port, "/ends-early", small_receive_buffer=True)
    await probe.wait_finished()
    assert probe.values["buffered_at_return"] > 0  # "late" was queued, then
    body = await reader.read_until_complete()
    events, _ = parse_events(body.decode())
    assert [e.data for e in events] == ["x" * 300_000]
    await reader.conn.send_request("GET", "/plain")
    follow_up = StreamReader(reader.conn)
    await follow_up.read_head()
    assert follow_up.status == 200
    await settle()
    assert statuses(caplog, "/ends-early") == [200]
    assert error_records(caplog) == []


# -- a Content-Length set by the application -----------------------------------------
# A programming error that Tornado reports (HTTPOutputError, connection closed). The
# outcome is as it was before the direct write path: one "Uncaught exception" and a
# 500 in the access log, the client sees a truncated body, nothing hangs.


@pytest.mark.allow_error_log(r"^Uncaught exception GET /length", r"^500 GET /length")
async def test_content_length_overflow_is_reported_as_before(port, probe, caplog):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", "/length?cl=14&mode=sequential")
    response = await conn.read_until_close()
    assert response.endswith(b"\r\n\r\ndata: first\n\n")
    await probe.wait_finished()
    assert probe.events == ["raised HTTPOutputError", "on_finish"]
    await settle()
    assert statuses(caplog, "/length") == [500]
    assert [m.splitlines()[0] for m in error_records(caplog) if m.startswith("Uncaught")] == [
        "Uncaught exception GET /length?cl=14&mode=sequential (127.0.0.1)"
    ]


@pytest.mark.allow_error_log(r"^Uncaught exception GET /length", r"^500 GET /length")
async def test_content_length_overflow_by_a_queued_send_is_reported_as_before(port, probe, caplog):
    """The small event is written from the completion of the big one, in a
    callback: its sender still gets the error, and the request still ends."""
    big = len(format_event("x" * 300_000))
    reader = await open_stream(
        port, f"/length?cl={big + 10}&mode=concurrent", small_receive_buffer=True
    )
    await probe.wait_suspended()
    assert reader.headers["Content-Length"] == str(big + 10)
    # The client reads nothing yet: the small send stays queued behind the big one.
    await nothing_happens_within(0.1, what="the client reading the big event")
    body = await reader.conn.read_until_close()
    assert body == format_event("x" * 300_000)
    await probe.wait_finished()
    assert probe.events == ["raised HTTPOutputError", "on_finish"]
    await settle()
    assert statuses(caplog, "/length") == [500]
    assert len([m for m in error_records(caplog) if m.startswith("Uncaught")]) == 1


@pytest.mark.allow_error_log(r"^Uncaught exception GET /length", r"^500 GET /length")
async def test_content_length_overflow_under_relay_is_the_handlers_not_the_publishers(
    port, probe, broadcaster, caplog
):
    length = await open_stream(port, "/length?cl=20&mode=relay")
    other = await open_stream(port, "/relay/length")
    await wait_until(
        lambda: broadcaster.subscriber_count("length") == 2,
        what="2 subscriber(s) on channel length",
    )
    for n in range(3):
        await broadcaster.publish("length", f"message-{n}")  # does not raise
    assert await length.conn.read_until_close() == b"data: message-0\n\n"
    received = [await other.next_event() for _ in range(3)]
    assert [e.data for e in received] == ["message-0", "message-1", "message-2"]
    await wait_until(
        lambda: "raised HTTPOutputError" in probe.events, what="the sender gets HTTPOutputError"
    )
    await wait_until(
        lambda: statuses(caplog, "/length") == [500], what="the access log's 500 for /length"
    )
    assert len([m for m in error_records(caplog) if m.startswith("Uncaught")]) == 1
    await broadcaster.close()
    await other.read_until_complete()


# -- slow clients --------------------------------------------------------------------


async def test_a_slow_reader_gets_every_byte_in_order_and_the_backlog_empties(
    port, probe, broadcaster, caplog
):
    """Writes to a client that reads slowly are cut short by the kernel: the
    remainder goes to Tornado's stream, later chunks queue behind it."""
    reader = await open_stream(port, "/relay/c?sndbuf=1", small_receive_buffer=True)
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    (handler,) = probe.values["handlers"]
    messages = [{"n": n, "pad": "p" * 3000} for n in range(100)]
    most_behind = 0
    for message in messages:
        await broadcaster.publish("c", message)
        most_behind = max(most_behind, handler.buffered_bytes)
    assert most_behind > 0  # the kernel did not take everything at once
    expected = sse_bytes(messages)
    while len(reader.body) < len(expected):
        await reader.read_chunk()
        await asyncio.sleep(0.002)  # a slow reader
    assert reader.body == expected
    await wait_until(lambda: handler.buffered_bytes == 0, what="the slow reader has caught up")
    assert "on_finish" not in probe.events  # paced, not dropped
    await broadcaster.close()
    await reader.read_until_complete()
    assert reader.body == expected
    await probe.wait_finished()
    assert probe.values["buffered_at_return"] == [0]
    await settle()
    assert statuses(caplog, "/relay/c") == [200]
    assert error_records(caplog) == []


async def test_a_client_too_far_behind_is_dropped_and_the_others_are_not(
    port, probe, broadcaster, caplog
):
    fast = [await open_stream(port, "/limited/c") for _ in range(3)]
    slow = await open_stream(port, "/limited/c?sndbuf=1", small_receive_buffer=True)
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 4, what="4 subscriber(s) on channel c"
    )
    readers = [asyncio.ensure_future(reader.read_until_complete(timeout=10)) for reader in fast]
    messages = [{"n": n, "pad": "p" * 8000} for n in range(40)]
    for n, message in enumerate(messages):
        await broadcaster.publish("c", message)
        so_far = len(sse_bytes(messages[: n + 1]))
        await wait_until(  # the fast readers keep up
            lambda: all(len(reader.body) >= so_far for reader in fast),  # noqa: B023
            what=f"the fast readers receive event {n}",
        )
    await wait_until(lambda: probe.count("on_finish") == 1, what="1 handler(s) finished")
    assert probe.events.count("cancelled") == 1
    assert broadcaster.subscriber_count("c") == 3
    with pytest.raises(StreamClosedError):
        await slow.read_until_complete()
    assert not slow.complete
    dropped = [
        r
        for r in caplog.records
        if r.name == "tornado_jsonservlet.streaming" and "fell" in r.getMessage()
    ]
    assert len(dropped) == 1
    assert dropped[0].levelno == logging.INFO
    assert "max_buffered_bytes=65536" in dropped[0].getMessage()
    await broadcaster.close()
    bodies = await asyncio.gather(*readers)
    assert all(body == sse_bytes(messages) for body in bodies)
    await wait_until(lambda: probe.count("on_finish") == 4, what="4 handler(s) finished")
    await settle()
    assert sorted(statuses(caplog, "/limited/c")) == [200, 200, 200, 499]
    assert broadcaster.subscriber_count() == 0
    assert error_records(caplog) == []


# -- the client leaves -----------------------------------------------------------------


@HOW
@pytest.mark.parametrize("writing", [False, True], ids=["idle", "write-pending"])
async def test_a_client_leaving_during_a_relay_is_a_499(
    port, probe, broadcaster, caplog, how, writing
):
    baseline = len(asyncio.all_tasks())
    path = "/relay/c?sndbuf=1" if writing else "/relay/c"
    reader = await open_stream(port, path, small_receive_buffer=writing)
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    await broadcaster.publish("c", "hello")
    assert (await reader.next_event()).data == "hello"
    if writing:
        await broadcaster.publish("c", "x" * 200_000)
        assert probe.values["handlers"][0].buffered_bytes > 0
    reader.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.events == ["cancelled", "finally", "on_finish"]
    assert broadcaster.subscriber_count() == 0
    assert statuses(caplog, "/relay/c") == [499]
    assert error_records(caplog) == []
    await broadcaster.publish("c", "nobody is listening")  # nothing left to write to
    await wait_until(
        lambda: len(asyncio.all_tasks()) <= baseline, what="the tasks back to the baseline"
    )


@HOW
async def test_an_uncancellable_relay_raises_stream_closed_when_the_client_leaves(
    port, probe, broadcaster, caplog, how
):
    reader = await open_stream(port, "/uncancellable/c")
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    await broadcaster.publish("c", "hello")
    await reader.next_event()
    reader.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.events == ["stream-closed", "finally", "on_finish"]
    assert broadcaster.subscriber_count() == 0
    assert statuses(caplog, "/uncancellable/c") == [499]
    # The StreamClosedError is not reported at all.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        line for line in access_lines(caplog) if line.startswith("499")
    ]


@pytest.mark.parametrize("found_by", ["heartbeat", "publish"])
async def test_a_relay_finds_a_peer_that_vanished_unnoticed(
    port, probe, broadcaster, caplog, found_by
):
    """The client closes, but the server is not told: it had read a pipelined
    byte after the request, so it is not watching the socket. A write straight
    to the socket then fails (a reset after the first one), and the relay is
    cancelled like for any departure, whether a heartbeat or a published
    message found it."""
    path = "/beating/c" if found_by == "heartbeat" else "/relay/c"
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\nX".encode())
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    conn.close("fin")
    await nothing_happens_within(0.05, what="the server noticing the close by itself")
    if found_by == "heartbeat":
        await probe.wait_finished(timeout=3)
    else:
        assert "on_finish" not in probe.events  # not noticed by the close itself
        sent = iter(range(100))

        async def publish_and_look() -> bool:
            await broadcaster.publish("c", {"n": next(sent)})
            return probe.finished.is_set()

        await wait_until(
            publish_and_look,
            what="a published message finds the peer gone",
            timeout=2,
            interval=0.02,
        )
    await settle()
    assert probe.events == ["cancelled", "finally", "on_finish"]
    assert broadcaster.subscriber_count() == 0
    assert statuses(caplog, path) == [499]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        line for line in access_lines(caplog) if line.startswith("499")
    ]


# -- the subscription ends ---------------------------------------------------------------


async def test_relay_returns_once_everything_before_the_end_is_flushed(
    port, probe, broadcaster, caplog
):
    reader = await open_stream(port, "/relay/c?sndbuf=1", small_receive_buffer=True)
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    await broadcaster.publish("c", "x" * 200_000)
    await broadcaster.publish("c", "after")
    await broadcaster.close()
    await nothing_happens_within(0.2, what="the relay returning before the client reads")
    assert "returned" not in probe.events  # the client has not read it yet
    assert probe.values["handlers"][0].buffered_bytes > 0
    body = await reader.read_until_complete()
    assert body == sse_bytes(["x" * 200_000, "after"])
    assert reader.chunks[-1] == b""  # the terminating chunk
    await probe.wait_finished()
    assert probe.events == ["returned", "finally", "on_finish"]
    assert probe.values["ended"] == [EndReason.BROADCASTER_CLOSED]
    assert probe.values["buffered_at_return"] == [0]
    await settle()
    assert statuses(caplog, "/relay/c") == [200]
    assert error_records(caplog) == []


async def test_a_subscription_that_lagged_before_the_relay_ends_it_after_its_messages(
    port, probe, broadcaster, caplog
):
    probe.values["go"] = asyncio.Event()
    reader = await open_stream(port, "/relay/c?hold=1&max_queued=2")
    await probe.wait_suspended()
    for n in range(3):
        await broadcaster.publish("c", n)  # the third one finds the queue full
    assert broadcaster.subscriber_count("c") == 0
    probe.values["go"].set()
    assert await reader.read_until_complete() == sse_bytes([0, 1])
    await probe.wait_finished()
    assert probe.values["ended"] == [EndReason.LAGGED]
    await settle()
    assert statuses(caplog, "/relay/c") == [200]


# -- a message that cannot be encoded ----------------------------------------------------


@pytest.mark.allow_error_log(r"^Uncaught exception GET /relay/c ", r"^500 GET /relay/c ")
@pytest.mark.parametrize(
    ("message", "error"),
    [({1, 2}, "TypeError"), (ExplodingJson(), "KeyError")],
    ids=["set", "failing-__json__"],
)
async def test_an_unencodable_message_fails_the_relays_not_the_publisher(
    port, probe, broadcaster, caplog, message, error
):
    relays = [await open_stream(port, "/relay/c") for _ in range(2)]
    elsewhere = await open_stream(port, "/relay/d")
    await wait_until(lambda: broadcaster.subscriber_count() == 3, what="3 subscriber(s) in all")
    await broadcaster.publish("c", "before")
    await broadcaster.publish("c", message)  # the publisher is not affected
    for reader in relays:
        assert (await reader.next_event()).data == "before"
        # An error after the stream started: the connection is aborted, so the
        # client sees a truncated stream, never a clean end.
        with pytest.raises((StreamClosedError, EOFError)):
            await reader.read_until_complete()
        assert not reader.complete
    await wait_until(lambda: probe.count("on_finish") == 2, what="2 handler(s) finished")
    assert probe.events.count(f"raised {error}") == 2
    assert broadcaster.subscriber_count("c") == 0
    # Other channels keep working.
    assert await broadcaster.publish("d", "still here") == 1
    assert (await elsewhere.next_event()).data == "still here"
    await broadcaster.close()
    await elsewhere.read_until_complete()
    await settle()
    assert statuses(caplog, "/relay/c") == [500, 500]
    # An application bug, logged once per request (Tornado's log_exception).
    uncaught = [m for m in error_records(caplog) if m.startswith("Uncaught exception")]
    assert len(uncaught) == 2


# -- several writers on one response ----------------------------------------------------


async def test_heartbeats_interleave_with_relayed_events_without_overlapping(
    port, broadcaster, caplog
):
    reader = await open_stream(port, "/beating/c")
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    messages = [{"n": n, "pad": "p" * (n * 50)} for n in range(30)]
    for n, message in enumerate(messages):
        await broadcaster.publish("c", message)
        await asyncio.sleep(0.06 if n % 6 == 5 else 0.003)  # idle now and then
    await broadcaster.close()
    body = await reader.read_until_complete()
    # Every write is whole SSE blocks (strictly framed chunks, each ending a block).
    assert all(chunk.endswith(b"\n\n") for chunk in reader.chunks[:-1])
    blocks = body.split(b"\n\n")[:-1]
    heartbeats = [b for b in blocks if b == b":"]
    assert len(heartbeats) >= 3
    assert b"".join(b + b"\n\n" for b in blocks if b != b":") == sse_bytes(messages)
    await settle()
    assert statuses(caplog, "/beating/c") == [200]


async def test_a_heartbeat_due_while_the_headers_are_being_flushed_waits_its_turn(
    port, probe, broadcaster, caplog
):
    """The first write (headers and a big preamble) is still pending when the
    heartbeat falls due: the heartbeat queues behind it, and the relay, which
    waits for that first write, carries on."""
    reader = await open_stream(port, "/padded/c?sndbuf=1", small_receive_buffer=True)
    # Heartbeats fall due while the first write is pending; the client reads nothing.
    await nothing_happens_within(0.2, what="the client reading")
    await wait_until(
        lambda: broadcaster.subscriber_count("c") == 1, what="1 subscriber(s) on channel c"
    )
    await broadcaster.publish("c", "event")
    await broadcaster.close()
    body = await reader.read_until_complete()
    events, comments = parse_events(body.decode())
    assert [e.data for e in events] == ["event"]
    assert comments[0] == " " * 300_000
    assert len(comments) >= 2
    assert set(comments[1:]) == {""}
    await probe.wait_finished()
    assert probe.values["ended"] == [EndReason.BROADCASTER_CLOSED]
    await settle()
    assert statuses(caplog, "/padded/c") == [200]


async def test_concurrent_senders_are_written_in_call_order(port, probe, caplog):
    reader = await open_stream(port, "/senders", small_receive_buffer=True)
    await probe.wait_suspended()
    assert probe.values["calls"] == ["a", "big", "b", "c", "d"]
    # "a" went out at once; nobody waits for data sent after their own.
    assert probe.values["done before the client reads"] == ["a"]
    body = await reader.read_until_complete()
    events, _ = parse_events(body.decode())
    # "c" had been handed over before its sender was cancelled: it is written.
    assert [e.event for e in events] == ["a", "big", "b", "c", "d"]
    assert events[1].data == "x" * 300_000
    await probe.wait_finished()
    # Cancelling "c" did not cancel the wait of "b" and "d", queued with it.
    assert probe.values["done"] == ["a", "c cancelled", "big", "b", "d"]
    await settle()
    assert statuses(caplog, "/senders") == [200]
    assert error_records(caplog) == []
