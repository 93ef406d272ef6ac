"""Plumbing for tests that run ``tests/production_app.py`` as real worker processes."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests.support import wait_until_sync

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Reply:
    status: int  # 0: no HTTP answer at all
    headers: dict[str, str]
    body: bytes
    error: str = ""

    def json(self) -> object:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    headers: Optional[dict[str, str]] = None,
    timeout: float = 20.0,
) -> Reply:
    """One request on its own connection; never raises for network trouble."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    except (OSError, http.client.HTTPException) as error:
        return Reply(0, {}, b"", f"{type(error).__name__}: {error}")
    finally:
        conn.close()


class AppProcess:
    """``python -m tests.production_app`` with its log in a file."""

    def __init__(self, log_path: Path, port: int, *args: str, env: Optional[dict[str, str]] = None):
        self.port = port
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.production_app", f"--port={port}", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[str]:
        """Wait until ``pattern`` is logged ``count`` times; the matches."""

        def logged() -> bool:
            if len(re.findall(pattern, self.log, re.MULTILINE)) >= count:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}):\n{self.log}")
            return False

        try:
            wait_until_sync(
                logged, what=f"{pattern!r} x{count} logged", timeout=timeout, interval=0.02
            )
        except AssertionError as error:
            if "timed out" not in str(error):
                raise
            raise AssertionError(f"{error}:\n{self.log}") from None
        return re.findall(pattern, self.log, re.MULTILINE)

    def worker_pids(self, workers: int) -> set[int]:
        found = self.wait_for(r"worker \d+ \(pid (\d+)\) serving", workers)
        return {int(pid) for pid in found}

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._log_file.close()
            self._kill_leftover_workers()

    def _kill_leftover_workers(self) -> None:
        """A test that failed half-way must not leave workers behind."""
        for pid in {int(p) for p in re.findall(r"\(pid (\d+)\) serving", self.log)}:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if b"tests.production_app" not in cmdline.read():
                        continue
                os.kill(pid, 9)
            except OSError:
                pass

    def assert_clean_log(self) -> None:
        log = self.log
        assert "ERROR" not in log, log
        assert "Traceback" not in log, log
