"""Bare Tornado vs the toolkit, side by side in one run, with wrk.

Usage: ``python benchmarks/compare.py [--rounds 3] [--duration 5]``

Both servers run at once, pinned to CPU 0; wrk is pinned to CPU 1. Rounds alternate
between the servers so drift on the machine hits both. Printed figures:

* P1: small-JSON requests/s, toolkit / bare (goal >= 1.10);
* P2: 1 MB JSON requests/s, toolkit / bare (goal >= 2.5 with ujson, >= 5 with orjson);
* P3: small-request p99 while two clients fetch 1 MB responses, relative to the same
  server's unloaded p99 (goal <= 1.5; bare Tornado is shown for comparison).

Needs wrk (``apt-get install -y wrk``) and ``taskset``. Servers bind 127.0.0.1 only; every
wrk run is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER_CPU, CLIENT_CPU = "0", "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(kind: str) -> tuple[subprocess.Popen[str], int, str]:
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, sys.executable, str(HERE / "apps.py"), kind, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    return proc, port, line[2] if len(line) > 2 else "?"


def wrk(url: str, *, connections: int, duration: int, latency: bool = False) -> dict[str, float]:
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", url]
    if latency:
        cmd.insert(4, "--latency")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    if latency:
        result["p99_ms"] = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    return result


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def p99_under_load(port: int, duration: int) -> tuple[float, float]:
    """(unloaded p99, p99 while two clients fetch /big) for /small, in ms."""
    base = f"http://127.0.0.1:{port}"
    time.sleep(1.5)  # let responses still in flight from the previous run drain
    unloaded = wrk(base + "/small", connections=1, duration=duration, latency=True)["p99_ms"]
    background = subprocess.Popen(
        ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c2", f"-d{duration + 2}s", base + "/big"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        loaded = wrk(base + "/small", connections=1, duration=duration, latency=True)["p99_ms"]
    finally:
        background.wait(timeout=duration + 30)
    return unloaded, loaded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    servers = {kind: start(kind) for kind in ("bare", "toolkit")}
    backend = servers["toolkit"][2]
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in servers}
    try:
        for round_no in range(args.rounds):
            order = ("bare", "toolkit") if round_no % 2 == 0 else ("toolkit", "bare")
            for kind in order:
                port = servers[kind][1]
                base = f"http://127.0.0.1:{port}"
                got = samples[kind]
                got.setdefault("small", []).append(
                    wrk(base + "/small", connections=16, duration=args.duration)["rps"]
                )
                got.setdefault("big", []).append(
                    wrk(base + "/big", connections=4, duration=args.duration)["rps"]
                )
                unloaded, loaded = p99_under_load(port, args.duration)
                got.setdefault("p99_unloaded", []).append(unloaded)
                got.setdefault("p99_loaded", []).append(loaded)
                print(
                    f"round {round_no + 1} {kind}: "
                    + ", ".join(f"{k}={v[-1]:.2f}" for k, v in got.items()),
                    flush=True,
                )
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)

    med = {
        kind: {name: statistics.median(v) for name, v in got.items()}
        for kind, got in samples.items()
    }
    bare, kit = med["bare"], med["toolkit"]
    print(
        f"\nencoder: {backend}; medians of {args.rounds} interleaved rounds, {args.duration}s each"
    )
    rows = [
        ("P1 small JSON req/s (c=16)", bare["small"], kit["small"]),
        ("P2 1 MB JSON req/s (c=4)", bare["big"], kit["big"]),
    ]
    print(f"{'figure':<32}{'bare':>12}{'toolkit':>12}{'ratio':>9}")
    for label, bare_value, kit_value in rows:
        print(f"{label:<32}{bare_value:>12.1f}{kit_value:>12.1f}{kit_value / bare_value:>8.2f}x")
    for kind, m in (("bare", bare), ("toolkit", kit)):
        ratio = m["p99_loaded"] / m["p99_unloaded"]
        print(
            f"P3 {kind:<8} small p99: unloaded {m['p99_unloaded']:.2f} ms, "
            f"loaded {m['p99_loaded']:.2f} ms, {ratio:.2f}x"
        )


if __name__ == "__main__":
    main()
