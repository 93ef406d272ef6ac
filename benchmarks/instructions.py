"""Instructions per small-JSON request, counted by valgrind: a figure without noise.

Usage: ``python benchmarks/instructions.py [--servers bare,servlet,toolkit] [--requests 800]``

Timings on a shared VM move by several percent between runs, more than most single
changes to the request path are worth. An instruction count does not: each server
of ``apps.py`` serves ``--requests`` small-JSON requests to a keep-alive client in
the same process (4 connections, the next request as soon as a response is read),
under ``valgrind --tool=cachegrind``, once with a quarter of the requests and once
with all of them; the difference, divided by the difference in requests, is the
user-space instructions of one request, startup and warm-up excluded. The client's
share is the same for every server, so differences between rows are the servers'.
Kernel time (the socket calls) is not counted: confirm a change with ``compare.py``.

Needs valgrind (``apt-get install -y valgrind``). Binds 127.0.0.1 only; every run is
bounded by its request count and a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CONNECTIONS = 4
TIMEOUT = 600.0  # seconds, for one valgrind run


async def _serve_and_request(kind: str, requests: int) -> None:
    sys.path.insert(0, str(HERE))
    import tornado.httpserver
    import tornado.netutil
    from apps import make_app

    server = tornado.httpserver.HTTPServer(make_app(kind))
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    port = sock.getsockname()[1]

    async def client(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", head)
            if length is None or not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response {head!r}")
            await reader.readexactly(int(length.group(1)))
        writer.close()

    await asyncio.gather(*(client(50) for _ in range(CONNECTIONS)))  # warm-up
    await asyncio.gather(*(client(requests // CONNECTIONS) for _ in range(CONNECTIONS)))
    server.stop()


def _instructions(kind: str, requests: int) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--serve",
            kind,
            str(requests),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
        # One string-hash seed for every run: with random ones, dict and set
        # layouts move the count by a few thousand instructions between runs.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    ).stderr
    found = re.search(r"I\s+refs:\s+([\d,]+)", out)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", default="bare,servlet,toolkit")
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve_and_request(args.serve[0], int(args.serve[1])))
        return
    if not shutil.which("valgrind"):
        sys.exit("valgrind not found: apt-get install -y valgrind")
    few = max(CONNECTIONS, args.requests // 4 // CONNECTIONS * CONNECTIONS)
    many = args.requests // CONNECTIONS * CONNECTIONS
    figures = {}
    for kind in args.servers.split(","):
        per_request = (_instructions(kind, many) - _instructions(kind, few)) / (many - few)
        figures[kind] = per_request
        print(f"{kind:<10} {per_request:>12,.0f} instructions/request", flush=True)
    if "bare" in figures:
        for kind, count in figures.items():
            if kind != "bare":
                print(f"{kind:<10} {figures['bare'] / count:>12.3f}x fewer than bare")


if __name__ == "__main__":
    main()
