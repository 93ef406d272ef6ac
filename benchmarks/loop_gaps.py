"""How long the toolkit's event loop is held while big JSON responses are served.

Usage: ``python benchmarks/loop_gaps.py [--seconds 5] [--connections 2]``

Runs the toolkit's ``/big`` handler of ``apps.py`` (1 MB of JSON) in this process,
pinned to CPU 0, next to a probe task that does nothing but ``await asyncio.sleep(0)``
and records the time between two of its turns: the longest stretch any other
callback held the loop. wrk (CPU 1) fetches ``/big`` over ``--connections``
connections for ``--seconds``. Prints the gaps' p50/p99/p99.9/max and the number of
big responses served. A small request arriving during a gap waits for its end, which
is the server's share of P3.

Needs wrk (``apt-get install -y wrk``). Binds 127.0.0.1 only; bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def run(seconds: int, connections: int) -> None:
    import apps

    gaps: list[float] = []

    async def probe() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append((now - last) * 1000)
            last = now

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    apps.make_app("toolkit").listen(port, address="127.0.0.1")
    await asyncio.sleep(0.2)
    wrk = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        f"http://127.0.0.1:{port}/big",
        stdout=asyncio.subprocess.PIPE,
    )
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(wrk.pid, {1})
    prober = asyncio.ensure_future(probe())
    try:
        out, _ = await asyncio.wait_for(wrk.communicate(), timeout=seconds + 30)
    finally:
        prober.cancel()
    requests = re.search(rb"(\d+) requests in", out)
    ordered = sorted(gaps)
    print(
        f"{requests.group(1).decode() if requests else '?'} big responses in {seconds} s; "
        f"loop gaps over {len(ordered)} turns: p50 {percentile(ordered, 0.5):.3f} ms, "
        f"p99 {percentile(ordered, 0.99):.3f} ms, p99.9 {percentile(ordered, 0.999):.3f} ms, "
        f"max {ordered[-1]:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    asyncio.run(run(args.seconds, args.connections))


if __name__ == "__main__":
    main()
