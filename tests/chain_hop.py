"""One hop of a service chain, run as its own process: A -> B -> C.

Usage::

    python tests/chain_hop.py --name=C
    python tests/chain_hop.py --name=B --next=http://127.0.0.1:PORT_OF_C

It serves ``GET /work?delay=SECONDS&id=ID`` on 127.0.0.1 (a free port, printed as
``ready PORT`` on stdout). A hop with ``--next`` forwards the request there through
``AsyncHTTPClient`` configured with the cancellable client; the last hop sleeps for
``delay``. The handler uses ``CancelOnDisconnectMixin``, so a departed client cancels
it, which cancels its outbound fetch, whose closed connection cancels the next hop.

Each hop logs to stderr, one line per record, ``LEVEL logger: message``:
``NAME started ID``, then ``NAME cancelled ID at MONOTONIC`` or ``NAME completed ID``,
and Tornado's access log line. ``time.monotonic()`` is one clock for every process
on the machine, so the test and the benchmark can compare stamps across hops.

``--client=simple`` forwards with Tornado's own client instead, to show what happens
without this toolkit; ``--quiet`` turns the access log off; ``--deadline=SECONDS`` gives
the hop a request deadline (every hop accepts the deadline its caller sends).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from tornado_jsonservlet import CancelOnDisconnectMixin

log = logging.getLogger("hop")


class WorkHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    def initialize(self, name: str, next_url: str | None) -> None:
        self.name = name
        self.next_url = next_url

    async def get(self) -> None:
        ident = self.get_argument("id", "-")
        delay = self.get_argument("delay", "30")
        log.info("%s started %s", self.name, ident)
        try:
            if self.next_url:
                response = await AsyncHTTPClient().fetch(
                    f"{self.next_url}/work?delay={delay}&id={ident}", request_timeout=300
                )
                body = response.body
            else:
                await asyncio.sleep(float(delay))
                body = b"done\n"
        except asyncio.CancelledError:
            log.info("%s cancelled %s at %.6f", self.name, ident, time.monotonic())
            raise
        log.info("%s completed %s", self.name, ident)
        self.write(body)


async def serve(args: argparse.Namespace) -> None:
    # Every hop honours its caller's deadline header; ``--deadline`` gives a hop its own.
    settings: dict[str, object] = {"accept_deadline_header": True}
    if args.deadline is not None:
        settings["request_deadline"] = args.deadline
    if args.quiet:
        settings["log_function"] = lambda handler: None
    app = tornado.web.Application(
        [(r"/work", WorkHandler, {"name": args.name, "next_url": args.next})], **settings
    )
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
    tornado.httpserver.HTTPServer(app).add_sockets(sockets)
    print(f"ready {sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


# -- running hops from a test or a benchmark -------------------------------------------


class Hop:
    """A hop process; its stderr lines are collected as they come."""

    def __init__(self, name: str, *options: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, __file__, f"--name={name}", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()
        if ready[:1] != ["ready"]:
            self.stop()
            raise RuntimeError(f"hop {name} did not start: {self.lines}")
        self.url = f"http://127.0.0.1:{ready[1]}"
        self.port = int(ready[1])

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Block until a line from index ``start`` on matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    found = regex.search(line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no line matching {pattern!r}: {self.lines}")
                self._changed.wait(left)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def start_chain(
    names: tuple[str, ...] = ("A", "B", "C"),
    options: tuple[str, ...] = (),
    on_start: Optional[Callable[[Hop], None]] = None,
) -> list[Hop]:
    """Start the hops last first, each pointing at the next; returns them first first."""
    hops: list[Hop] = []
    try:
        for name in reversed(names):
            forward = [f"--next={hops[0].url}"] if hops else []
            hop = Hop(name, *forward, *options)
            hops.insert(0, hop)
            if on_start is not None:
                on_start(hop)
    except BaseException:
        for hop in hops:
            hop.stop()
        raise
    return hops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--next", help="base URL of the next hop")
    parser.add_argument("--client", choices=["cancellable", "simple"], default="cancellable")
    parser.add_argument("--max-clients", type=int, default=10)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--deadline", type=float, help="this hop's request_deadline, seconds")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.client == "cancellable":
        AsyncHTTPClient.configure(
            "tornado_jsonservlet.outbound.CancellableHTTPClient", max_clients=args.max_clients
        )
    else:
        AsyncHTTPClient.configure(None, max_clients=args.max_clients)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
