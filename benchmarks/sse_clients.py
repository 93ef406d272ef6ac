"""Client side of the SSE benchmarks: a server process to measure, and SSE clients.

Each client is a raw asyncio connection (a protocol, handled in the event loop's
own read callback) reading ``GET /events`` and stamping ``time.monotonic()`` when
each event's ``seq`` arrives; it can leave with FIN or RST.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
_SEQ = re.compile(rb'"seq":(\d+),"t":([0-9.e+-]+)')


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(needed, soft), hard), hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``sse_server.py`` in its own process, pinned to CPU 0 when there are two or more."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "sse_server.py"), str(self.port), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(self.process.pid, {0})
            os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))

    def get(self, path: str) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=30) as reply:
            return json.loads(reply.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Client(asyncio.Protocol):
    """One SSE connection; ``received[seq]`` is (receive time - publish time).

    A protocol, not a stream reader: each read is handled inside the event loop's
    own callback, with no task to wake, so that the client process adds as little
    delay of its own as possible to what it measures.
    """

    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self.transport: Optional[asyncio.Transport] = None
        self._headers: Optional[asyncio.Future[None]] = None
        self._buffer = b""
        self._read = True
        self.rcvbuf: Optional[int] = None

    async def connect(self, port: int, rcvbuf: Optional[int] = None, read: bool = True) -> None:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        self._read = read
        self._headers = loop.create_future()
        await loop.create_connection(lambda: self, sock=sock)
        assert self.transport is not None
        self.transport.write(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
        await self._headers

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        data = self._buffer + data
        if self._headers is not None and not self._headers.done():
            if b"\r\n\r\n" not in data:
                self._buffer = data
                return
            self._headers.set_result(None)
            if not self._read:
                assert self.transport is not None
                self.transport.pause_reading()
                self._buffer = b""
                return
        self._buffer = b""
        self._parse(now, data)

    def _parse(self, now: float, data: bytes) -> None:
        data = self._buffer + data
        for match in _SEQ.finditer(data):
            seq = int(match.group(1))
            if seq not in self.received:  # the tail may repeat the last one
                self.received[seq] = now - float(match.group(2))
        self._buffer = data[-64:]

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self._headers is not None and not self._headers.done():
            self._headers.set_exception(ConnectionError("closed before the headers"))

    def leave(self, how: str) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if how == "rst" and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort() if how == "rst" else self.transport.close()


def collect(clients: list[Client], quiet_after: float, timeout: float) -> None:
    """Read every client's socket in a tight loop, then parse what arrived.

    For the fan-out measurement: the event loop's per-read machinery (a callback
    and a transport per read) costs more than the server's own send per client,
    so reading through it would measure the reader. Here a readable socket costs
    one ``epoll`` entry and one ``os.read``, stamped with ``time.monotonic()``; the
    bytes are parsed into ``Client.received`` afterwards. Reading stops once
    nothing arrived for a second after ``quiet_after`` (a ``time.monotonic()``
    value), or after ``timeout`` seconds. The event loop does not run meanwhile
    (it owns the same sockets, and finds nothing to read when it resumes).
    """
    poller = select.epoll()
    by_fd: dict[int, Client] = {}
    for client in clients:
        assert client.transport is not None
        fd = client.transport.get_extra_info("socket").fileno()
        by_fd[fd] = client
        poller.register(fd, select.EPOLLIN)
    reads: list[tuple[Client, float, bytes]] = []
    now = time.monotonic()
    deadline = now + timeout
    last_read = now
    try:
        while now < deadline and (now < quiet_after or now - last_read < 1.0):
            for fd, _ in poller.poll(0.05):
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                last_read = time.monotonic()
                reads.append((by_fd[fd], last_read, data))
            now = time.monotonic()
    finally:
        poller.close()
    for client, when, data in reads:
        client._parse(when, data)


async def connect_all(port: int, count: int, batch: int = 200) -> list[Client]:
    clients = [Client() for _ in range(count)]
    for start in range(0, count, batch):
        await asyncio.gather(*(c.connect(port) for c in clients[start : start + batch]))
    return clients


async def wait_for(server: Server, condition: Any, timeout: float) -> tuple[bool, float, Any]:
    """Poll ``/stats`` until ``condition(stats)``; (met, seconds, last stats)."""
    started = time.monotonic()
    while True:
        stats = await asyncio.get_running_loop().run_in_executor(None, server.get, "/stats")
        elapsed = time.monotonic() - started
        if condition(stats):
            return True, elapsed, stats
        if elapsed > timeout:
            return False, elapsed, stats
        await asyncio.sleep(0.02)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {ms(statistics.median(values))}, p99 {ms(percentile(values, 0.99))}, "
        f"max {ms(max(values))} (n={len(values)})"
    )
