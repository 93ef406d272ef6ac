"""Schemathesis reads the demo's OpenAPI document and fuzzes the running demo server.

Goal (issue 21): no server error and no response that the document does not
describe. Every check runs except ``positive_data_acceptance``: msgspec refuses
``2.0`` where an integer is declared, which JSON Schema counts as an integer (the
request gets a documented 400, not a violation of the document).

The demo's /slow, /big and the event stream are left out: they answer slowly or
never end by design, which a fuzzer would only time out on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.proc_support import ROOT, request
from tests.servers import free_port
from tests.support import wait_until_sync

#: The Schemathesis releases for Python 3.9 (4.4) report a few requests as network
#: errors ("Remote end closed connection without response") that the releases for
#: newer Pythons send without trouble, and their reproduction commands get a normal
#: answer from the demo. There, network errors are counted and reported, not failed;
#: every other check (server errors, responses the document does not describe)
#: still fails the test.
TOLERATES_NETWORK_ERRORS = sys.version_info < (3, 10)

FUZZER = [
    sys.executable,
    "-c",
    "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
]


@pytest.fixture
def demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``demo_server.py`` in its own process; its port and log path."""
    port = free_port()
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "demo_server.py", f"--port={port}"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            wait_until_sync(
                lambda: request(port, "GET", "/api/v1/openapi.json").status == 200,
                what="the demo serving its document",
                timeout=20,
            )
            yield port, log_path
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_schemathesis_finds_no_server_error_and_no_violation(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, log_path = demo
    junit = tmp_path / "schemathesis.xml"
    run = subprocess.run(
        [
            *FUZZER,
            "run",
            f"http://127.0.0.1:{port}/api/v1/openapi.json",
            "--exclude-path-regex",
            "/(slow|big|events)",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "50",
            "--generation-deterministic",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    if TOLERATES_NETWORK_ERRORS and run.returncode != 0:
        errors = re.search(r"\nErrors:\n(.*?)\n\n", output, re.S)
        assert errors, output[-6000:]
        kinds = [line.strip() for line in errors.group(1).splitlines() if line.strip()]
        assert all("Network Error" in kind for kind in kinds), output[-6000:]
        print(f"Schemathesis on Python 3.9 reported: {kinds}")
    else:
        assert run.returncode == 0, output[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts, output[-6000:]
    assert counts.group(1) == counts.group(2)
    assert int(counts.group(1)) > 300
    suite = ET.parse(junit).getroot()
    failures = sum(
        int(s.get("failures", 0)) + (0 if TOLERATES_NETWORK_ERRORS else int(s.get("errors", 0)))
        for s in suite.iter("testsuite")
    )
    assert failures == 0
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    assert " 500 " not in log, log[-4000:]
