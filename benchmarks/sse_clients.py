"""Client side of the SSE benchmarks: a server process to measure, and SSE clients.

Each client is a raw asyncio connection reading ``GET /events`` and stamping
``time.monotonic()`` when each event's ``seq`` arrives; it can leave with FIN or RST.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
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


class Client:
    """One SSE connection; ``received[seq]`` is (receive time - publish time)."""

    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self.writer: Optional[asyncio.StreamWriter] = None
        self.task: Optional[asyncio.Task[None]] = None
        self.rcvbuf: Optional[int] = None

    async def connect(self, port: int, rcvbuf: Optional[int] = None, read: bool = True) -> None:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, self.writer = await asyncio.open_connection(sock=sock, limit=2**20)
        self.writer.write(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        if read:
            self.task = asyncio.ensure_future(self._read(reader))

    @property
    def port(self) -> int:
        assert self.writer is not None
        return int(self.writer.get_extra_info("sockname")[1])

    async def _read(self, reader: asyncio.StreamReader) -> None:
        tail = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                now = time.monotonic()
                data = tail + data
                for match in _SEQ.finditer(data):
                    seq = int(match.group(1))
                    if seq not in self.received:  # the tail may repeat the last one
                        self.received[seq] = now - float(match.group(2))
                tail = data[-64:]
        except (ConnectionError, asyncio.CancelledError):
            return

    def leave(self, how: str) -> None:
        assert self.writer is not None
        sock = self.writer.get_extra_info("socket")
        if how == "rst" and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort() if how == "rst" else self.writer.close()
        if self.task is not None:
            self.task.cancel()


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
