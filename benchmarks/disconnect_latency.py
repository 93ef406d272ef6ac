"""How long from a client's close to the cancellation reaching the handler.

Usage: ``python benchmarks/disconnect_latency.py [--count 1000]``

A server process (pinned to CPU 0) runs a handler that sends its headers, then
waits. The client (this process, CPU 1) reads the headers, so it knows the handler
is suspended, takes a ``time.monotonic()`` timestamp and closes the socket,
alternating FIN and RST. The handler stamps ``time.monotonic()`` when the
``CancelledError`` arrives. Both clocks are the same system-wide monotonic clock.
Prints p50, p99 and max over ``--count`` disconnects (goal: p99 <= 1 ms).
Binds 127.0.0.1 only; the run is bounded by ``--count`` and a timeout per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def serve(port: int) -> None:
    sys.path.insert(0, str(HERE.parent))
    import tornado.web

    from tornado_jsonservlet import CancelOnDisconnectMixin

    cancelled_at: dict[str, float] = {}

    class Wait(CancelOnDisconnectMixin, tornado.web.RequestHandler):
        async def get(self, ident: str) -> None:
            self.write(" ")
            await self.flush()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled_at[ident] = time.monotonic()
                raise

    class Stats(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write(json.dumps(cancelled_at))

    async def main() -> None:
        app = tornado.web.Application(
            [(r"/wait/(\w+)", Wait), (r"/stats", Stats)], log_function=lambda h: None
        )
        app.listen(port, address="127.0.0.1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def client(port: int, count: int) -> list[float]:
    closed_at: dict[str, float] = {}
    for index in range(count):
        ident = f"r{index}"
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET /wait/{ident} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(4096)
        if index % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        closed_at[ident] = time.monotonic()
        sock.close()
        time.sleep(0.002)
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    cancelled_at = json.loads(raw.partition(b"\r\n\r\n")[2])
    missing = set(closed_at) - set(cancelled_at)
    if missing:
        print(f"{len(missing)} requests never saw a cancellation", file=sys.stderr)
    return [(cancelled_at[i] - closed_at[i]) * 1000 for i in closed_at if i in cancelled_at]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, __file__, "--serve", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {1})
        latencies = sorted(client(port, args.count))
    finally:
        server.terminate()
        server.wait(timeout=10)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"disconnects: {len(latencies)}/{args.count} (FIN and RST alternating)")
    print(
        f"close -> CancelledError in handler: p50 {statistics.median(latencies):.3f} ms, "
        f"p99 {p99:.3f} ms, max {latencies[-1]:.3f} ms"
    )


if __name__ == "__main__":
    main()
