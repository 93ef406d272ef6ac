"""Bare Tornado vs the toolkit, side by side in one run, with wrk.

Usage: ``python benchmarks/compare.py [--rounds 5] [--duration 5] [--skip-big | --p1-only]``

Three servers of ``apps.py`` run at once, pinned to one CPU; wrk (and this script) run
on the other. ``servlet`` is the toolkit as the README shows it (a ``JsonServlet``
registered with a ``ServletRegistry``, ``on_GET`` returning the document); ``toolkit``
is a hand-built mixin stack calling ``write_json``; ``bare`` is Tornado's
``self.write(dict)``. Rounds rotate the order of the servers, so drift on the machine
hits all of them, and every figure is the median over the rounds (at least 5 for a
figure worth quoting; fewer is a smoke run and is labelled as such). Printed figures:

* P1: small-JSON requests/s, servlet / bare (goal >= 1.10), and the mixin stack /
  bare on a second row; the servers' CPU time per small request (read from
  ``/proc``), bare / toolkit: the same ratio at saturation, and far steadier when
  other work shares the machine;
* P2: 1 MB JSON requests/s, servlet / bare and mixin stack / bare (goal >= 2.5 with
  ujson, >= 5 with orjson);
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
#: The servers of ``apps.py`` compared, in the order of the first round.
KINDS = ("bare", "servlet", "toolkit")


def _last(got: dict[str, list[float]]) -> str:
    return ", ".join(f"{name}={values[-1]:.2f}" for name, values in got.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--skip-big", action="store_true", help="P1 and P3 only (no P2)")
    parser.add_argument("--p1-only", action="store_true", help="P1 only (no P2, no P3)")
    args = parser.parse_args()
    pin_this_process_to_client_cpu()
    servers = {
        kind: start_server(kind, [sys.executable, str(HERE / "apps.py"), kind]) for kind in KINDS
    }
    backend = servers["servlet"].info.split()[-1]
    samples: dict[str, dict[str, list[float]]] = {kind: {} for kind in servers}
    try:
        for round_no in range(args.rounds):
            # Rotate: each server runs first, second and third in turn.
            shift = round_no % len(KINDS)
            order = KINDS[shift:] + KINDS[:shift]
            for kind in order:
                base = servers[kind].base
                got = samples[kind]
                small = wrk_with_cpu(
                    base + "/small", servers[kind].proc.pid, connections=16, duration=args.duration
                )
                got.setdefault("small", []).append(small["rps"])
                got.setdefault("cpu_us", []).append(small["cpu_us"])
                if not (args.skip_big or args.p1_only):
                    got.setdefault("big", []).append(
                        wrk(base + "/big", connections=4, duration=args.duration)["rps"]
                    )
                if args.p1_only:
                    print(f"round {round_no + 1} {kind}: {_last(got)}", flush=True)
                    continue
                background: dict[str, float] = {}
                unloaded, loaded = p99_under_load(base, args.duration, background=background)
                got.setdefault("bg_big", []).append(background.get("rps", float("nan")))
                got.setdefault("p99_unloaded", []).append(unloaded)
                got.setdefault("p99_loaded", []).append(loaded)
                got.setdefault("p3", []).append(loaded / unloaded)
                print(f"round {round_no + 1} {kind}: {_last(got)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()

    med = {kind: {name: median(v) for name, v in got.items()} for kind, got in samples.items()}
    bare = med["bare"]
    smoke = "" if args.rounds >= MIN_ROUNDS else f"  [SMOKE RUN: fewer than {MIN_ROUNDS} rounds]"
    print(
        f"\nencoder: {backend}; medians of {args.rounds} interleaved rounds, "
        f"{args.duration:g}s each; servers on CPU {SERVER_CPU}, load on CPU {CLIENT_CPU}{smoke}"
    )
    rows = [
        ("P1 small JSON req/s (c=16)", "servlet", "small", ">= 1.10x"),
        ("P1 mixin stack, same run", "toolkit", "small", ""),
    ]
    if not (args.skip_big or args.p1_only):
        for kind in ("servlet", "toolkit"):
            rows.append((f"P2 1 MB JSON req/s, {kind}", kind, "big", ">= 5x orjson, 2.5x ujson"))
    print(f"{'figure':<32}{'server':>9}{'bare':>10}{'toolkit':>10}{'ratio':>9}   goal")
    for label, kind, key, goal in rows:
        kit = med[kind]
        ratio = kit[key] / bare[key]
        print(f"{label:<32}{kind:>9}{bare[key]:>10.1f}{kit[key]:>10.1f}{ratio:>8.2f}x   {goal}")
    for kind in ("servlet", "toolkit"):
        kit = med[kind]
        print(
            f"{'P1 server CPU us/request':<32}{kind:>9}{bare['cpu_us']:>10.1f}"
            f"{kit['cpu_us']:>10.1f}{bare['cpu_us'] / kit['cpu_us']:>8.2f}x   "
            "(bare / toolkit: the same goal, steadier on a busy machine)"
        )
    if args.p1_only:
        return
    for kind, m in med.items():
        print(
            f"P3 {kind:<8} small p99: unloaded {m['p99_unloaded']:.2f} ms, "
            f"loaded {m['p99_loaded']:.2f} ms, ratio (median of rounds) {m['p3']:.2f}x"
            + ("" if kind == "bare" else "   goal <= 1.5x")
        )
        print(f"   meanwhile the two 1 MB clients got {m['bg_big']:.1f} responses/s")


if __name__ == "__main__":
    main()
