"""Soak test: many requests against demo_server.py, a third of the clients leaving early.

Usage: ``python benchmarks/soak.py [--requests 20000] [--concurrency 100] [--leave 0.3]``

Starts ``demo_server.py`` (CPU 0) and sends ``GET /?delay=D[&error=yes]`` with D between
20 and 60 ms. A ``--leave`` share of the clients close the connection (FIN or RST,
half each) at a random moment in the first half of the delay; the rest read their answer.
Reports, from the client and the server's log:

* ERROR records in the server log (must be 0);
* unexpected 5xx (must be 0);
* clean-up count (must equal the number of requests that reached the server: a client
  that resets before its request is read leaves nothing to clean up);
* delayed work run for departed clients (must be 0);
* pending tasks on the server after the run, against the idle baseline;
* RSS drift from after the warm-up to the end (goal < 5 MB).

Binds 127.0.0.1 only; bounded by the request count and ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = "doing application stuff..."
CLEANUP = "doing some application clean up..."


async def one_request(port: int, leave: bool, rng: random.Random) -> str:
    delay = rng.uniform(0.02, 0.06)
    query = f"delay={delay:.3f}" + ("&error=yes" if rng.random() < 0.2 else "")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    if leave:
        # Leave in the first half of the delay: a client that leaves a millisecond
        # before the work is due cannot be told apart from one that stayed.
        await asyncio.sleep(rng.uniform(0, delay * 0.5))
        sock = writer.get_extra_info("socket")
        # A busy client can wake up late: if the answer is already here, the server
        # finished before this client left, so it does not count as a departure.
        await asyncio.sleep(0)
        answered = bool(reader._buffer) or reader.at_eof()
        if rng.random() < 0.5:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        return "left-after-answer" if answered else "left"
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return raw.split(b" ", 2)[1].decode() if raw.startswith(b"HTTP/") else "none"


async def get_json(port: int, path: str) -> dict[str, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    return json.loads(raw.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


async def run(
    port: int, total: int, concurrency: int, leave_share: float, seed: int
) -> dict[str, int]:
    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency)
    outcomes: dict[str, int] = {}

    async def bounded(index: int) -> None:
        async with limit:
            outcome = await one_request(port, rng.random() < leave_share, rng)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    await asyncio.gather(*(bounded(i) for i in range(total)))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--leave", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_file = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "demo_server.py",
            f"--port={port}",
            "--logging=info",
        ],
        cwd=ROOT,
        stderr=log_file,
        stdout=subprocess.DEVNULL,
    )
    os.sched_setaffinity(0, {1})
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "demo server did not start"
                time.sleep(0.05)

        async def scenario() -> tuple[
            dict[str, int], dict[str, object], dict[str, object], dict[str, object], float
        ]:
            idle = await get_json(port, "/api/v1/metrics")
            warm = await run(port, args.warmup, args.concurrency, args.leave, args.seed)
            await asyncio.sleep(1)
            after_warmup = await get_json(port, "/api/v1/metrics")
            started = time.monotonic()
            outcomes = await run(port, args.requests, args.concurrency, args.leave, args.seed + 1)
            elapsed = time.monotonic() - started
            await asyncio.sleep(1)
            final = await get_json(port, "/api/v1/metrics")
            for key, value in warm.items():
                outcomes[key] = outcomes.get(key, 0) + value
            return outcomes, idle, after_warmup, final, elapsed

        outcomes, idle, after_warmup, final, elapsed = asyncio.run(
            asyncio.wait_for(scenario(), args.timeout)
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    log = Path(log_file.name).read_text()
    os.unlink(log_file.name)

    total = args.requests + args.warmup
    stayed = total - outcomes.get("left", 0)  # includes clients that left after their answer
    work = log.count(WORK)
    cleanups = log.count(CLEANUP)
    reached = sum(1 for line in log.splitlines() if " GET /?delay=" in line and "web:" in line)
    errors = sum(1 for line in log.splitlines() if line.startswith("[E "))
    fivexx = sum(n for status, n in outcomes.items() if status.startswith("5"))
    print(
        f"requests {total} ({args.warmup} warm-up) at concurrency {args.concurrency}, "
        f"{elapsed:.1f}s for the main run"
    )
    print(f"outcomes: {dict(sorted(outcomes.items()))}")
    print(f"ERROR records in server log: {errors} (must be 0)")
    print(f"unexpected 5xx: {fivexx} (must be 0)")
    print(f"clean-ups: {cleanups} for {reached} requests that reached the server (must be equal)")
    print(
        f"delayed work run: {work} for {stayed} clients that stayed; "
        f"for departed clients: {work - stayed} (must be 0)"
    )
    print(f"pending tasks: idle {idle['pending_tasks']}, after run {final['pending_tasks']}")
    warm_mb = float(str(after_warmup["rss_kb"])) / 1024
    end_mb = float(str(final["rss_kb"])) / 1024
    print(
        f"RSS after warm-up {warm_mb:.1f} MB, at end {end_mb:.1f} MB, "
        f"drift {end_mb - warm_mb:+.2f} MB (goal < 5)"
    )


if __name__ == "__main__":
    main()
