"""Server-sent events, JSON lines and long-poll against real clients that stay, read
slowly, vanish, or leave with FIN or RST."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.web
from tornado.iostream import StreamClosedError

from tests.sse_client import StreamReader, parse_events
from tests.support import (
    Probe,
    ProbeStream,
    access_statuses,
    messages,
    nothing_happens_within,
    settle,
    wait_until,
)
from tornado_jsonservlet import (
    EventStreamMixin,
    EventStreamServlet,
    InMemoryBroadcaster,
    JsonErrorMixin,
    JsonLinesMixin,
    JsonResponseMixin,
    LongPollMixin,
    ServletRegistry,
    uncancellable,
)
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

HOW = pytest.mark.parametrize("how", ["fin", "rst"])


class SubscribedEvents(ProbeStream, EventStreamMixin, JsonErrorMixin, tornado.web.RequestHandler):
    """Relays channel "c" as events; ends the stream on an "end" message."""

    heartbeat_interval = 0.2

    async def get(self) -> None:
        self.probe.values["last_event_id"] = self.last_event_id
        self.spawn(self._child())
        try:
            async with self.broadcaster.subscribe("c") as messages:
                await self.start_stream()
                self.probe.suspended.set()
                async for message in messages:
                    if message == "end":
                        return
                    await self.send_event(message, id=self.probe.count("sent") + 1)
                    self.probe.hit("sent")
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise
        finally:
            self.probe.hit("finally")

    async def _child(self) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.probe.hit("child-cancelled")
            raise


class FormatEvents(EventStreamMixin, tornado.web.RequestHandler):
    heartbeat_interval = None

    async def get(self) -> None:
        await self.send_event({"a": [1, "é"]}, event="json", id=1)
        await self.send_event(["x", None])
        await self.send_event("one\ntwo\r\nthree\rfour", id="s-2", retry=1500)
        await self.send_event(" leading space and trailing\n")
        await self.send_event(42)
        for bad in ({"event": "x\ny"}, {"event": "x\ry"}, {"id": "1\n2"}, {"id": "a\0b"}):
            try:
                await self.send_event("injected", **bad)
            except ValueError as error:
                await self.send_comment(f"refused: {error}")
        try:
            await self.send_event({1, 2})  # type: ignore[arg-type]
        except TypeError:
            await self.send_comment("refused: a set")
        await self.send_event("last", id="café")


class LastEventId(EventStreamMixin, JsonErrorMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.send_event({"last_event_id": self.last_event_id})


class Silent(ProbeStream, EventStreamMixin, tornado.web.RequestHandler):
    """Sends its headers, then waits: only heartbeats go out."""

    heartbeat_interval = 0.1

    async def get(self) -> None:
        await self.start_stream()
        self.probe.suspended.set()
        try:
            await asyncio.sleep(30)
        finally:
            self.probe.hit("finally")


class Busy(EventStreamMixin, tornado.web.RequestHandler):
    """Sends an event every 50 ms: never idle long enough for a heartbeat."""

    heartbeat_interval = 0.2

    async def get(self) -> None:
        for n in range(12):
            await self.send_event(n)
            await asyncio.sleep(0.05)


class Flood(ProbeStream, EventStreamMixin, tornado.web.RequestHandler):
    """One producer, as fast as the client reads: 64 KB events."""

    max_buffered_bytes = 256 * 1024

    async def get(self) -> None:
        payload = "x" * 65536
        try:
            for n in range(2000):
                await self.send_event(payload, id=n)
                self.probe.values["sent"] = n + 1
                self.probe.values["max_buffered"] = max(
                    self.probe.values.get("max_buffered", 0), self.buffered_bytes
                )
                if n == 4:
                    self.probe.suspended.set()
        finally:
            self.probe.hit("finally")


class ConcurrentFlood(ProbeStream, EventStreamMixin, tornado.web.RequestHandler):
    """Several producers sending to one client at once (a fan-out done by hand)."""

    max_buffered_bytes = 256 * 1024

    async def get(self) -> None:
        payload = "y" * 65536

        async def producer() -> None:
            for _ in range(200):
                await self.send_event(payload)

        try:
            await self.start_stream()
            self.probe.suspended.set()
            await asyncio.gather(*(self.spawn(producer()) for _ in range(8)))
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise
        finally:
            self.probe.hit("finally")


class Uncancellable(ProbeStream, EventStreamMixin, tornado.web.RequestHandler):
    heartbeat_interval = None

    @uncancellable
    async def get(self) -> None:
        await self.start_stream()
        self.probe.suspended.set()
        try:
            while True:
                await self.send_event("tick")
                await asyncio.sleep(0.01)
        except StreamClosedError:
            self.probe.hit("stream-closed")
            raise


class Ticker(EventStreamServlet):
    """A registry servlet: ``?count=N`` events; ``?none=1`` answers 204."""

    PATTERNS = ("/ticker/{name}",)
    heartbeat_interval = None

    async def on_GET(self, name: str) -> Any:
        start = int(self.last_event_id or 0)
        if self.get_argument("none", None):
            return 204, None
        count = int(self.get_argument("count", "3"))
        for n in range(start + 1, start + count + 1):
            await self.send_event({"name": name, "n": n}, id=n)
        return None


@pytest.fixture
def broadcaster() -> InMemoryBroadcaster:
    return InMemoryBroadcaster()


@pytest.fixture
def app(io_loop: Any, probe: Probe, broadcaster: InMemoryBroadcaster) -> tornado.web.Application:
    shared = {"probe": probe, "broadcaster": broadcaster}
    registry = ServletRegistry()
    registry.register(Ticker)
    return tornado.web.Application(
        [
            (r"/events", SubscribedEvents, shared),
            (r"/format", FormatEvents),
            (r"/last", LastEventId),
            (r"/silent", Silent, shared),
            (r"/busy", Busy),
            (r"/flood", Flood, shared),
            (r"/concurrent", ConcurrentFlood, shared),
            (r"/uncancellable", Uncancellable, shared),
            (r"/lines", Lines, shared),
            (r"/poll", Poll, shared),
            *registry.urlspecs("/api"),
        ]
    )


@pytest.fixture(autouse=True)
def close_readers() -> Any:
    yield
    while StreamReader.opened:
        StreamReader.opened.pop().close()


def error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- server-sent events: the format ------------------------------------------------


async def test_event_stream_headers_and_format(port):
    reader = await StreamReader.open(port, "/format")
    assert reader.status == 200
    assert reader.headers["Content-Type"] == "text/event-stream"
    assert reader.headers["Cache-Control"] == "no-cache"
    assert reader.headers["X-Accel-Buffering"] == "no"
    body = (await reader.read_until_complete()).decode()
    events, comments = parse_events(body)
    assert [(e.event, e.data, e.id) for e in events] == [
        ("json", '{"a":[1,"é"]}', "1"),
        ("message", '["x",null]', "1"),
        ("message", "one\ntwo\nthree\nfour", "s-2"),
        ("message", " leading space and trailing\n", "s-2"),
        ("message", "42", "s-2"),
        ("message", "last", "café"),
    ]
    assert events[2].retry == 1500
    # Refused fields were never written: no "injected" data, no stray field.
    assert "injected" not in body
    assert [c for c in comments if c.startswith(" refused")] == [
        " refused: event must not contain CR or LF",
        " refused: event must not contain CR or LF",
        " refused: id must not contain CR, LF or NUL",
        " refused: id must not contain CR, LF or NUL",
        " refused: a set",
    ]
    assert "data: one\ndata: two\ndata: three\ndata: four\n" in body


async def test_registry_servlet_streams_and_resumes(port, caplog):
    reader = await StreamReader.open(
        port, "/api/ticker/a%20b?count=2", headers={"Last-Event-ID": "5"}
    )
    assert reader.headers["Content-Type"] == "text/event-stream"
    events, _ = parse_events((await reader.read_until_complete()).decode())
    assert [(json.loads(e.data), e.id) for e in events] == [
        ({"name": "a b", "n": 6}, "6"),
        ({"name": "a b", "n": 7}, "7"),
    ]
    await settle()
    assert access_statuses(caplog) == [200]


async def test_registry_servlet_can_answer_204_before_streaming(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/api/ticker/x?none=1")
    assert response.code == 204
    assert response.body == b""


# -- Last-Event-ID is client input ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", None),
        (b"42", "42"),
        ("caf\u00e9 \u2603".encode(), "caf\u00e9 \u2603"),  # UTF-8, as browsers send it
        (b"x" * 256, "x" * 256),
    ],
)
async def test_last_event_id_accepted(port, raw, expected):
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(b"GET /last HTTP/1.1\r\nHost: x\r\nLast-Event-ID: " + raw + b"\r\n\r\n")
    reader = StreamReader(conn)
    await reader.read_head()
    events, _ = parse_events((await reader.read_chunk()).decode())
    assert json.loads(events[0].data) == {"last_event_id": expected}
    conn.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"x" * 60_000,  # 60 KB
        b"9" * 257,  # one character over the limit
        "\u00e9".encode() * 300,  # non-ASCII, over the limit in characters
        b"\xff\xfe",  # not UTF-8
    ],
)
async def test_last_event_id_refused_with_a_json_400(port, caplog, raw):
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(
        b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\nLast-Event-ID: " + raw + b"\r\n\r\n"
    )
    response = await conn.read_until_close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    error = json.loads(body)
    assert error["errcode"] == "INVALID_HEADER"
    assert error["header"] == "Last-Event-ID"
    assert "Traceback" not in body.decode()
    await settle()
    assert access_statuses(caplog) == [400]


@pytest.mark.parametrize("raw", [b"1\r2", b"1\n2", b"1\r\n2", b"a\x00b"])
async def test_last_event_id_with_cr_lf_or_nul_is_never_a_500(port, caplog, raw):
    """A line break ends the header line, and Tornado refuses NUL in a header (a
    400 before the handler runs): whatever happens, the value reaching the handler
    has no line break and nothing is a 5xx."""
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(
        b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\nLast-Event-ID: " + raw + b"\r\n\r\n"
    )
    response = await conn.read_until_close()
    status = int(response.split(b" ", 2)[1]) if response else 0
    assert status in (200, 400), response[:200]
    if status == 200:
        events, _ = parse_events(response.partition(b"\r\n\r\n")[2].decode("latin-1"))
        received = json.loads(events[0].data)["last_event_id"]
        assert received is None or not set(received) & {"\r", "\n", "\0"}
    await settle()
    assert all(code < 500 for code in access_statuses(caplog))


# -- the heartbeat -----------------------------------------------------------------


async def test_idle_stream_sends_heartbeats(port, probe):
    reader = await StreamReader.open(port, "/silent")
    started = time.monotonic()
    blocks = [await reader.next_block(timeout=2), await reader.next_block(timeout=2)]
    elapsed = time.monotonic() - started
    assert blocks == [":\n\n", ":\n\n"]
    assert 0.15 <= elapsed < 1.5
    reader.close()
    await probe.wait_finished()


async def test_no_heartbeat_while_events_flow(port):
    reader = await StreamReader.open(port, "/busy")
    body = (await reader.read_until_complete()).decode()
    events, comments = parse_events(body)
    assert [e.data for e in events] == [str(n) for n in range(12)]
    assert comments == []


async def test_heartbeat_finds_a_peer_that_vanished_unnoticed(port, probe, caplog):
    """The client closes, but the server is not told: it had read a pipelined byte
    after the request, so it is not watching the socket (the same blind spot as a
    peer behind a NAT that forgot the connection). The heartbeat's write fails,
    and the producer is cancelled like for any departure."""
    conn = await RawHTTPConnection.open(port)
    await conn.send_raw(b"GET /silent HTTP/1.1\r\nHost: x\r\n\r\nX")
    await probe.wait_suspended()
    conn.close("fin")
    await nothing_happens_within(0.05, what="the server noticing the close by itself")
    assert "on_finish" not in probe.events  # not noticed by the close itself
    await probe.wait_finished(timeout=3)
    assert probe.events == ["finally", "on_finish"]
    assert probe.values["status"] == 499
    await settle()
    assert access_statuses(caplog) == [499]
    assert error_records(caplog) == []


# -- the end of a stream is normal ---------------------------------------------------


@HOW
async def test_client_leaving_ends_the_stream_cleanly(port, probe, broadcaster, caplog, how):
    baseline = len(asyncio.all_tasks())
    reader = await StreamReader.open(port, "/events")
    await probe.wait_suspended()
    await broadcaster.publish("c", {"n": 1})
    event = await reader.next_event()
    assert (json.loads(event.data), event.id) == ({"n": 1}, "1")
    assert broadcaster.subscriber_count("c") == 1
    reader.close(how)
    await probe.wait_finished()
    await settle()
    assert sorted(probe.events) == sorted(
        ["sent", "cancelled", "finally", "child-cancelled", "on_finish"]
    )
    assert probe.events.index("cancelled") < probe.events.index("finally")
    assert probe.values["status"] == 499
    assert broadcaster.subscriber_count() == 0
    assert access_statuses(caplog) == [499]
    assert error_records(caplog) == []
    await wait_until(
        lambda: len(asyncio.all_tasks()) <= baseline, what="the tasks back to the baseline"
    )


async def test_server_ending_the_stream_is_a_200(port, probe, broadcaster, caplog):
    baseline = len(asyncio.all_tasks())
    reader = await StreamReader.open(port, "/events", headers={"Last-Event-ID": "7"})
    await probe.wait_suspended()
    await broadcaster.publish("c", "hello")
    await broadcaster.publish("c", "end")
    body = await reader.read_until_complete()
    reader.close()
    events, _ = parse_events(body.decode())
    assert [e.data for e in events] == ["hello"]
    await probe.wait_finished()
    await settle()
    assert probe.values["last_event_id"] == "7"
    assert sorted(probe.events) == sorted(["sent", "finally", "child-cancelled", "on_finish"])
    assert "cancelled" not in probe.events
    assert probe.values["status"] == 200
    assert access_statuses(caplog) == [200]
    assert broadcaster.subscriber_count() == 0
    assert error_records(caplog) == []
    await wait_until(
        lambda: len(asyncio.all_tasks()) <= baseline, what="the tasks back to the baseline"
    )


@HOW
async def test_uncancellable_stream_stops_at_its_next_send(port, probe, caplog, how):
    reader = await StreamReader.open(port, "/uncancellable")
    await probe.wait_suspended()
    await reader.next_event()
    reader.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.events == ["stream-closed", "on_finish"]
    assert probe.values["status"] == 499
    assert access_statuses(caplog) == [499]
    # The StreamClosedError that ended the producer is not reported at all.
    assert [m for m in messages(caplog, logging.WARNING) if "499" not in m] == []


# -- backpressure ----------------------------------------------------------------


def slow_client_socket(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


async def test_one_producer_is_paced_by_its_client(port, probe, caplog):
    sock = slow_client_socket(port, "/flood")
    try:
        await probe.wait_suspended()
        # The client reads nothing: the producer gets no further than the kernel buffers.
        await nothing_happens_within(0.5, what="the producer sending more than is read")
        sent = probe.values["sent"]
        # The producer waits on its flush: only what the kernel buffers got out.
        assert sent < 200, sent
        assert probe.values["max_buffered"] <= Flood.max_buffered_bytes
        assert "on_finish" not in probe.events  # paced, not dropped
    finally:
        sock.close()
    await probe.wait_finished()
    assert probe.values["status"] == 499
    assert error_records(caplog) == []


async def test_client_falling_behind_is_disconnected(port, probe, caplog):
    sock = slow_client_socket(port, "/concurrent")
    try:
        await probe.wait_finished(timeout=10)
        await settle()
        assert probe.events == ["cancelled", "finally", "on_finish"]
        assert probe.values["status"] == 499
        dropped = [
            r
            for r in caplog.records
            if r.name == "tornado_jsonservlet.streaming" and "fell" in r.getMessage()
        ]
        assert len(dropped) == 1
        assert dropped[0].levelno == logging.INFO
        assert "max_buffered_bytes=262144" in dropped[0].getMessage()
        assert access_statuses(caplog) == [499]
        assert error_records(caplog) == []
    finally:
        sock.close()


def test_stream_settings_are_checked_when_the_class_is_defined():
    with pytest.raises(TypeError, match="max_buffered_bytes"):

        class NoBuffer(EventStreamMixin, tornado.web.RequestHandler):
            max_buffered_bytes = 0

    with pytest.raises(TypeError, match="heartbeat_interval"):

        class NegativeBeat(EventStreamMixin, tornado.web.RequestHandler):
            heartbeat_interval = -1.0

    with pytest.raises(TypeError, match="heartbeat_interval"):

        class NanBeat(EventStreamMixin, tornado.web.RequestHandler):
            heartbeat_interval = float("nan")


# -- JSON lines ------------------------------------------------------------------


class Lines(ProbeStream, JsonLinesMixin, JsonErrorMixin, tornado.web.RequestHandler):
    """``?count=N`` lines, ``?bad=K`` an unencodable item at K, ``?wait=1`` stalls."""

    async def get(self) -> None:
        count = int(self.get_argument("count", "3"))
        pad = "p" * int(self.get_argument("pad", "0"))
        bad = int(self.get_argument("bad", "-1"))
        stall = self.get_argument("wait", None) is not None

        async def rows() -> AsyncIterator[Any]:
            try:
                for n in range(count):
                    if n == bad:
                        yield {n}
                    yield {"n": n, "text": "é\n"} if not pad else {"n": n, "pad": pad}
                    if stall and n == 1:
                        self.probe.suspended.set()
                        await asyncio.sleep(30)
            finally:
                self.probe.hit("rows-closed")

        try:
            await self.stream_json_lines(rows())
        finally:
            self.probe.hit("finally")


async def test_json_lines(http_client, base_url, probe, caplog):
    response = await http_client.fetch(f"{base_url}/lines?count=3")
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert [json.loads(line) for line in response.body.splitlines()] == [
        {"n": n, "text": "é\n"} for n in range(3)
    ]
    assert response.body.endswith(b"\n")
    await probe.wait_finished()
    await settle()
    # stream_json_lines finishes the response itself (on_finish), then returns.
    assert probe.events == ["rows-closed", "on_finish", "finally"]
    assert access_statuses(caplog) == [200]


async def test_json_lines_empty(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/lines?count=0")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.body == b""


@HOW
async def test_json_lines_iterator_closed_when_the_client_leaves(port, probe, caplog, how):
    reader = await StreamReader.open(port, "/lines?count=5&wait=1")
    await probe.wait_suspended()
    reader.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.events == ["rows-closed", "finally", "on_finish"]
    assert probe.values["status"] == 499
    assert access_statuses(caplog) == [499]
    assert error_records(caplog) == []


async def test_json_lines_iterator_closed_while_suspended_in_a_flush(port, probe, caplog):
    """Cancelled while sending, the generator sits at its ``yield``: aclose() runs its
    ``finally`` right away."""
    sock = slow_client_socket(port, "/lines?count=100000&pad=1000")
    try:
        # The buffers fill; the handler waits on a flush, its generator still open.
        await nothing_happens_within(0.3, what="the generator closed while the client is there")
        assert "rows-closed" not in probe.events
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    await probe.wait_finished()
    assert probe.events == ["rows-closed", "finally", "on_finish"]
    assert probe.values["status"] == 499
    assert error_records(caplog) == []


@pytest.mark.allow_error_log(r"Uncaught exception GET /lines", r"^500 GET /lines")
async def test_json_lines_unencodable_item_before_the_first_line_is_a_json_500(
    http_client, base_url, probe
):
    response = await http_client.fetch(f"{base_url}/lines?count=3&bad=0", raise_error=False)
    assert response.code == 500
    assert json.loads(response.body) == {"errcode": "UNKNOWN", "error": "Internal server error"}
    await probe.wait_finished()
    assert probe.events == ["rows-closed", "finally", "on_finish"]


@pytest.mark.allow_error_log(r"Uncaught exception GET /lines", r"^500 GET /lines")
async def test_json_lines_unencodable_item_later_truncates_the_stream(port, probe):
    reader = await StreamReader.open(port, "/lines?count=3&bad=2")
    with pytest.raises((StreamClosedError, EOFError)):
        await reader.read_until_complete()
    assert not reader.complete  # truncated, never a clean end
    await probe.wait_finished()
    assert probe.events == ["rows-closed", "finally", "on_finish"]


async def test_a_producer_that_never_waits_does_not_hold_the_loop(http_client, base_url):
    """Every flush to a fast local client completes at once; the stream still
    yields to the event loop, so other callbacks keep running throughout."""
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.monotonic()
        while running:
            await asyncio.sleep(0)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.ensure_future(ticker())
    try:
        response = await http_client.fetch(f"{base_url}/lines?count=60000")
    finally:
        running = False
        await task
    assert len(response.body.splitlines()) == 60000
    # Yielding producers leave gaps of about 15 ms here; one that never yields
    # leaves one of about 0.4 s. The bound sits between, with room for a loaded CI
    # machine (a 3.9 run once saw 51 ms).
    assert max(gaps) < 0.15, max(gaps)


# -- long-poll -------------------------------------------------------------------


class Poll(ProbeStream, LongPollMixin, JsonResponseMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self._poll()

    @uncancellable
    async def post(self) -> None:
        await self._poll()

    async def _poll(self) -> None:
        timeout = float(self.get_argument("timeout", "5"))
        async with self.broadcaster.subscribe("c") as messages:
            self.probe.suspended.set()
            started = time.monotonic()
            try:
                message = await self.long_poll(messages, timeout=timeout)
            except ValueError as error:
                self.probe.values["refused"] = str(error)
                raise tornado.web.HTTPError(400) from None
            self.probe.values["waited"] = time.monotonic() - started
            self.probe.values["pending_after"] = messages.pending
        self.probe.values["gone"] = self.client_disconnected
        if message is None:
            self.set_status(204)
            self.finish()
        else:
            await self.write_json({"message": message})


async def test_long_poll_returns_the_next_message(http_client, base_url, probe, broadcaster):
    fetch = http_client.fetch(f"{base_url}/poll")
    await probe.wait_suspended()
    await broadcaster.publish("c", {"n": 1})
    await broadcaster.publish("c", {"n": 2})
    response = await fetch
    assert json.loads(response.body) == {"message": {"n": 1}}
    assert probe.values["pending_after"] == 1  # the second one was not consumed


async def test_long_poll_times_out_with_nothing(http_client, base_url, probe):
    started = time.monotonic()
    response = await http_client.fetch(f"{base_url}/poll?timeout=0.2")
    assert response.code == 204
    assert 0.19 <= time.monotonic() - started < 2


@HOW
async def test_long_poll_client_leaving_get_is_cancelled(port, probe, broadcaster, caplog, how):
    baseline = len(asyncio.all_tasks())
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", "/poll?timeout=30")
    await probe.wait_suspended()
    conn.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.values["status"] == 499
    assert "waited" not in probe.values  # cancelled inside long_poll
    assert broadcaster.subscriber_count() == 0
    assert access_statuses(caplog) == [499]
    assert error_records(caplog) == []
    await wait_until(
        lambda: len(asyncio.all_tasks()) <= baseline, what="the tasks back to the baseline"
    )


@HOW
async def test_long_poll_returns_early_when_the_client_leaves_uncancellable(
    port, probe, broadcaster, caplog, how
):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("POST", "/poll?timeout=30")
    await probe.wait_suspended()
    conn.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.values["waited"] < 2
    assert probe.values["gone"] is True
    assert probe.values["status"] == 499
    assert broadcaster.subscriber_count() == 0
    assert access_statuses(caplog) == [499]
    assert error_records(caplog) == []


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
async def test_long_poll_rejects_a_bad_timeout(http_client, base_url, probe, timeout):
    response = await http_client.fetch(f"{base_url}/poll?timeout={timeout}", raise_error=False)
    assert response.code == 400
    assert probe.values["refused"].startswith("timeout must be a positive number")
