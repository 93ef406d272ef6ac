"""P12: one slow reader among fast SSE clients.

Usage: ``python benchmarks/sse_slow_reader.py [--fast 100] [--publishes 1500]
[--interval 0.01] [--size 65536] [--max-queued 1000] [--max-buffered 1048576] [--loop]``

Two rounds against the same server, each publishing ``--publishes`` messages of
``--size`` bytes, ``--interval`` seconds apart, to every SSE client:

1. ``--fast`` clients that read everything;
2. the same plus one client that never reads (a 4 KB receive buffer), connected first.

Reports the fast clients' publish -> receive latency (p50/p99/max over every delivery)
in both rounds (goal: p99 unchanged within noise), and, for the slow reader, the most
bytes its stream ever had in flight on the server (``buffered_bytes``; goal: bounded
by ``max_buffered_bytes``), how many events it was sent, and how its stream ended
(``lagged`` once its broadcaster queue of ``--max-queued`` messages is full).
The server's RSS before and after each round is shown as well.

Binds 127.0.0.1 only; bounded by the counts above and timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sse_clients import Client, Server, connect_all, raise_fd_limit, summary, wait_for


async def one_round(server: Server, args: argparse.Namespace, slow: bool) -> None:
    server.get("/reset")
    slow_client = None
    if slow:
        slow_client = Client()
        await slow_client.connect(server.port, rcvbuf=4096, read=False)
    clients = await connect_all(server.port, args.fast)
    expected = args.fast + (1 if slow else 0)
    await wait_for(server, lambda s: s["subscribers"] == expected, args.timeout)
    _, _, before = await wait_for(server, lambda s: True, 5)
    server.get(f"/publish?count={args.publishes}&interval={args.interval}&size={args.size}")
    deadline = time.monotonic() + args.publishes * args.interval + args.timeout
    while time.monotonic() < deadline:
        if all(len(c.received) >= args.publishes for c in clients):
            break
        await asyncio.sleep(0.05)
    await wait_for(server, lambda s: s["publishers"] == 0, args.timeout)
    _, _, after = await wait_for(server, lambda s: True, 5)
    latencies = [latency for c in clients for latency in c.received.values()]
    missing = args.fast * args.publishes - len(latencies)
    label = "fast readers, one slow reader present" if slow else "fast readers alone"
    print(f"{label}: {summary(latencies)}" + (f"; {missing} missing" if missing else ""))
    print(f"   server RSS {before['rss_kb']} -> {after['rss_kb']} KB")
    if slow_client is not None:
        record = after["streams"].get(str(slow_client.port), {})
        print(
            f"   slow reader: max buffered_bytes {record.get('max_buffered')} "
            f"(max_buffered_bytes {args.max_buffered}); "
            + (f"events sent {record.get('sent')} of {args.publishes}; " if args.loop else "")
            + f"its subscription: {record.get('subscription')}; "
            f"its handler: {record.get('end')}"
        )
        slow_client.leave("rst")
    for client in clients:
        client.leave("fin")
    await wait_for(server, lambda s: s["open"] == 0, args.timeout)


async def run(args: argparse.Namespace) -> None:
    server = Server(
        "--max-queued",
        str(args.max_queued),
        "--max-buffered",
        str(args.max_buffered),
        "--sample-buffers",
        *(["--loop"] if args.loop else []),
    )
    try:
        await asyncio.sleep(0.5)
        await one_round(server, args, slow=False)
        await one_round(server, args, slow=True)
        _, _, stats = await wait_for(server, lambda s: True, 5)
        print(f"ERROR records on the server: {stats['errors']}")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", type=int, default=100)
    parser.add_argument("--publishes", type=int, default=1500)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--max-queued", type=int, default=1000)
    parser.add_argument("--max-buffered", type=int, default=1024 * 1024)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--loop", action="store_true", help="async for + send_event instead of relay_events"
    )
    args = parser.parse_args()
    raise_fd_limit(args.fast * 2 + 256)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
