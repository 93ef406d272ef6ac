"""``serve()``'s logging defaults, in real processes: a script calls ``serve()`` the way an
application's ``main`` would, a real client sends a request, SIGTERM stops it, and
its stderr is read.

With no logging configured, Tornado's pretty logging is turned on (the "serving on"
line and 2xx access lines appear); ``tornado.options``' ``--logging`` sets the level
or turns it off; logging the application configured itself is left as it is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.proc_support import ROOT, request
from tests.servers import _wait_for_port, free_port

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

SCRIPT = textwrap.dedent(
    """
    import logging
    import sys

    import tornado.options
    import tornado.web

    from tornado_jsonservlet import serve


    class Hello(tornado.web.RequestHandler):
        def get(self):
            self.write("hello")


    port, mode = int(sys.argv[1]), sys.argv[2]
    if mode == "basicConfig":
        logging.basicConfig(level=logging.INFO, format="APP %(levelname)s %(name)s %(message)s")
    elif mode.startswith("--"):
        tornado.options.parse_command_line([sys.argv[0], mode])
    serve(lambda: tornado.web.Application([("/hello", Hello)]), port, processes=int(sys.argv[3]))
    """
)


def run_server(tmp_path: Path, mode: str, processes: int = 1) -> str:
    """Start the script, GET /hello, SIGTERM it; its stderr."""
    script = tmp_path / "app.py"
    script.write_text(SCRIPT, encoding="utf-8")
    port = free_port()
    log = tmp_path / "stderr.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), str(port), mode, str(processes)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            _wait_for_port(port, process, "serve() script", log)
            reply = request(port, "GET", "/hello")
            assert reply.status == 200, reply
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return log.read_text(errors="replace")


def test_no_logging_configured_gives_tornado_pretty_logging(tmp_path: Path):
    output = run_server(tmp_path, "default")
    # Tornado's LogFormatter: "[I 261204 21:30:00 processes:140] ..."
    serving = re.search(
        r"^\[I \d{6} [\d:]+ \w+:\d+\] process \(pid \d+\) serving on (\S+)", output, re.M
    )
    assert serving, output
    assert serving.group(1).startswith("http://127.0.0.1:"), output
    assert re.search(r"^\[I [^]]+\] 200 GET /hello ", output, re.M), output
    assert "ERROR" not in output, output
    assert "Traceback" not in output, output


def test_several_processes_each_say_where_they_listen(tmp_path: Path):
    output = run_server(tmp_path, "default", processes=2)
    assert (
        len(re.findall(r"worker \d \(pid \d+\) serving on http://127\.0\.0\.1:\d+/", output)) == 2
    )
    assert re.search(r"\] 200 GET /hello ", output), output
    assert "ERROR" not in output, output
    assert "Traceback" not in output, output


def test_configured_logging_is_left_untouched(tmp_path: Path):
    output = run_server(tmp_path, "basicConfig")
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, output
    # Every line is the application's format: no second handler was added.
    assert all(line.startswith("APP ") for line in lines), output
    assert any("serving on http://127.0.0.1:" in line for line in lines), output
    assert any("200 GET /hello" in line for line in lines), output


def test_logging_option_sets_the_level(tmp_path: Path):
    output = run_server(tmp_path, "--logging=warning")
    assert "serving on" not in output, output
    assert "200 GET /hello" not in output, output


def test_logging_none_keeps_it_off(tmp_path: Path):
    assert run_server(tmp_path, "--logging=none") == ""


def run_demo(tmp_path: Path, *args: str) -> str:
    """Start demo_server.py, GET /api/v1/echo/1, SIGTERM it; its stderr."""
    port = free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "demo_server.py"), f"--port={port}", *args],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            _wait_for_port(port, process, "demo_server.py", log)
            assert request(port, "GET", "/api/v1/echo/1").status == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return log.read_text(errors="replace")


def test_demo_says_where_it_listens_and_logs_access(tmp_path: Path):
    output = run_demo(tmp_path)
    assert re.search(r"^\[I [^]]+\] listening on http://127\.0\.0\.1:\d+/", output, re.M), output
    assert re.search(r"^\[I [^]]+\] process \(pid \d+\) serving on http://", output, re.M), output
    assert re.search(r"^\[I [^]]+\] 200 GET /api/v1/echo/1 ", output, re.M), output


def test_demo_logging_none_is_silent(tmp_path: Path):
    assert run_demo(tmp_path, "--logging=none") == ""
