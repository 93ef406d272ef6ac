"""Bare Tornado vs the toolkit, side by side in one run, with wrk.

Usage: ``python benchmarks/compare.py [--rounds 5] [--duration 5]``

Both servers run at once, pinned to one CPU; wrk (and this script) run on the other.
Rounds alternate the order of the servers, so drift on the machine hits both, and
every figure is the median over the rounds (at least 5 for a figure worth quoting;
fewer is a smoke run and is labelled as such). Printed figures:

* P1: small-JSON requests/s, toolkit / bare (goal >= 1.10), and the servers' CPU time
  per small request (read from ``/proc``), bare / toolkit: the same ratio at
  saturation, and far steadier when other work shares the machine;
* P2: 1 MB JSON requests/s, toolkit / bare (goal >= 2.5 with ujson, >= 5 with orjson);
* P3: small-request p99 while two clients fetch 1 MB responses, relative to the same
  server's unloaded p99, the median of the per-round ratios (goal <= 1.5; bare
  Tornado is shown for comparison), with the 1 MB responses per second the two
  background clients got meanwhile.

Needs wrk (``apt-get install -y wrk``). Servers bind 127.0.0.1 only; every wrk run is
bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    CLIENT_CPU,
    SERVER_CPU,
    median,
    p99_under_load,
    pin_this_process_to_client_cpu,
    start_server,
    wrk,
    wrk_with_cpu,
)

HERE = Path(__file__).resolve().parent
MIN_ROUNDS = 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--skip-big", action="store_true", help="P1 and P3 only (no P2)")
    args = parser.parse_args()
    pin_this_process_to_client_cpu()
    servers = {
        kind: start_server(kind, [sys.executable, str(HERE / "apps.py"), kind])
        for kind in ("bare", "toolkit")
    }
    backend = servers["toolkit"].info.split()[-1]
    samples: dict[str, dict[str, list[float]]] = {kind: {} for kind in servers}
    try:
        for round_no in range(args.rounds):
            order = ("bare", "toolkit") if round_no % 2 == 0 else ("toolkit", "bare")
            for kind in order:
                base = servers[kind].base
                got = samples[kind]
                small = wrk_with_cpu(
                    base + "/small", servers[kind].proc.pid, connections=16, duration=args.duration
                )
                got.setdefault("small", []).append(small["rps"])
                got.setdefault("cpu_us", []).append(small["cpu_us"])
                if not args.skip_big:
                    got.setdefault("big", []).append(
                        wrk(base + "/big", connections=4, duration=args.duration)["rps"]
                    )
                background: dict[str, float] = {}
                unloaded, loaded = p99_under_load(base, args.duration, background=background)
                got.setdefault("bg_big", []).append(background.get("rps", float("nan")))
                got.setdefault("p99_unloaded", []).append(unloaded)
                got.setdefault("p99_loaded", []).append(loaded)
                got.setdefault("p3", []).append(loaded / unloaded)
                print(
                    f"round {round_no + 1} {kind}: "
                    + ", ".join(f"{k}={v[-1]:.2f}" for k, v in got.items()),
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()

    med = {kind: {name: median(v) for name, v in got.items()} for kind, got in samples.items()}
    bare, kit = med["bare"], med["toolkit"]
    smoke = "" if args.rounds >= MIN_ROUNDS else f"  [SMOKE RUN: fewer than {MIN_ROUNDS} rounds]"
    print(
        f"\nencoder: {backend}; medians of {args.rounds} interleaved rounds, "
        f"{args.duration:g}s each; servers on CPU {SERVER_CPU}, load on CPU {CLIENT_CPU}{smoke}"
    )
    rows = [("P1 small JSON req/s (c=16)", "small", ">= 1.10x")]
    if not args.skip_big:
        rows.append(("P2 1 MB JSON req/s (c=4)", "big", ">= 5x orjson, 2.5x ujson"))
    print(f"{'figure':<32}{'bare':>12}{'toolkit':>12}{'ratio':>9}   goal")
    for label, key, goal in rows:
        ratio = kit[key] / bare[key]
        print(f"{label:<32}{bare[key]:>12.1f}{kit[key]:>12.1f}{ratio:>8.2f}x   {goal}")
    cpu_ratio = bare["cpu_us"] / kit["cpu_us"]
    print(
        f"{'P1 server CPU us/request':<32}{bare['cpu_us']:>12.1f}{kit['cpu_us']:>12.1f}"
        f"{cpu_ratio:>8.2f}x   (bare / toolkit: the same goal, steadier on a busy machine)"
    )
    for kind, m in (("bare", bare), ("toolkit", kit)):
        print(
            f"P3 {kind:<8} small p99: unloaded {m['p99_unloaded']:.2f} ms, "
            f"loaded {m['p99_loaded']:.2f} ms, ratio (median of rounds) {m['p3']:.2f}x"
            + ("   goal <= 1.5x" if kind == "toolkit" else "")
        )
        print(f"   meanwhile the two 1 MB clients got {m['bg_big']:.1f} responses/s")


if __name__ == "__main__":
    main()
