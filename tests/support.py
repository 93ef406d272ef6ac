"""Shared test plumbing: a probe that handlers report to, log helpers, and waiting.

Waiting: a test never sleeps a fixed time to let something happen. It waits for
the event itself with :func:`wait_until` (or :func:`wait_until_sync` in thread or
process code), naming it with ``what=``. The one sanctioned sleep is
:func:`nothing_happens_within`: a deliberate wait in which the test expects that
nothing (more) happens, followed by the assertion that nothing did.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Optional, Union

import pytest
import tornado.web

from tornado_jsonservlet import CancelOnDisconnectMixin
from tornado_jsonservlet.testing import CloseHow, RawHTTPConnection


class Probe:
    """What a test handler did, in order, plus events a test can wait for."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.values: dict[str, Any] = {}
        self._suspended: Optional[asyncio.Event] = None
        self._finished: Optional[asyncio.Event] = None

    # The events are created on first use, which is always inside the test's
    # running loop. Python 3.9 binds an ``asyncio.Event`` to the loop current at
    # construction, and a fixture may build the probe before that loop exists.
    @property
    def suspended(self) -> asyncio.Event:
        if self._suspended is None:
            self._suspended = asyncio.Event()
        return self._suspended

    @property
    def finished(self) -> asyncio.Event:
        if self._finished is None:
            self._finished = asyncio.Event()
        return self._finished

    def hit(self, name: str) -> None:
        self.events.append(name)

    def count(self, name: str) -> int:
        return Counter(self.events)[name]

    async def wait_suspended(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.suspended.wait(), timeout)

    async def wait_finished(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.finished.wait(), timeout)


class ProbeStream:
    """Life-cycle reporting for streaming test handlers, mixed in before the mixins.

    Route kwargs ``probe`` and ``broadcaster``; ``on_finish`` records the status and
    sets ``probe.finished``.
    """

    probe: Probe
    broadcaster: Any

    def initialize(self, probe: Probe, broadcaster: Any) -> None:
        self.probe = probe
        self.broadcaster = broadcaster

    def on_finish(self) -> None:
        self.probe.hit("on_finish")
        self.probe.values["status"] = self.get_status()  # type: ignore[attr-defined]
        self.probe.finished.set()


class ProbeHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    """Reports its life cycle to a :class:`Probe`."""

    probe: Probe

    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    def on_disconnect(self) -> None:
        self.probe.hit("on_disconnect")

    def on_finish(self) -> None:
        self.probe.hit("on_finish")
        self.probe.values["status"] = self.get_status()
        self.probe.finished.set()


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tornado.access"]


def access_statuses(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [int(line.split()[0]) for line in access_lines(caplog)]


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


#: The default deadline of a wait for an event. It only matters when the event
#: never comes; pass a longer one where a loaded machine may well need it.
WAIT_TIMEOUT = 5.0


async def wait_until(
    condition: Callable[[], Union[object, Awaitable[object]]],
    *,
    what: str,
    timeout: float = WAIT_TIMEOUT,
    interval: float = 0.005,
) -> float:
    """Poll ``condition()`` until it is truthy; return the seconds that took.

    ``condition`` may return an awaitable (a coroutine function: a database or
    Redis query), which is awaited. ``what`` names the event waited for; on
    timeout, ``AssertionError("timed out after {timeout}s waiting for {what}")``.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - started
        if loop.time() - started >= timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], object],
    *,
    what: str,
    timeout: float = WAIT_TIMEOUT,
    interval: float = 0.005,
) -> float:
    """:func:`wait_until` for thread and process code, which has no running loop."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started >= timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


async def nothing_happens_within(seconds: float, *, what: str) -> None:
    """A deliberate wait in which the test expects nothing to happen.

    It is the only sanctioned sleep in tests: the test asserts afterwards that
    ``what`` (say, "a second event", "an error log record") did not happen in
    ``seconds``. It is never used to wait *for* something; use :func:`wait_until`.
    """
    assert seconds > 0, what
    await asyncio.sleep(seconds)


def nothing_happens_within_sync(seconds: float, *, what: str) -> None:
    """:func:`nothing_happens_within` for thread and process code."""
    assert seconds > 0, what
    time.sleep(seconds)


async def settle(rounds: int = 5) -> None:
    """Let already-scheduled callbacks run (a handful of loop iterations).

    Not a wait for time: ``sleep(0)`` only yields to the loop, so callbacks already
    scheduled (an ``on_finish``, a task's last step) run before the test looks.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)


async def leave_while_suspended(port: int, probe: Probe, path: str, how: CloseHow = "rst") -> None:
    """Send a request, wait until the handler is suspended, then disconnect."""
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", path)
    await probe.wait_suspended()
    conn.close(how)
    await probe.wait_finished()
    await settle()


def demo_log_after_client_leaves(
    path: str, leave_after: float, how: CloseHow, *, until: tuple[str, ...] = ()
) -> str:
    """Run ``demo_server.py`` as the README does, leave ``path`` mid-request; its log.

    A real process and a plain socket: nothing of the test's own event loop is
    involved. The client closes ``leave_after`` seconds after sending (RST with
    ``how="rst"``), the scenario's own timing. The server is stopped once its log
    matches every regex of ``until`` (by default, the 499 for ``path``) and
    nothing more was logged for a moment.
    """
    from tests.servers import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "demo_server.py", f"--port={port}", "--logging=debug"],
        cwd=Path(__file__).resolve().parent.parent,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []

    def read_log() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            lines.append(line)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    patterns = [re.compile(p) for p in until or (rf" 499 GET {re.escape(path)} ",)]
    try:
        client = None

        def connected() -> bool:
            nonlocal client
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                return False
            return True

        wait_until_sync(connected, what="the demo server listening", timeout=10, interval=0.05)
        assert client is not None
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        time.sleep(leave_after)  # the scenario: the client leaves this long after sending
        if how == "rst":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        wait_until_sync(
            lambda: all(p.search("".join(lines)) for p in patterns),
            what=f"the demo server logging {[p.pattern for p in patterns]}",
            timeout=10,
        )
        nothing_happens_within_sync(0.2, what="anything logged late")
    finally:
        server.terminate()
        server.wait(timeout=10)
        reader.join(timeout=10)
        if server.stderr is not None:
            server.stderr.close()
        if client is not None:
            client.close()
    return "".join(lines)
