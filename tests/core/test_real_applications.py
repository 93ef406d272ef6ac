"""What real applications do with their base handlers, with the toolkit mixed in.

Two behaviours that applications notice: their ``finish()`` override must run
when a client leaves (they clean up there), and one client leaving must not
change another client's answer when both await the same in-flight work.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import pytest
import tornado.web

from tests.support import Probe, access_statuses, wait_until
from tornado_jsonservlet import CancelOnDisconnectMixin, Coalescer, RequestIdMixin
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test


class AppBase(tornado.web.RequestHandler):
    """An application's base class, below the mixins: cleans up in ``finish()``."""

    probe: Probe

    def initialize(self, probe: Probe, shared: Optional[dict[str, Any]] = None) -> None:
        self.probe = probe
        self.shared = shared

    def finish(self, chunk: Any = None) -> Any:
        self.probe.hit("base-finish")
        return super().finish(chunk)

    def on_finish(self) -> None:
        self.probe.hit("on_finish")
        self.probe.values["status"] = self.get_status()
        self.probe.finished.set()


class SlowHandler(RequestIdMixin, CancelOnDisconnectMixin, AppBase):
    """An override above the mixins too, as a subclass of the base would have."""

    def finish(self, chunk: Any = None) -> Any:
        self.probe.hit("top-finish")
        self.probe.values["gone-in-finish"] = self.client_disconnected
        self.write("quiet after a disconnect")  # must not raise
        return super().finish(chunk)

    async def get(self) -> None:
        self.probe.suspended.set()
        await asyncio.sleep(30)
        self.write("late")


class SharedTaskHandler(CancelOnDisconnectMixin, AppBase):
    """Two requests await one task, as a coalescing cache does by hand."""

    async def get(self) -> None:
        assert self.shared is not None
        task = self.shared.get("task")
        if task is None:
            task = self.shared["task"] = asyncio.ensure_future(self.shared["gate"].wait())
        self.probe.hit("waiting")
        await task
        self.write({"ok": True})


reports: Coalescer[str, str] = Coalescer()


class CoalescedHandler(CancelOnDisconnectMixin, AppBase):
    async def get(self) -> None:
        assert self.shared is not None
        gate: asyncio.Event = self.shared["gate"]

        async def build() -> str:
            self.probe.hit("work-started")
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.probe.hit("work-cancelled")
                raise
            return "report"

        self.probe.hit("waiting")
        self.write({"report": await reports.run("r", build)})


class DeadlineHandler(SlowHandler):
    request_deadline = 0.05


@pytest.fixture
def shared() -> dict[str, Any]:
    return {}


@pytest.fixture
def app(probe: Probe, shared: dict[str, Any]) -> tornado.web.Application:
    kwargs = {"probe": probe, "shared": shared}
    return tornado.web.Application(
        [
            ("/slow", SlowHandler, {"probe": probe}),
            ("/deadline", DeadlineHandler, {"probe": probe}),
            ("/shared", SharedTaskHandler, kwargs),
            ("/coalesced", CoalescedHandler, kwargs),
        ]
    )


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_every_finish_override_runs_once_for_a_departed_client(port, probe, caplog, how):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", "/slow")
    await probe.wait_suspended()
    conn.close(how)
    await probe.wait_finished()
    assert probe.count("top-finish") == 1
    assert probe.count("base-finish") == 1
    assert probe.count("on_finish") == 1
    assert probe.values["gone-in-finish"] is True
    assert probe.values["status"] == 499
    assert access_statuses(caplog) == [499]


async def test_a_client_that_stays_keeps_its_answer_when_another_leaves(
    port, probe, shared, caplog, http_client, base_url
):
    shared["gate"] = asyncio.Event()
    leaver = await RawHTTPConnection.open(port)
    await leaver.send_request("GET", "/shared")
    await wait_until(lambda: probe.count("waiting") == 1, what="first request waiting")
    stayer = asyncio.ensure_future(http_client.fetch(f"{base_url}/shared", raise_error=False))
    await wait_until(lambda: probe.count("waiting") == 2, what="second request waiting")
    leaver.close("rst")
    await wait_until(lambda: 499 in access_statuses(caplog), what="the departed request's 499")
    assert not shared["task"].cancelled()
    shared["gate"].set()
    response = await stayer
    assert response.code == 200
    assert response.body == b'{"ok": true}'
    assert sorted(access_statuses(caplog)) == [200, 499]


async def test_coalesced_work_runs_once_and_stops_when_its_last_waiter_leaves(
    port, probe, shared, caplog, http_client, base_url
):
    shared["gate"] = asyncio.Event()
    first = await RawHTTPConnection.open(port)
    await first.send_request("GET", "/coalesced")
    await wait_until(lambda: reports.in_flight("r") == 1, what="first waiter")
    second = await RawHTTPConnection.open(port)
    await second.send_request("GET", "/coalesced")
    await wait_until(lambda: reports.in_flight("r") == 2, what="second waiter")
    assert probe.count("work-started") == 1
    first.close("rst")
    await wait_until(lambda: reports.in_flight("r") == 1, what="first waiter gone")
    assert probe.count("work-cancelled") == 0
    second.close("fin")
    await wait_until(lambda: probe.count("work-cancelled") == 1, what="work cancelled")
    assert access_statuses(caplog) == [499, 499]
    # Afterwards the work starts afresh, and a client that stays gets its answer.
    shared["gate"].set()
    response = await http_client.fetch(f"{base_url}/coalesced")
    assert response.body == b'{"report": "report"}'
    assert probe.count("work-started") == 2


async def test_every_finish_override_runs_once_for_a_deadline(probe, caplog, http_client, base_url):
    response = await http_client.fetch(f"{base_url}/deadline", raise_error=False)
    assert response.code == 504
    assert b'"errcode":"DEADLINE_EXCEEDED"' in response.body
    assert probe.count("top-finish") == 1
    assert probe.count("base-finish") == 1
    assert probe.count("on_finish") == 1
    assert probe.values["gone-in-finish"] is False
    assert access_statuses(caplog) == [504]
