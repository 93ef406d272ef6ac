"""P7: how late the 504 of an expired deadline reaches the client.

Usage: ``python benchmarks/deadline_lateness.py [--count 1000] [--deadline 0.02]``

A server process (pinned to CPU 0) runs a GET handler with ``request_deadline`` that
would otherwise wait 30 s. The client (this process, CPU 1) stamps
``time.monotonic()`` when the request's last byte is sent and again when the 504's
status line arrives. Lateness is that interval minus the deadline: the deadline's
timer, the cancellation, the finally blocks and the error response together. A
second run without a deadline (a handler that answers at once) gives the loopback
round trip, which is reported beside it. Prints p50, p99 and max (goal: p99 <= 5 ms).
Binds 127.0.0.1 only; the run is bounded by ``--count`` and a socket timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def serve(port: int, deadline: float) -> None:
    sys.path.insert(0, str(HERE.parent))
    import tornado.web

    from tornado_jsonservlet import CancelOnDisconnectMixin

    class Expires(CancelOnDisconnectMixin, tornado.web.RequestHandler):
        request_deadline = deadline

        async def get(self) -> None:
            try:
                await asyncio.sleep(30)
            finally:
                pass  # a finally block runs before the 504 leaves

    class Quick(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("ok")

    async def main() -> None:
        app = tornado.web.Application(
            [(r"/expires", Expires), (r"/quick", Quick)], log_function=lambda h: None
        )
        app.listen(port, address="127.0.0.1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def timed_request(port: int, path: str) -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        sent = time.monotonic()
        head = sock.recv(64)
        return time.monotonic() - sent, head


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.3f} ms, p99 {p99:.3f} ms, max {ordered[-1]:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=0.02, help="seconds")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.deadline)
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "taskset", "-c", "0", sys.executable, __file__,
            "--serve", str(port), "--deadline", str(args.deadline),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {1})
        lateness, round_trips, wrong = [], [], 0
        for _ in range(args.count):
            elapsed, head = timed_request(port, "/expires")
            if not head.startswith(b"HTTP/1.1 504"):
                wrong += 1
            lateness.append((elapsed - args.deadline) * 1000)
            round_trips.append(timed_request(port, "/quick")[0] * 1000)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"requests: {args.count}, deadline {args.deadline * 1000:.0f} ms, not 504: {wrong}")
    print(f"deadline -> 504 status line, lateness: {percentiles(lateness)}")
    print(f"loopback round trip without a deadline: {percentiles(round_trips)}")


if __name__ == "__main__":
    main()
