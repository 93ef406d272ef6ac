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


async def run(count: int) -> None:
    import apps

    from tornado_jsonservlet.connection import ClientConnectionMixin

    callback_at: dict[str, float] = {}
    close_callback = ClientConnectionMixin._on_close_callback

    def probed(handler: ClientConnectionMixin) -> None:
        callback_at[handler.path_args[0]] = time.monotonic()
        close_callback(handler)

    ClientConnectionMixin._on_close_callback = probed  # type: ignore[method-assign]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    asyncio.run(run(args.count))


if __name__ == "__main__":
    main()
