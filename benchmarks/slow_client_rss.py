"""Peak server memory while one slow client reads a big JSON response.

Usage: ``python benchmarks/slow_client_rss.py [--mb 50] [--rate 1]``
or ``python benchmarks/slow_client_rss.py --stalled 3 --mb 14``

``--stalled N``: N clients each request ``/fresh?mb=M`` (a document built for that
request) with a 4 KB receive window and then read nothing. Once the server's RSS
stops growing (sampled every 200 ms; at most 20 s, well within the default
``write_timeout`` of 30 s), reports the RSS above the baseline per stalled
reader. A server that drops the document once it is encoded holds about the
encoded body per reader; one that keeps it holds several times that.

For bare Tornado and for the toolkit in turn: start the server with the document
already built (so the Python objects are in the baseline), fetch ``/big?mb=N`` reading
at ``--rate`` MB/s, and sample the server's RSS every 50 ms. Reports the peak above the
baseline, relative to the encoded body size. The floor for any server that encodes the
body before sending it (so that an encoding error can still become a clean 500) is
1x the body; Tornado's ``self.write`` holds the encoded string and the write buffer.
Binds 127.0.0.1 only; bounded by the body size and rate.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(kind: str, mb: int, rate: float) -> tuple[int, int, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(HERE / "apps.py"), kind, str(port), str(mb)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        time.sleep(0.5)
        baseline = rss_kb(server.pid)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kb(server.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        received = 0
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(
                f"GET /big?mb={mb} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            started = time.monotonic()
            deadline = started + mb / rate * 3 + 60
            while time.monotonic() < deadline:
                chunk = sock.recv(64 * 1024)
                if not chunk:
                    break
                received += len(chunk)
                ahead = received / (rate * 1_000_000) - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        done.set()
        sampler.join()
        return baseline, peak, received
    finally:
        server.terminate()
        server.wait(timeout=10)


def measure_stalled(kind: str, mb: int, readers: int) -> tuple[int, int]:
    """(baseline RSS, settled RSS) in KB with ``readers`` clients that stopped reading."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(HERE / "apps.py"), kind, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    sockets: list[socket.socket] = []
    try:
        assert server.stdout is not None
        server.stdout.readline()
        time.sleep(0.5)
        baseline = rss_kb(server.pid)
        for _ in range(readers):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET /fresh?mb={mb} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sockets.append(sock)
        settled, last, stable_since = baseline, -1, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.2)
            settled = rss_kb(server.pid)
            if abs(settled - last) > 1024:
                last, stable_since = settled, time.monotonic()
            elif settled > baseline and time.monotonic() - stable_since >= 2.0:
                break
        return baseline, settled
    finally:
        for sock in sockets:
            sock.close()
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1.0, help="client read rate, MB/s")
    parser.add_argument("--stalled", type=int, default=0, help="clients that stop reading")
    args = parser.parse_args()
    if args.stalled:
        for kind in ("bare", "toolkit"):
            baseline, settled = measure_stalled(kind, args.mb, args.stalled)
            per_reader = (settled - baseline) / 1024 / args.stalled
            print(
                f"{kind:<8} {args.stalled} stalled readers of a {args.mb} MB document: "
                f"baseline RSS {baseline / 1024:.0f} MB, settled {settled / 1024:.0f} MB: "
                f"{per_reader:.0f} MB per stalled reader"
            )
        return
    for kind in ("bare", "toolkit"):
        baseline, peak, received = measure(kind, args.mb, args.rate)
        extra = (peak - baseline) * 1024
        print(
            f"{kind:<8} body {received / 1e6:.1f} MB, baseline RSS {baseline / 1024:.0f} MB, "
            f"peak {peak / 1024:.0f} MB: +{extra / 1e6:.1f} MB "
            f"= {extra / max(received, 1):.2f}x the body"
        )


if __name__ == "__main__":
    main()
