"""The server the SSE benchmarks measure (run by them in a separate process).

Usage: ``python benchmarks/sse_server.py PORT [--max-queued N] [--max-buffered BYTES]
[--loop] [--sample-buffers]``

* ``GET /events``: an ``EventStreamMixin`` handler relaying the ``bench`` channel of an
  ``InMemoryBroadcaster`` with ``relay_events()`` (with ``--loop``: ``async for`` and
  ``send_event()``, one task wake-up per subscriber and message). It records, per
  connection (by client port), how its stream ended and, with ``--sample-buffers``,
  the largest ``buffered_bytes`` seen (sampled every 5 ms; the sampling costs the
  server about 1.5 ms per 1,000 streams, so the fan-out benchmark leaves it off).
* ``GET /publish?count=N&interval=S&size=B``: publishes N messages ``{"seq", "t",
  "pad"}`` on the server, ``t`` being ``time.monotonic()`` at publication (the clock is
  system-wide, so clients in another process can compute the latency). Returns at once.
* ``GET /stats``: pending tasks, RSS, subscribers, open streams, ERROR records, and the
  per-connection records.

Binds 127.0.0.1 only. Prints ``ready`` when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tornado.web

from tornado_jsonservlet import EventStreamMixin, InMemoryBroadcaster

broadcaster = InMemoryBroadcaster()
streams: dict[int, dict[str, Any]] = {}
live: dict[int, tuple[EventStreamMixin, Any]] = {}
counters = {"open": 0, "cancelled": 0, "errors": 0, "publishers": 0}
publishers: set[asyncio.Task[None]] = set()
LOOP = False


class ErrorCounter(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        counters["errors"] += 1


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Events(EventStreamMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        peer = self.request.connection.stream.socket.getpeername()[1]  # type: ignore[attr-defined]
        record = streams[peer] = {"max_buffered": 0, "sent": 0, "end": "open"}
        counters["open"] += 1
        try:
            async with broadcaster.subscribe("bench") as messages:
                live[peer] = (self, messages)
                await self.start_stream()
                if LOOP:
                    async for message in messages:
                        await self.send_event(message)
                        record["sent"] += 1
                else:
                    await self.relay_events(messages)
                record["end"] = messages.ended.value if messages.ended else "ended"
        except asyncio.CancelledError:
            counters["cancelled"] += 1
            record["end"] = "cancelled"
            raise
        finally:
            live.pop(peer, None)
            counters["open"] -= 1


async def sample_buffers() -> None:
    """Every 5 ms, note each open stream's ``buffered_bytes`` (bytes in flight)."""
    while True:
        for peer, (handler, subscription) in list(live.items()):
            record = streams.get(peer)
            if record is not None:
                record["max_buffered"] = max(record["max_buffered"], handler.buffered_bytes)
                ended = subscription.ended
                record["subscription"] = ended.value if ended is not None else "subscribed"
        await asyncio.sleep(0.005)


class Publish(tornado.web.RequestHandler):
    def get(self) -> None:
        count = min(int(self.get_argument("count", "1")), 100_000)
        interval = float(self.get_argument("interval", "0"))
        pad = "p" * min(int(self.get_argument("size", "0")), 1_000_000)
        task = asyncio.ensure_future(publish(count, interval, pad))
        publishers.add(task)
        task.add_done_callback(publishers.discard)
        self.write({"started": count})


async def publish(count: int, interval: float, pad: str) -> None:
    counters["publishers"] += 1
    try:
        start = time.monotonic()
        for seq in range(count):
            await broadcaster.publish("bench", {"seq": seq, "t": time.monotonic(), "pad": pad})
            if interval:
                await asyncio.sleep(max(0.0, start + (seq + 1) * interval - time.monotonic()))
    finally:
        counters["publishers"] -= 1


class Stats(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(
            json.dumps(
                {
                    "tasks": len(asyncio.all_tasks()),
                    "rss_kb": rss_kb(),
                    "subscribers": broadcaster.subscriber_count(),
                    **counters,
                    "streams": streams,
                }
            )
        )


class Reset(tornado.web.RequestHandler):
    def get(self) -> None:
        streams.clear()
        counters["cancelled"] = 0
        self.write({"reset": True})


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--max-queued", type=int, default=1000)
    parser.add_argument("--max-buffered", type=int, default=1024 * 1024)
    parser.add_argument("--loop", action="store_true")
    parser.add_argument("--sample-buffers", action="store_true")
    args = parser.parse_args()
    global broadcaster, LOOP
    LOOP = args.loop
    broadcaster = InMemoryBroadcaster(max_queued=args.max_queued)
    Events.max_buffered_bytes = args.max_buffered
    logging.getLogger().addHandler(ErrorCounter(level=logging.ERROR))
    app = tornado.web.Application(
        [(r"/events", Events), (r"/publish", Publish), (r"/stats", Stats), (r"/reset", Reset)],
        log_function=lambda handler: None,
    )
    app.listen(args.port, address="127.0.0.1", backlog=4096)
    print("ready", flush=True)
    if args.sample_buffers:
        await sample_buffers()
    else:
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
