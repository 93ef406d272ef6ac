"""P9-P11: many SSE clients on one process, fed by an InMemoryBroadcaster.

Usage: ``python benchmarks/sse_fanout.py [--clients 2000] [--publishes 200] [--interval 0.2]
[--loop]``

The server relays the channel with ``relay_events()``; ``--loop`` measures the
hand-written ``async for message in messages: await self.send_event(message)``
instead.

1. **P10** connects ``--clients`` SSE clients and lets them idle; reports the server's
   RSS growth divided by the clients (goal <= 64 KB per connection).
2. **P9** publishes ``--publishes`` messages, ``--interval`` seconds apart. For each,
   the latency until the *last* client received it (publish time stamped on the
   server, receipt stamped by the client, one system-wide monotonic clock); reports
   p50/p99/max of that (goal p99 <= 100 ms).
3. **P11** makes every client leave at once, half with FIN and half with RST, and
   reports how long until every producer was cancelled and the server's pending tasks
   are back to the baseline (goal <= 1 s), the RSS then, and ERROR records (goal 0).

The server runs in its own process (CPU 0), the clients in this one (CPU 1). Binds
127.0.0.1 only; bounded by the counts above and per-step timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sse_clients import Server, collect, connect_all, raise_fd_limit, summary, wait_for


async def run(args: argparse.Namespace) -> None:
    server = Server(*(["--loop"] if args.loop else []))
    try:
        await asyncio.sleep(0.5)
        _, _, base = await wait_for(server, lambda s: True, 5)
        print(f"baseline: {base['tasks']} tasks, RSS {base['rss_kb']} KB")

        started = time.monotonic()
        clients = await connect_all(server.port, args.clients)
        met, _, stats = await wait_for(
            server, lambda s: s["subscribers"] == args.clients, args.timeout
        )
        print(f"connected {args.clients} clients in {time.monotonic() - started:.2f} s")
        if not met:
            raise SystemExit(f"only {stats['subscribers']} subscribed")
        await asyncio.sleep(1.0)
        _, _, idle = await wait_for(server, lambda s: True, 5)
        per_client = (idle["rss_kb"] - base["rss_kb"]) / args.clients
        print(
            f"P10 idle memory: RSS {base['rss_kb']} -> {idle['rss_kb']} KB, "
            f"{per_client:.1f} KB per connection (goal <= 64 KB)"
        )

        server.get(f"/publish?count={args.publishes}&interval={args.interval}")
        publishing = args.publishes * args.interval
        collect(clients, time.monotonic() + publishing, publishing + args.timeout)
        last_client = []
        missing = 0
        for seq in range(args.publishes):
            latencies = [c.received[seq] for c in clients if seq in c.received]
            missing += args.clients - len(latencies)
            if latencies:
                last_client.append(max(latencies))
        print(f"P9 publish -> last client received: {summary(last_client)} (goal p99 <= 100 ms)")
        if missing:
            print(f"   {missing} deliveries missing")

        _, _, before = await wait_for(server, lambda s: True, 5)
        left = time.monotonic()
        for index, client in enumerate(clients):
            client.leave("fin" if index % 2 == 0 else "rst")
        met, seconds, after = await wait_for(
            server,
            lambda s: s["open"] == 0 and s["subscribers"] == 0 and s["tasks"] <= base["tasks"],
            args.timeout,
        )
        waited = time.monotonic() - left
        await asyncio.sleep(max(0.0, 1.0 - waited))
        _, _, settled = await wait_for(server, lambda s: True, 5)
        print(
            f"P11 all leave (half FIN, half RST): producers cancelled {after['cancelled']}"
            f"/{args.clients}; tasks back to baseline ({after['tasks']} <= {base['tasks']}) "
            f"{'in ' + format(seconds, '.3f') + ' s' if met else 'NOT within the timeout'}; "
            f"RSS 1 s after: {settled['rss_kb']} KB (baseline {base['rss_kb']}, "
            f"before leaving {before['rss_kb']}); ERROR records: {settled['errors']}"
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--publishes", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--loop", action="store_true", help="async for + send_event instead of relay_events"
    )
    args = parser.parse_args()
    raise_fd_limit(args.clients * 2 + 256)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
