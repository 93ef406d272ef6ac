"""Where a small-JSON request's time goes: cProfile around one server of ``apps.py``.

Usage: ``python benchmarks/profile_p1.py [--kind toolkit|servlet|bare] [--duration 3] [-c 2]``

The server runs under cProfile on one CPU while wrk sends ``GET /small`` from the
other, at low load (2 connections by default, so the profile shows per-request
work rather than queueing). Prints the functions with the most own time, and the
cumulative time per request of the layers that matter for P1. Binds 127.0.0.1 only;
the run is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import SERVER_CPU, pin_this_process_to_client_cpu, start_server, wrk

HERE = Path(__file__).resolve().parent

#: (label, file suffix, function name) of the layers summed per request.
LAYERS = [
    ("HTTP/1 connection: read request, write response", "http1connection.py", "_read_message"),
    ("RequestHandler._execute (whole handler)", "web.py", "_execute"),
    ("handler __init__ (incl. clear())", "web.py", "__init__"),
    ("finish()", "web.py", "finish"),
    ("flush() + write_headers", "web.py", "flush"),
    ("access log (_log)", "web.py", "_log"),
    ("JSON encoding", "jsonio.py", "encode"),
    ("write_json", "json_handlers.py", "write_json"),
]


def serve_profiled(kind: str, port: int, out: str) -> None:
    """Child: run the app under cProfile until SIGTERM, then dump the stats."""
    os.sched_setaffinity(0, {SERVER_CPU})
    from apps import make_app

    profile = cProfile.Profile()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        make_app(kind).listen(port, address="127.0.0.1")
        print(f"ready {kind}", flush=True)
        profile.enable()
        await stop.wait()
        profile.disable()

    asyncio.run(main())
    profile.dump_stats(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("toolkit", "servlet", "bare"), default="toolkit")
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("-c", "--connections", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", help="also write the raw profile here (for pstats/snakeviz)")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_profiled(args.serve[0], int(args.serve[2]), args.serve[1])
        return
    pin_this_process_to_client_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "p1.prof")
        server = start_server(args.kind, [sys.executable, __file__, "--serve", args.kind, out])
        try:
            rps = wrk(server.base + "/small", connections=args.connections, duration=args.duration)[
                "rps"
            ]
        finally:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=30)
        stats = pstats.Stats(out)
        if args.save:
            stats.dump_stats(args.save)
        requests = _calls(stats, "web.py", "_execute") or 1
        print(
            f"{args.kind}: {rps:.0f} req/s under cProfile (c={args.connections}), "
            f"{requests} requests profiled\n"
        )
        print("Cumulative time per request by layer (profiler overhead included):")
        for label, suffix, name in LAYERS:
            total = _cumulative(stats, suffix, name)
            if total:
                print(f"  {label:<52}{total / requests * 1e6:>9.1f} us")
        print()
        stats.sort_stats("tottime").print_stats(args.top)


def _matching(stats: pstats.Stats, suffix: str, name: str) -> list[tuple[int, float]]:
    found = []
    for (filename, _, function), (_, calls, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if function == name and filename.endswith(suffix):
            found.append((calls, cumulative))
    return found


def _calls(stats: pstats.Stats, suffix: str, name: str) -> int:
    return max((calls for calls, _ in _matching(stats, suffix, name)), default=0)


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    # Overrides of one name along the MRO nest; the outermost has the largest total.
    return max((cumulative for _, cumulative in _matching(stats, suffix, name)), default=0.0)


if __name__ == "__main__":
    main()
