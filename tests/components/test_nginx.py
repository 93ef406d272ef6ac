"""Streams through nginx (the Debian package, started on loopback by the fixture):
events arrive unbuffered, a slow client still pushes back, and a client's abort
reaches the handler."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import pytest
import tornado.web

from tests.sse_client import StreamReader
from tests.support import Probe, access_statuses, nothing_happens_within, settle
from tornado_jsonservlet import EventStreamMixin, InMemoryBroadcaster

pytestmark = pytest.mark.gen_test

CHUNK = 64 * 1024


def _kernel_buffer_bytes() -> int:
    """The most the kernel may hold on the way app -> nginx -> client.

    TCP autotunes a socket's buffers up to the ``tcp_wmem``/``tcp_rmem`` maxima (the
    receive maximum is 32 MiB on some kernels): the app's send buffer, nginx's
    receive buffer from the app, and nginx's send buffer to the client.
    """
    try:
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 48 * 1024 * 1024
    return 2 * wmem + rmem


#: More than every buffer on the way can hold, with a clear margin: a paced producer
#: must stall well before the end, while nginx's own buffering takes it all.
MARGIN = 16 * 1024 * 1024
TOTAL = (_kernel_buffer_bytes() + MARGIN) // CHUNK * CHUNK


class Feed(EventStreamMixin, tornado.web.RequestHandler):
    heartbeat_interval = None

    def initialize(self, probe: Probe, broadcaster: InMemoryBroadcaster) -> None:
        self.probe = probe
        self.broadcaster = broadcaster

    async def get(self) -> None:
        try:
            async with self.broadcaster.subscribe("feed") as messages:
                await self.start_stream()
                self.probe.suspended.set()
                async for message in messages:
                    await self.send_event(message)
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise

    def on_finish(self) -> None:
        self.probe.values["status"] = self.get_status()
        self.probe.finished.set()


class Bulk(EventStreamMixin, tornado.web.RequestHandler):
    """Sends up to 32 MB as fast as it may; counts what got out."""

    def initialize(self, probe: Probe, broadcaster: InMemoryBroadcaster) -> None:
        self.probe = probe

    async def get(self) -> None:
        payload = "z" * CHUNK
        self.probe.values["sent"] = 0
        for _ in range(TOTAL // CHUNK):
            await self.send_event(payload)
            self.probe.values["sent"] += CHUNK


class BufferedBulk(tornado.web.RequestHandler):
    """The same bytes without the streaming mixin: nginx is allowed to buffer."""

    def initialize(self, probe: Probe, broadcaster: InMemoryBroadcaster) -> None:
        self.probe = probe

    async def get(self) -> None:
        payload = b"data: " + b"z" * CHUNK + b"\n\n"
        self.probe.values["sent"] = 0
        for _ in range(TOTAL // CHUNK):
            self.write(payload)
            await self.flush()
            self.probe.values["sent"] += CHUNK


@pytest.fixture
def app(io_loop, probe):
    shared = {"probe": probe, "broadcaster": InMemoryBroadcaster()}
    return tornado.web.Application(
        [(r"/feed", Feed, shared), (r"/bulk", Bulk, shared), (r"/buffered", BufferedBulk, shared)]
    )


@pytest.fixture
def nginx(nginx_launcher, port):
    return nginx_launcher(port)


def broadcaster_of(app: tornado.web.Application) -> InMemoryBroadcaster:
    for rule in app.wildcard_router.rules:
        if rule.target is Feed:
            return rule.target_kwargs["broadcaster"]  # type: ignore[no-any-return]
    raise LookupError("no /feed rule")


async def test_events_arrive_through_nginx_unbuffered(app, nginx, probe):
    broadcaster = broadcaster_of(app)
    reader = await StreamReader.open(nginx.port, "/feed")
    try:
        assert reader.status == 200
        assert reader.headers["Content-Type"] == "text/event-stream"
        assert "X-Accel-Buffering" not in reader.headers  # nginx consumes it
        await probe.wait_suspended()
        for n in range(3):
            started = time.monotonic()
            await broadcaster.publish("feed", {"n": n})
            event = await reader.next_event(timeout=2)
            assert event.data == f'{{"n":{n}}}'
            assert time.monotonic() - started < 0.5
            await asyncio.sleep(0.2)
    finally:
        reader.close()


def non_reading_client(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize(("path", "paced"), [("/bulk", True), ("/buffered", False)])
async def test_a_slow_client_pushes_back_through_nginx(nginx, probe, path, paced):
    """With ``X-Accel-Buffering: no`` nginx reads from the app only as fast as its
    client takes the data, so backpressure reaches the producer. Without it
    (the control), nginx swallows everything into its buffers and temp files."""
    sock = non_reading_client(nginx.port, path)
    try:
        # Paced: once every buffer on the way is full, the producer stops (the count
        # stays the same for half a second) well short of the total. Buffered: nginx
        # keeps reading until the producer has sent everything.
        samples = [0]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            await nothing_happens_within(0.5, what="the producer sending more (one sample)")
            samples.append(probe.values.get("sent", 0))
            if samples[-1] == TOTAL or (samples[-1] and samples[-1] == samples[-2]):
                break
        sent = samples[-1]
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    if paced:
        assert sent <= TOTAL - MARGIN // 2, samples
    else:
        assert sent == TOTAL, samples


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_client_abort_through_nginx_reaches_the_handler(app, nginx, probe, caplog, how):
    broadcaster = broadcaster_of(app)
    reader = await StreamReader.open(nginx.port, "/feed")
    await probe.wait_suspended()
    await broadcaster.publish("feed", "hello")
    assert (await reader.next_event()).data == "hello"
    reader.close(how)
    await probe.wait_finished(timeout=5)
    await settle()
    assert probe.events == ["cancelled"]
    assert probe.values["status"] == 499
    assert broadcaster.subscriber_count() == 0
    assert access_statuses(caplog) == [499]
