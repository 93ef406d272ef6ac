"""``demo_server.py --processes=N --shutdown-grace=S --debug``, run as the README says."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.proc_support import ROOT, request
from tests.servers import free_port
from tests.support import wait_until_sync

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def wait_for(path: Path, pattern: str, count: int, proc: subprocess.Popen[bytes]) -> list[str]:
    """Wait until ``pattern`` is in the log ``count`` times (the process still running)."""

    def logged() -> bool:
        assert proc.poll() is None, path.read_text()
        return len(re.findall(pattern, path.read_text(errors="replace"))) >= count

    wait_until_sync(logged, what=f"{pattern!r} x{count} in {path.name}", timeout=15)
    return re.findall(pattern, path.read_text(errors="replace"))


def test_demo_runs_several_workers_and_shuts_down_gracefully(tmp_path: Path):
    port = free_port()
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log_file:
        demo = subprocess.Popen(
            [
                sys.executable,
                "demo_server.py",
                f"--port={port}",
                "--processes=2",
                "--shutdown-grace=1",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            pids = {int(p) for p in wait_for(log_path, r"\(pid (\d+)\) serving", 2, demo)}
            assert len(pids) == 2
            with ThreadPoolExecutor(4) as pool:
                slow = pool.submit(request, port, "GET", "/api/v1/slow?delay=20")
                assert request(port, "GET", "/?delay=0").body == b"ok!\n"
                time.sleep(0.5)  # the slow request is in flight
                os.kill(demo.pid, signal.SIGTERM)
                reply = slow.result(timeout=20)
            assert reply.status == 503
            assert json.loads(reply.body)["errcode"] == "SHUTTING_DOWN"
            assert demo.wait(timeout=20) == 0
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait(timeout=10)
    log = log_path.read_text()
    assert "slow: clean up" in log
    assert "slow: work done" not in log
    assert re.search(r"\[W [^\]]*\] 503 GET /api/v1/slow\?delay=20", log), log
    assert "[E " not in log, log
    assert "Traceback" not in log, log


def test_debug_mode_needs_a_single_process():
    result = subprocess.run(
        [sys.executable, "demo_server.py", f"--port={free_port()}", "--debug", "--processes=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--debug needs --processes=1" in result.stderr


def test_help_lists_the_production_options():
    result = subprocess.run(
        [sys.executable, "demo_server.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    for option in ("--processes", "--debug", "--shutdown-grace", "--port", "--address"):
        assert option in result.stdout + result.stderr


def _demo_under_group_sigterm(tmp_path: Path, how: str) -> int:
    port = free_port()
    tmp_path.mkdir()
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log_file:
        demo = subprocess.Popen(
            [sys.executable, "demo_server.py", f"--port={port}", "--processes=2"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            pids = {int(p) for p in wait_for(log_path, r"\(pid (\d+)\) serving", 2, demo)}
            assert request(port, "GET", "/?delay=0").body == b"ok!\n"
            for _ in range(2 if how == "group-twice" else 1):
                for pid in (demo.pid, *pids):
                    os.kill(pid, signal.SIGTERM)
            status = demo.wait(timeout=20)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait(timeout=10)
    log = log_path.read_text()
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
    assert "[E " not in log, log
    return status


@pytest.mark.parametrize("how", ["group", "group-twice"])
def test_demo_exits_0_when_every_process_gets_sigterm(tmp_path: Path, how: str):
    # systemd's default stop: SIGTERM to the parent and every worker at once. The
    # race is between processes: three runs.
    statuses = [_demo_under_group_sigterm(tmp_path / str(run), how) for run in range(3)]
    print(f"demo_server.py --processes=2, SIGTERM to the group ({how}): exit {statuses}")
    assert statuses == [0, 0, 0]


def _open_stream(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def _read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_open_sse_streams_end_at_once_on_group_sigterm(tmp_path: Path):
    # The demo's counter streams never end by themselves: the shutdown must end them
    # cleanly at once rather than hold them for the grace period and log a 503.
    port = free_port()
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log_file:
        demo = subprocess.Popen(
            [
                sys.executable,
                "demo_server.py",
                f"--port={port}",
                "--processes=2",
                "--shutdown-grace=10",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        streams: list[socket.socket] = []
        try:
            pids = {int(p) for p in wait_for(log_path, r"\(pid (\d+)\) serving", 2, demo)}
            streams = [_open_stream(port, "/api/v1/events/counter?every=0.05") for _ in range(4)]
            received = [_read_until(sock, b"id: 6\n") for sock in streams]
            began = time.monotonic()
            for pid in (demo.pid, *pids):
                os.kill(pid, signal.SIGTERM)
            status = demo.wait(timeout=30)
            took = time.monotonic() - began
            endings = [
                _read_until(sock, b"0\r\n\r\n", data) for sock, data in zip(streams, received)
            ]
        finally:
            for sock in streams:
                sock.close()
            if demo.poll() is None:
                demo.kill()
                demo.wait(timeout=10)
    log = log_path.read_text()
    print(f"demo, 4 SSE streams open, SIGTERM to the group: exit {status} after {took:.2f}s")
    assert status == 0, log
    assert took < 3, log  # not the 10 s grace period
    for body in endings:
        assert body.startswith(b"HTTP/1.1 200 ")
        assert body.endswith(b"0\r\n\r\n")  # the stream's clean end
    assert len(re.findall(r"\] 200 GET /api/v1/events/counter", log)) == 4, log
    assert " 503 " not in log
    assert "[E " not in log, log
