"""A departed client cancels a running PostgreSQL query, on a real server.

asyncpg cancels the query on the server when the task awaiting it is cancelled;
``CancelOnDisconnectMixin`` makes a departed client cancel that task. The server is
a real PostgreSQL (Debian's ``postgresql`` package) started in a temp dir on a
loopback port; the query's presence is read from ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import tornado.web

from tests.support import access_statuses, nothing_happens_within, wait_until
from tornado_jsonservlet import CancelOnDisconnectMixin, uncancellable
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

try:
    import asyncpg
except ImportError:  # pragma: no cover - the test extra installs it
    asyncpg = None

ACTIVE_SLEEPS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(%' AND pid <> pg_backend_pid()
"""


class Shared:
    """What the handlers use (the pool) and report (what happened), per test."""

    pool: Any = None

    def __init__(self) -> None:
        self.events: list[str] = []
        self.finished = asyncio.Event()


class ReportQuery(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    """A heavy report: ``SELECT pg_sleep(...)`` on a pooled connection."""

    def initialize(self, shared: Shared) -> None:
        self.shared = shared

    async def get(self) -> None:
        seconds = float(self.get_argument("seconds", "10"))
        try:
            async with self.shared.pool.acquire() as connection:
                await connection.execute(f"SELECT pg_sleep({seconds})")
            self.shared.events.append("query completed")
            self.write("report")
        except asyncio.CancelledError:
            self.shared.events.append("cancelled")
            raise

    def on_finish(self) -> None:
        self.shared.events.append(f"status {self.get_status()}")
        self.shared.finished.set()


class UncancellableReportQuery(ReportQuery):
    @uncancellable
    async def get(self) -> None:
        await super().get()


@pytest.fixture
def shared(io_loop: Any) -> Shared:
    return Shared()  # after io_loop: on Python 3.9 an Event binds to the current loop


@pytest.fixture
def app(shared: Shared) -> tornado.web.Application:
    return tornado.web.Application(
        [
            ("/report", ReportQuery, {"shared": shared}),
            ("/report-uncancellable", UncancellableReportQuery, {"shared": shared}),
        ]
    )


async def active_sleeps(monitor: Any) -> int:
    count: int = await monitor.fetchval(ACTIVE_SLEEPS)
    return count


async def active_sleeps_are(monitor: Any, wanted: int) -> bool:
    return await active_sleeps(monitor) == wanted


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_departed_client_cancels_the_query_on_the_server(
    postgres_dsn, shared, port, caplog, how
):
    shared.pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
    monitor = await asyncpg.connect(postgres_dsn)
    try:
        conn = await RawHTTPConnection.open(port)
        await conn.send_request("GET", "/report?seconds=10")
        await wait_until(
            lambda: active_sleeps_are(monitor, 1), what="the query running", interval=0.002
        )
        conn.close(how)
        gone_after = await wait_until(
            lambda: active_sleeps_are(monitor, 0), what="the query gone", interval=0.002
        )
        assert gone_after < 0.1, f"the query was still running {gone_after * 1000:.0f} ms later"
        await asyncio.wait_for(shared.finished.wait(), 5)
        assert shared.events == ["cancelled", "status 499"]
        # The pool's only connection is back and usable at once.
        started = time.monotonic()
        assert await asyncio.wait_for(shared.pool.fetchval("SELECT 1"), 2) == 1
        assert time.monotonic() - started < 0.1
        assert access_statuses(caplog) == [499]
    finally:
        await monitor.close()
        await shared.pool.close()


async def test_uncancellable_query_runs_on_for_nobody(postgres_dsn, shared, port, caplog):
    """The control: without cancellation the query keeps the server busy."""
    shared.pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
    monitor = await asyncpg.connect(postgres_dsn)
    try:
        conn = await RawHTTPConnection.open(port)
        await conn.send_request("GET", "/report-uncancellable?seconds=1")
        await wait_until(
            lambda: active_sleeps_are(monitor, 1), what="the query running", interval=0.002
        )
        conn.close("rst")
        await nothing_happens_within(0.3, what="the uncancellable query ending early")
        assert await active_sleeps(monitor) == 1
        await asyncio.wait_for(shared.finished.wait(), 5)
        assert shared.events == ["query completed", "status 499"]
    finally:
        await monitor.close()
        await shared.pool.close()
