"""P8: many aborted fetches leave nothing behind.

Usage: ``python benchmarks/aborted_fetches.py [--aborts 1000] [--max-clients 10]``

An upstream process (``tests/chain_hop.py``, cancelled on disconnect) serves
``/work?delay=S``. This process fetches it with one ``CancellableHTTPClient`` and
aborts ``--aborts`` fetches, in batches of twice ``max_clients`` so that half of each
batch waits in the queue. Batches rotate through three ways of giving up:

* cancelled at once (before a connection exists);
* ``task.cancel()`` once the upstream handlers started (in flight, and queued);
* ``asyncio.wait_for`` timing out (in flight, and queued).

Then a burst of ``max_clients`` fetches with 0.2 s of work each: every one must start
at once (no slot still taken), and all must succeed together. Reported: open file
descriptors and asyncio tasks against the baseline taken after one warm-up fetch, the
client's slots and queue, the upstream's count of started and cancelled handlers, and
any ERROR record. Exits non-zero if anything is left behind.
Binds 127.0.0.1 only; bounded by ``--aborts`` and a timeout per step.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chain_hop import Hop  # noqa: E402
from tornado_jsonservlet.outbound import CancellableHTTPClient  # noqa: E402


class ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pending_tasks() -> int:
    return sum(not task.done() for task in asyncio.all_tasks())


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.002)


def started(upstream: Hop) -> int:
    return sum(" started " in line for line in upstream.lines)


async def abort_batch(
    client: CancellableHTTPClient, upstream: Hop, url: str, size: int, way: str
) -> tuple[int, int]:
    """Start ``size`` fetches and abort them all. Returns (in flight, queued) at the abort."""
    before = started(upstream)
    fetches = [client.fetch(f"{url}/work?delay=30&id=x") for _ in range(size)]

    async def caller(fetch: Any) -> None:
        await fetch

    tasks = [asyncio.ensure_future(caller(fetch)) for fetch in fetches]
    await asyncio.sleep(0)  # every caller is now awaiting its fetch
    if way != "at once":
        in_flight_expected = min(size, client.max_clients)
        await wait_until(lambda: started(upstream) - before >= in_flight_expected)
    in_flight, queued = len(client.active), len(client.queue)
    if way == "wait_for":
        results = await asyncio.gather(
            *(asyncio.wait_for(fetch, 0.001) for fetch in fetches), return_exceptions=True
        )
        assert all(isinstance(result, asyncio.TimeoutError) for result in results), results
    for task in tasks:
        task.cancel()  # "wait_for": the fetches are cancelled already; this ends the callers
    await asyncio.gather(*tasks, return_exceptions=True)
    return in_flight, queued


async def run(aborts: int, max_clients: int, upstream: Hop) -> int:
    errors = ErrorCounter()
    logging.getLogger().addHandler(errors)
    client = CancellableHTTPClient(force_instance=True, max_clients=max_clients)
    url = upstream.url
    await client.fetch(f"{url}/work?delay=0&id=warmup")
    await asyncio.sleep(0.1)
    fds, tasks = open_fds(), pending_tasks()

    ways = ["at once", "task.cancel", "wait_for"]
    done = in_flight = queued = 0
    batch = 0
    started_at = time.monotonic()
    while done < aborts:
        size = min(2 * max_clients, aborts - done)
        active, waiting = await abort_batch(client, upstream, url, size, ways[batch % 3])
        in_flight += active
        queued += waiting
        done += size
        batch += 1
    took = time.monotonic() - started_at
    await asyncio.sleep(0.2)
    slots_after_aborts = (len(client.active), len(client.queue), len(client.waiting))

    burst_start = time.monotonic()
    burst = [client.fetch(f"{url}/work?delay=0.2&id=burst") for _ in range(max_clients)]
    started_at_once = len(client.active)
    queued_in_burst = len(client.queue)
    responses = await asyncio.wait_for(asyncio.gather(*burst), 10)
    burst_took = time.monotonic() - burst_start
    await asyncio.sleep(0.3)
    client.close()
    await asyncio.sleep(0.1)

    fds_after, tasks_after = open_fds(), pending_tasks()
    upstream_started = started(upstream) - 1  # the warm-up
    upstream_cancelled = sum(" cancelled " in line for line in upstream.lines)
    upstream_completed = sum(" completed " in line for line in upstream.lines) - 1
    logging.getLogger().removeHandler(errors)

    print(f"aborted fetches: {done} in {took:.2f} s ({batch} batches of up to {2 * max_clients})")
    print(f"  at the abort: {in_flight} held a slot (connecting or in flight), {queued} queued")
    aborted_upstream = upstream_started - max_clients
    print(f"  upstream handlers started {aborted_upstream}, cancelled {upstream_cancelled}")
    print(f"  client slots/queue/waiting after the aborts: {slots_after_aborts}")
    print(
        f"burst of {max_clients}: {started_at_once} started at once, {queued_in_burst} queued, "
        f"{sum(r.code == 200 for r in responses)} answered 200 in {burst_took:.3f} s "
        f"(upstream completed {upstream_completed})"
    )
    print(f"file descriptors: baseline {fds}, after {fds_after}")
    print(f"pending tasks: baseline {tasks}, after {tasks_after}")
    print(f"ERROR records: {len(errors.records)} {errors.records[:3]}")
    clean = (
        slots_after_aborts == (0, 0, 0)
        and started_at_once == max_clients
        and queued_in_burst == 0
        and all(r.code == 200 for r in responses)
        and fds_after <= fds
        and tasks_after <= tasks
        and upstream_cancelled == aborted_upstream
        and not errors.records
    )
    print("result:", "clean" if clean else "SOMETHING WAS LEFT BEHIND")
    return 0 if clean else 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--aborts", type=int, default=1000)
    parser.add_argument("--max-clients", type=int, default=10)
    args = parser.parse_args()
    upstream = Hop("U", "--quiet", f"--max-clients={args.max_clients}")
    try:
        status = asyncio.run(run(args.aborts, args.max_clients, upstream))
    finally:
        upstream.stop()
    sys.exit(status)


if __name__ == "__main__":
    main()
