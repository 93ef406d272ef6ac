"""The toolkit against the frameworks a Tornado user could switch to, in one run.

Usage::

    python3 -m venv /tmp/bench
    /tmp/bench/bin/pip install -e '.[orjson]' -r benchmarks/peer_apps/requirements.txt
    /tmp/bench/bin/python benchmarks/peers.py --rounds 5 --duration 5 --disconnects 500

Servers: bare Tornado (``self.write(dict)``), the toolkit (``apps.py``), aiohttp
(``peer_apps/aiohttp_app.py``, handler cancellation on) and Starlette on uvicorn
(``peer_apps/starlette_app.py``), each serving the same payloads, each idiomatic
(its own default JSON encoder, no access log). All run at once on one CPU, the
load on the other; rounds rotate the order, and figures are medians over rounds.

Per server: small JSON req/s (wrk c=16), 1 MB JSON req/s (wrk c=4), the P3 ratio
(small-request p99 while two clients fetch 1 MB, over the unloaded p99; median of
the per-round ratios), the 1 MB responses/s those two clients got meanwhile, and
the close -> ``CancelledError`` latency over
``--disconnects`` clients that leave (FIN and RST alternating; the servers take turns,
one disconnect at a time), or "not cancelled" for a framework whose handler runs on
after its client left.

Needs wrk (``apt-get install -y wrk``). Binds 127.0.0.1 only; every load run is
bounded by ``--duration`` and the latency probe by ``--disconnects``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    CLIENT_CPU,
    SERVER_CPU,
    Server,
    interleaved_disconnect_latencies,
    median,
    p99_under_load,
    percentile,
    pin_this_process_to_client_cpu,
    start_server,
    wrk,
)

HERE = Path(__file__).resolve().parent
MIN_ROUNDS = 5

PEERS = {
    "tornado": ([sys.executable, str(HERE / "apps.py"), "bare"], None),
    "toolkit": ([sys.executable, str(HERE / "apps.py"), "toolkit"], None),
    "aiohttp": ([sys.executable, str(HERE / "peer_apps" / "aiohttp_app.py")], "aiohttp"),
    "starlette": (
        [sys.executable, str(HERE / "peer_apps" / "starlette_app.py")],
        "starlette",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--disconnects", type=int, default=500)
    parser.add_argument("--only", default=",".join(PEERS), help="comma-separated subset")
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    missing = [n for n in names if PEERS[n][1] and importlib.util.find_spec(PEERS[n][1]) is None]
    if missing:
        sys.exit(
            f"not installed here: {', '.join(missing)} "
            "(pip install -r benchmarks/peer_apps/requirements.txt in a benchmark venv)"
        )
    pin_this_process_to_client_cpu()
    servers: dict[str, Server] = {}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    latency: dict[str, str] = {}
    try:
        for name in names:
            servers[name] = start_server(name, PEERS[name][0])
        for round_no in range(args.rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                base = servers[name].base
                got = samples[name]
                got.setdefault("small", []).append(
                    wrk(base + "/small", connections=16, duration=args.duration)["rps"]
                )
                got.setdefault("big", []).append(
                    wrk(base + "/big", connections=4, duration=args.duration)["rps"]
                )
                background: dict[str, float] = {}
                unloaded, loaded = p99_under_load(base, args.duration, background=background)
                got.setdefault("p3", []).append(loaded / unloaded)
                got.setdefault("bg_big", []).append(background.get("rps", float("nan")))
                print(
                    f"round {round_no + 1} {name}: "
                    + ", ".join(f"{k}={v[-1]:.2f}" for k, v in got.items()),
                    flush=True,
                )
        measured = interleaved_disconnect_latencies(
            {name: servers[name].port for name in names}, args.disconnects
        )
        for name in names:
            values = measured[name]
            if values is None:
                latency[name] = "not cancelled"
            else:
                latency[name] = (
                    f"p50 {median(values):.2f} ms, p99 {percentile(values, 0.99):.2f} ms "
                    f"({len(values)}/{args.disconnects})"
                )
            print(f"disconnect latency {name}: {latency[name]}", flush=True)
    finally:
        for server in servers.values():
            server.stop()

    smoke = "" if args.rounds >= MIN_ROUNDS else f" SMOKE RUN (fewer than {MIN_ROUNDS} rounds)."
    print(
        f"\nMedians of {args.rounds} rotated rounds, {args.duration:g}s per cell; servers on "
        f"CPU {SERVER_CPU}, load on CPU {CLIENT_CPU}.{smoke}\n"
    )
    print(
        "| Server | JSON encoder | small JSON req/s | 1 MB JSON req/s | P3 ratio "
        "| 1 MB req/s during P3 | disconnect -> cancellation |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        med = {key: median(values) for key, values in samples[name].items()}
        print(
            f"| {name} | {servers[name].info.split()[-1]} | {med['small']:.0f} | "
            f"{med['big']:.1f} | {med['p3']:.2f}x | {med['bg_big']:.1f} | {latency[name]} |"
        )


if __name__ == "__main__":
    main()
