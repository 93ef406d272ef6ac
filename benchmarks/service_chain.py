"""P6: a client leaves service A; how soon is each hop's handler cancelled (A -> B -> C)?

Usage: ``python benchmarks/service_chain.py [--trials 1000] [--bare-trials 5]``

Three processes run ``tests/chain_hop.py`` on loopback, each forwarding to the next
through ``CancellableHTTPClient``; the last one sleeps. Per trial, this process sends
``GET /work`` to A, waits until C logs that its handler started, stamps
``time.monotonic()`` and closes the connection (FIN and RST alternate). Each hop logs
the ``time.monotonic()`` at which ``CancelledError`` reached its handler; the clock is
the same system-wide monotonic clock in every process.

Reported, p50/p99/max over the trials:

* close -> hop cancelled, for A, B and C (cumulative);
* added per outbound hop: (C - A) / 2 per trial.

Then ``--bare-trials`` trials on the same chain forwarding with Tornado's own client
(0.3 s of work in C): how often C was cancelled (never is expected) and completed.
Binds 127.0.0.1 only; bounded by the trial counts and a 10 s wait per step.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chain_hop import Hop, start_chain  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def summary(values: list[float]) -> str:
    return (
        f"p50 {statistics.median(values):.3f} ms, p99 {percentile(values, 0.99):.3f} ms, "
        f"max {max(values):.3f} ms"
    )


def one_trial(hops: list[Hop], ident: str, delay: float, how: str) -> float:
    """Send, wait until C works, leave. Returns the monotonic time of the close."""
    a, c = hops[0], hops[-1]
    start_c = len(c.lines)
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    sock.sendall(f"GET /work?delay={delay}&id={ident} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    c.wait_for_line(rf"C started {ident}$", start=start_c)
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    left = time.monotonic()
    sock.close()
    return left


def measure(trials: int) -> None:
    hops = start_chain(options=("--quiet",))
    try:
        per_hop: dict[str, list[float]] = {hop.name: [] for hop in hops}
        added: list[float] = []
        for index in range(trials):
            ident = f"t{index}"
            marks = [len(hop.lines) for hop in hops]
            left = one_trial(hops, ident, 30, "rst" if index % 2 else "fin")
            stamps = {}
            for hop, mark in zip(hops, marks):
                found = hop.wait_for_line(rf"{hop.name} cancelled {ident} at ([\d.]+)", start=mark)
                stamps[hop.name] = float(found.group(1))
                per_hop[hop.name].append((stamps[hop.name] - left) * 1000)
            added.append((stamps["C"] - stamps["A"]) * 1000 / 2)
        errors = [line for hop in hops for line in hop.lines if line.startswith("ERROR")]
    finally:
        for hop in hops:
            hop.stop()
    print(f"trials: {trials} (FIN and RST alternating), ERROR lines in hop logs: {len(errors)}")
    for name, values in per_hop.items():
        print(f"close -> {name} handler cancelled: {summary(values)}")
    print(f"added per outbound hop ((C - A) / 2): {summary(added)}")


def bare(trials: int) -> None:
    hops = start_chain(options=("--quiet", "--client=simple"))
    try:
        c = hops[-1]
        for index in range(trials):
            ident = f"bare{index}"
            mark = len(c.lines)
            one_trial(hops, ident, 0.3, "rst")
            c.wait_for_line(rf"C (completed|cancelled) {ident}\b", start=mark)
        cancelled = sum(" cancelled bare" in line for line in c.lines)
        completed = sum(" completed bare" in line for line in c.lines)
    finally:
        for hop in hops:
            hop.stop()
    print(
        f"bare Tornado client, {trials} trials: C cancelled {cancelled} times, "
        f"ran to completion {completed} times"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--bare-trials", type=int, default=5)
    args = parser.parse_args()
    measure(args.trials)
    if args.bare_trials:
        bare(args.bare_trials)


if __name__ == "__main__":
    main()
