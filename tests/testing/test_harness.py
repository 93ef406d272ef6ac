"""The disconnect-at-every-await harness, applied to the demo API and the test handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import tornado.web

import demo_server
from tests.core.test_cancellation import (
    NestedHandler,
    NoSuperCloseHandler,
    SlowHandler,
    SlowPrepareHandler,
    SpawnHandler,
    TimerHandler,
    UploadHandler,
)
from tests.support import Probe
from tornado_jsonservlet import CancelOnDisconnectMixin, JsonResponseMixin, uncancellable
from tornado_jsonservlet.testing import disconnect_at_every_await

# Each case re-runs its request once per await point: allow for a loaded machine.
pytestmark = pytest.mark.gen_test(timeout=30)

#: Await points covered by this module, for the record (printed with -s).
COVERED: dict[str, int] = {}


class ManyAwaits(CancelOnDisconnectMixin, JsonResponseMixin, tornado.web.RequestHandler):
    async def prepare(self) -> None:
        await asyncio.sleep(0.005)

    async def get(self) -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0.005)
        self.write("partial ")
        await self.flush()
        await asyncio.sleep(0.005)
        await self.write_json({"items": list(range(30_000))})


class QuickPrepare(ManyAwaits):
    async def prepare(self) -> None:
        pass


class NotCancellable(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    @uncancellable
    async def get(self) -> None:
        await asyncio.sleep(0.01)
        self.write("done")


class NeverAwaits(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("sync")


@pytest.fixture
def app() -> tornado.web.Application:
    probe = Probe()
    app = demo_server.make_app()
    rules: list[Any] = [
        (r"/many", ManyAwaits),
        (r"/quick", QuickPrepare),
        (r"/uncancellable", NotCancellable),
        (r"/sync", NeverAwaits),
        (r"/t/slow", SlowHandler, {"probe": probe}),
        (r"/t/prepare", SlowPrepareHandler, {"probe": probe}),
        (r"/t/timer", TimerHandler, {"probe": probe}),
        (r"/t/spawn", SpawnHandler, {"probe": probe}),
        (r"/t/nosuper", NoSuperCloseHandler, {"probe": probe}),
        (r"/t/nested", NestedHandler, {"probe": probe}),
        (r"/t/upload", UploadHandler, {"probe": probe}),
    ]
    app.add_handlers(r".*$", rules)  # checked before the demo's own rules
    return app


CASES = [
    ("GET", "/?delay=0.02", {}),
    ("GET", "/api/v1/slow?delay=0.02", {}),
    ("GET", "/api/v1/big?items=6000", {}),
    ("GET", "/many", {}),
    ("GET", "/quick", {}),
    ("GET", "/t/slow?wait=0.02", {}),
    ("GET", "/t/timer?wait=0.02", {}),
    ("GET", "/t/spawn?wait=0.02", {}),
    ("GET", "/t/nosuper?wait=0.02", {}),
    ("GET", "/t/nested?wait=0.02", {}),
    ("GET", "/t/prepare?wait=0.02", {}),
    ("POST", "/t/upload?wait=0.02", {"body": "x" * 5000}),
]


@pytest.mark.parametrize(("method", "path", "options"), CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_every_await_point_is_a_clean_cancellation(
    http_server, http_port, method, path, options, how
):
    report = await disconnect_at_every_await(http_port, method, path, how=how, **options)
    assert report.covered >= 1
    assert all(result.interrupted for result in report.points)
    COVERED[f"{how} {method} {path}"] = report.covered


async def test_plugin_fixture_runs_the_harness(disconnect_harness):
    report = await disconnect_harness("GET", "/many")
    assert report.covered >= 6  # prepare, sleep(0), sleep, flush, sleep, lane and writes
    assert report.normal_status == 200


async def test_harness_fails_for_an_uncancellable_handler(http_server, http_port):
    with pytest.raises(AssertionError, match="resumed normally after the disconnect"):
        await disconnect_at_every_await(http_port, "GET", "/uncancellable")


async def test_harness_fails_when_there_is_nothing_to_cover(http_server, http_port):
    with pytest.raises(AssertionError, match="never awaited"):
        await disconnect_at_every_await(http_port, "GET", "/sync")


async def test_disconnecting_client_fixture(disconnecting_client, http_server):
    conn = await disconnecting_client()
    await conn.send_request("GET", "/sync", headers={"Connection": "close"})
    assert (await conn.read_until_close()).endswith(b"sync")


def test_total_await_points_covered():
    # Runs after the parametrized cases in this module (pytest keeps file order).
    total = sum(COVERED.values())
    print(f"\nawait points covered by the harness: {total} over {len(COVERED)} requests")
    assert total >= len(CASES) * 2
