"""What Tornado's per-response ``TCP_NODELAY`` toggle costs, and what keeping it on costs.

Usage: ``python benchmarks/nodelay_cost.py [--pairs 100000] [--rounds 5]``

After every response of a keep-alive connection, Tornado's HTTP/1 connection calls
``stream.set_nodelay(True)`` and then ``set_nodelay(False)``: two ``setsockopt``
calls, each after reading ``socket.family``. A connection the toolkit serves keeps
the flag on, and the stream's own ``set_nodelay`` skips both calls. This times one
such pair on a connected loopback socket, both ways, the second made from the frame
Tornado makes it from (``HTTP1Connection._finish_request``), as in a real response.
Prints the best of ``--rounds`` rounds, in microseconds per response; the rest of
``_finish_request`` (its callbacks) is in both figures, so their difference is the
saving.

Binds 127.0.0.1 only; bounded by ``--pairs`` and ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from typing import Any

import tornado.http1connection
from tornado.iostream import IOStream

from tornado_jsonservlet import tornado_adapter


class _Connection(tornado.http1connection.HTTP1Connection):
    """Only to run the pair's second call from Tornado's own frame."""

    def __init__(self, stream: IOStream) -> None:  # no HTTP state needed here
        self.stream = stream
        self.is_client = False
        self._disconnect_on_finish = False
        self._finish_future: Any = asyncio.get_running_loop().create_future()
        self._close_callback = None
        self._write_callback = None
        self._write_future = None
        self._response_start_line = None


def _per_pair(stream: IOStream, pairs: int, rounds: int) -> float:
    connection = _Connection(stream)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(pairs):
            stream.set_nodelay(True)  # as HTTP1Connection.finish() calls it
            connection._finish_request(None)  # which calls set_nodelay(False)
        best = min(best, (time.perf_counter() - started) / pairs)
    connection._finish_future.cancel()
    return best * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    stream = IOStream(server)
    try:
        toggled = _per_pair(stream, args.pairs, args.rounds)
        tornado_adapter.keep_nodelay(stream)
        kept = _per_pair(stream, args.pairs, args.rounds)
        flag = server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        stream.close()
        client.close()
    print(f"Tornado's toggle: {toggled:.3f} us per response")
    print(f"kept on:          {kept:.3f} us per response (flag afterwards: {flag})")
    print(f"saved:            {toggled - kept:.3f} us per response")


if __name__ == "__main__":
    asyncio.run(main())
