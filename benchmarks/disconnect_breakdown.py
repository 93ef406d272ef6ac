"""Where the toolkit's close -> cancellation time goes: before or after its own code.

Usage: ``python benchmarks/disconnect_breakdown.py [--count 300]``

Runs the toolkit's ``/wait`` handler of ``apps.py`` in this process (CPU 0) with one
probe: the time Tornado calls the toolkit's connection-close callback. A client
process (CPU 1) opens ``--count`` requests one after another, reads the headers,
and closes (FIN and RST alternating), stamping ``time.monotonic()`` (one clock for
both processes). Printed, p50/p90/p99 of:

* close -> the toolkit's close callback: the kernel, the event loop and Tornado's
  ``IOStream`` noticing the close (the toolkit cannot shorten this part);
* close callback -> ``CancelledError`` in the handler: the toolkit's own work plus
  one trip round the event loop (``Task.cancel`` takes effect on the next one).

With ``--stages``, Tornado's part is split further by timing wrappers around
``IOStream._handle_events`` (the loop reports the socket readable),
``IOStream.close`` (the stream read the end of the connection) and
``IOStream._signal_closed`` (the socket is closed; the close callback is scheduled
for the next trip round the loop). The wrappers cost a few microseconds each; they
are for reading proportions, not for quoting the total.

Binds 127.0.0.1 only; bounded by ``--count``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# The client process: loadgen's clients, one server, the close times as JSON.
CLIENT = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); import loadgen; "
    "print(json.dumps(loadgen.leave_after_headers({'s': int(sys.argv[2])}, int(sys.argv[3]))['s']))"
)


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return f"p50 {pick(0.5):.3f} ms, p90 {pick(0.9):.3f} ms, p99 {pick(0.99):.3f} ms"


#: Tornado's stages, in the order a disconnect passes them.
STAGES = ("_handle_events", "close", "_signal_closed")


def stamp_tornado_stages(first_seen: dict[str, float]) -> None:
    """Record in ``first_seen`` the first time each of :data:`STAGES` runs.

    Disconnects come one at a time and the dict is cleared once the handler waits,
    so the stamps found at the close callback belong to that disconnect.
    """
    import tornado.iostream

    def stamped(name: str, original: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            first_seen.setdefault(name, time.monotonic())
            return original(self, *args, **kwargs)

        return wrapper

    for name in STAGES:
        original = getattr(tornado.iostream.BaseIOStream, name)
        setattr(tornado.iostream.BaseIOStream, name, stamped(name, original))


async def run(count: int, stages: bool) -> None:
    import apps

    from tornado_jsonservlet.core.connection import ClientConnectionMixin

    callback_at: dict[str, float] = {}
    stage_at: dict[str, dict[str, float]] = {}
    first_seen: dict[str, float] = {}
    close_callback = ClientConnectionMixin._on_close_callback

    def probed(handler: ClientConnectionMixin) -> None:
        ident = handler.path_args[0]
        callback_at[ident] = time.monotonic()
        stage_at[ident] = dict(first_seen)
        close_callback(handler)

    ClientConnectionMixin._on_close_callback = probed  # type: ignore[method-assign]
    if stages:
        stamp_tornado_stages(first_seen)
        wait = apps.wait_for_cancellation

        async def wait_from_a_clean_slate(handler: Any, ident: str) -> None:
            # The first byte is written at once; what the stream does after that
            # until the close callback is the disconnect's work.
            loop = asyncio.get_running_loop()
            loop.call_soon(first_seen.clear)
            await wait(handler, ident)

        apps.wait_for_cancellation = wait_from_a_clean_slate
    with socket.socket() as probe_sock:
        probe_sock.bind(("127.0.0.1", 0))
        port = probe_sock.getsockname()[1]
    apps.make_app("toolkit").listen(port, address="127.0.0.1")
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(HERE), str(port), str(count), stdout=subprocess.PIPE
    )
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(client.pid, {1})
    out, _ = await asyncio.wait_for(client.communicate(), timeout=count * 0.1 + 30)
    await asyncio.sleep(0.3)
    closed: dict[str, float] = json.loads(out)
    cancelled = apps.CANCELLED_AT
    idents = [i for i in closed if i in callback_at and i in cancelled]
    print(f"{len(idents)}/{count} disconnects reached the handler")
    print(
        "close -> close callback:    "
        + summary([(callback_at[i] - closed[i]) * 1e3 for i in idents])
    )
    print(
        "close callback -> cancelled: "
        + summary([(cancelled[i] - callback_at[i]) * 1e3 for i in idents])
    )
    print(
        "close -> cancelled (total): " + summary([(cancelled[i] - closed[i]) * 1e3 for i in idents])
    )
    if stages:
        points = [
            ("close", closed),
            *((name, {i: stage_at[i].get(name) for i in idents}) for name in STAGES),
            ("toolkit callback", callback_at),
        ]
        for (before, at_before), (after, at_after) in zip(points, points[1:]):
            spans = [
                (at_after[i] - at_before[i]) * 1e3
                for i in idents
                if at_before.get(i) is not None and at_after.get(i) is not None
            ]
            if spans:
                print(f"  {before} -> {after}: " + summary(spans))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--stages", action="store_true", help="split Tornado's part too")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    asyncio.run(run(args.count, args.stages))


if __name__ == "__main__":
    main()
