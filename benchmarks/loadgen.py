"""Shared plumbing for compare.py and peers.py: CPU pinning, servers, wrk, P3, disconnects.

Servers run on one core (``os.sched_setaffinity`` in the child before it starts), the
load generators (this process, and the wrk processes it starts, which inherit its
affinity) on the other, so that a server never competes with its own load for CPU.
Every wrk run is bounded by its duration; every server binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional


def cpus() -> tuple[int, int]:
    """(server CPU, client CPU): the lowest and the highest CPU this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


SERVER_CPU, CLIENT_CPU = cpus()


def pin_this_process_to_client_cpu() -> None:
    """Pin the orchestrator to the client CPU; the wrk processes it starts inherit it."""
    if SERVER_CPU == CLIENT_CPU:
        print("warning: one CPU only; servers and load share it", file=sys.stderr)
    os.sched_setaffinity(0, {CLIENT_CPU})


def _on_server_cpu() -> None:
    os.sched_setaffinity(0, {SERVER_CPU})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    port: int
    info: str  # what the server said when ready (e.g. the JSON encoder)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(name: str, argv: Sequence[str], timeout: float = 30.0) -> Server:
    """Run ``argv + [port]`` pinned to the server CPU; it prints ``ready ...`` when up."""
    port = free_port()
    proc = subprocess.Popen(
        [*argv, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_on_server_cpu,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while not line.startswith("ready"):
        line = proc.stdout.readline()
        if not line and (proc.poll() is not None or time.monotonic() > deadline):
            raise RuntimeError(f"{name} did not start")
    return Server(name, proc, port, line.split(maxsplit=1)[1].strip() if " " in line else "")


def wrk(url: str, *, connections: int, duration: float, latency: bool = False) -> dict[str, float]:
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    seconds = max(1, round(duration))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    if latency:
        cmd.append("--latency")
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    rps = requests_per_second(out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or errors is not None:
        raise RuntimeError(f"wrk against {url} failed:\n{out}")
    result = {"rps": rps}
    total = re.search(r"(\d+) requests in", out)
    if total is not None:
        result["requests"] = float(total.group(1))
    if latency:
        p99 = re.search(r"99%\s+([\d.]+\w+)", out)
        assert p99 is not None, out
        result["p99_ms"] = _ms(p99.group(1))
    return result


def requests_per_second(wrk_output: str) -> Optional[float]:
    """The ``Requests/sec`` figure of a wrk run's output, if it printed one."""
    match = re.search(r"Requests/sec:\s+([\d.]+)", wrk_output)
    return float(match.group(1)) if match else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_with_cpu(url: str, pid: int, *, connections: int, duration: float) -> dict[str, float]:
    """:func:`wrk`, plus the server's CPU microseconds per request.

    CPU per request moves much less than requests/s when other work shares the
    machine, so it is the steadier figure for comparing two servers' per-request
    cost (at saturation, requests/s is about 1 / CPU per request).
    """
    before = cpu_seconds(pid)
    result = wrk(url, connections=connections, duration=duration)
    used = cpu_seconds(pid) - before
    result["cpu_us"] = used / max(result.get("requests", 0.0), 1.0) * 1e6
    return result


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(\w+)", text)
    assert match is not None, text
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def p99_under_load(
    base: str,
    duration: float,
    *,
    small: str = "/small",
    big: str = "/big",
    background: Optional[dict[str, float]] = None,
) -> tuple[float, float]:
    """(unloaded p99, p99 while two clients fetch 1 MB responses) of ``small``, in ms.

    ``background``, if given, receives ``rps``: the big responses per second the two
    clients got meanwhile (the price a server pays for keeping small requests fast).
    """
    time.sleep(1.0)  # let responses still in flight from the previous run drain
    unloaded = wrk(base + small, connections=1, duration=duration, latency=True)["p99_ms"]
    seconds = max(1, round(duration))
    loader = subprocess.Popen(
        ["wrk", "-t1", "-c2", f"-d{seconds + 2}s", base + big],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        loaded = wrk(base + small, connections=1, duration=duration, latency=True)["p99_ms"]
    finally:
        out, _ = loader.communicate(timeout=seconds + 30)
    rps = requests_per_second(out)
    if background is not None and rps is not None:
        background["rps"] = rps
    return unloaded, loaded


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def disconnect_latencies(port: int, count: int, *, wait: str = "/wait") -> Optional[list[float]]:
    """Close -> CancelledError in the handler, in ms, for ``count`` disconnects.

    The server's ``{wait}/{ident}`` sends its headers and a first byte, then waits;
    it stamps ``time.monotonic()`` when the cancellation arrives and reports the
    stamps at ``/stats``. Both sides use the same system-wide monotonic clock.
    Returns None when the framework never cancelled the handler.
    """
    return interleaved_disconnect_latencies({"server": port}, count, wait=wait)["server"]


def interleaved_disconnect_latencies(
    ports: dict[str, int], count: int, *, wait: str = "/wait"
) -> dict[str, Optional[list[float]]]:
    """:func:`disconnect_latencies` for several servers, taking turns one disconnect
    at a time, so that drift on the machine reaches every server alike."""
    closed_at = leave_after_headers(ports, count, wait=wait)
    time.sleep(0.3)
    results: dict[str, Optional[list[float]]] = {}
    for name, port in ports.items():
        cancelled_at = _cancellation_stamps(port)
        results[name] = (
            sorted(
                (cancelled_at[i] - closed) * 1000
                for i, closed in closed_at[name].items()
                if i in cancelled_at
            )
            if cancelled_at
            else None
        )
    return results


def leave_after_headers(
    ports: dict[str, int], count: int, *, wait: str = "/wait"
) -> dict[str, dict[str, float]]:
    """``count`` clients per server, taking turns: each requests ``{wait}/r{index}``,
    reads the headers, and closes (FIN and RST alternating). Returns, per server,
    ``time.monotonic()`` at each close, by ident."""
    closed_at: dict[str, dict[str, float]] = {name: {} for name in ports}
    for index in range(count):
        ident = f"r{index}"
        for name, port in ports.items():
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(f"GET {wait}/{ident} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
            if index % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            closed_at[name][ident] = time.monotonic()
            sock.close()
            time.sleep(0.005)
    return closed_at


def _cancellation_stamps(port: int) -> dict[str, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    body = raw.partition(b"\r\n\r\n")[2]
    if b"\r\n" in body.split(b"{", 1)[0]:  # chunked: strip the size line(s)
        body = b"{" + body.split(b"{", 1)[1].rsplit(b"}", 1)[0] + b"}"
    stamps: dict[str, float] = json.loads(body)
    return stamps


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]
