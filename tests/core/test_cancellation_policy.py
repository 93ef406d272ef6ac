"""Which requests a disconnect cancels, and how cancellations for other reasons end."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from tests.support import (
    Probe,
    ProbeHandler,
    access_statuses,
    nothing_happens_within,
    settle,
    wait_until,
)
from tornado_jsonservlet import (
    CancelReason,
    JsonErrorMixin,
    JsonServlet,
    ServletRegistry,
    cancellable,
    uncancellable,
)
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

HOW = pytest.mark.parametrize("how", ["fin", "rst"])


class SideEffectHandler(ProbeHandler):
    """A mutating request: starts a resource, then records it."""

    async def _create(self) -> None:
        try:
            self.probe.hit("resource-started")
            self.probe.suspended.set()
            await asyncio.sleep(0.2)
            self.probe.hit("resource-recorded")
            self.write({"created": True})
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise

    async def post(self) -> None:
        await self._create()

    async def put(self) -> None:
        await self._create()

    async def patch(self) -> None:
        await self._create()

    async def delete(self) -> None:
        await self._create()

    async def get(self) -> None:
        await self._create()


class OptedInPostHandler(SideEffectHandler):
    @cancellable
    async def post(self) -> None:
        await self._create()


class AllPolicyHandler(SideEffectHandler):
    cancel_policy = "all"


class NonePolicyHandler(SideEffectHandler):
    cancel_policy = "none"


class UncancellableGetHandler(SideEffectHandler):
    @uncancellable
    async def get(self) -> None:
        await self._create()


class ShieldedPostHandler(ProbeHandler):
    @cancellable
    async def post(self) -> None:
        async with self.shielded():
            self.probe.hit("resource-started")
            self.probe.suspended.set()
            await asyncio.sleep(0.2)
            self.probe.hit("resource-recorded")
        self.probe.hit("after-shield")
        await asyncio.sleep(5)


class CreateServlet(JsonServlet):
    probe: Probe

    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def on_POST(self) -> Any:
        self.probe.hit("resource-started")
        self.probe.suspended.set()
        await asyncio.sleep(0.2)
        self.probe.hit("resource-recorded")
        return 201, {"created": True}

    def on_finish(self) -> None:
        self.probe.finished.set()


class CancellableCreateServlet(CreateServlet):
    @cancellable
    async def on_POST(self) -> Any:
        return await super().on_POST()


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    registry = ServletRegistry()
    registry.register(CreateServlet, ["/servlet/create"], probe=probe)
    registry.register(CancellableCreateServlet, ["/servlet/cancellable"], probe=probe)
    rules: list[Any] = [
        ("/effect", SideEffectHandler, {"probe": probe}),
        ("/opted-in", OptedInPostHandler, {"probe": probe}),
        ("/all", AllPolicyHandler, {"probe": probe}),
        ("/none", NonePolicyHandler, {"probe": probe}),
        ("/uncancellable-get", UncancellableGetHandler, {"probe": probe}),
        ("/shielded-post", ShieldedPostHandler, {"probe": probe}),
        ("/timeout", CancelledByReasonHandler, {"probe": probe}),
        ("/timeout-post", CancelledByReasonHandler, {"probe": probe}),
        *registry.urlspecs(catch_all=False),
    ]
    return tornado.web.Application(rules)


async def leave(port: int, probe: Probe, method: str, path: str, how: str) -> None:
    conn = await RawHTTPConnection.open(port)
    await conn.send_request(method, path)
    await probe.wait_suspended()
    conn.close(how)  # type: ignore[arg-type]
    await probe.wait_finished()
    await settle()


async def work_goes_on(probe: Probe) -> None:
    """The 0.2 s of work after the client left records its resource."""
    await wait_until(
        lambda: probe.count("resource-recorded") >= 1, what="the work recording its resource"
    )
    await settle()


async def work_stopped(probe: Probe) -> None:
    """Longer than the work: cancelled work that went on anyway would be seen."""
    await nothing_happens_within(0.3, what="the cancelled work recording its resource")


# -- the default: cancel what is safe to cancel ----------------------------------------


@HOW
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_mutating_request_completes_its_side_effect(port, probe, caplog, method, how):
    await leave(port, probe, method, "/effect", how)
    await work_goes_on(probe)
    assert probe.count("resource-recorded") == 1
    assert probe.count("cancelled") == 0
    assert access_statuses(caplog) == [499]


@HOW
async def test_safe_request_is_cancelled_by_default(port, probe, caplog, how):
    await leave(port, probe, "GET", "/effect", how)
    await work_stopped(probe)
    assert probe.count("cancelled") == 1
    assert probe.count("resource-recorded") == 0
    assert access_statuses(caplog) == [499]


async def test_cancellable_post_is_cancelled(port, probe, caplog):
    await leave(port, probe, "POST", "/opted-in", "rst")
    await work_stopped(probe)
    assert probe.count("cancelled") == 1
    assert probe.count("resource-recorded") == 0
    assert access_statuses(caplog) == [499]


async def test_policy_all_cancels_mutating_requests(port, probe, caplog):
    await leave(port, probe, "DELETE", "/all", "fin")
    await work_stopped(probe)
    assert probe.count("cancelled") == 1
    assert access_statuses(caplog) == [499]


async def test_policy_none_cancels_nothing_but_still_detects(port, probe, caplog):
    await leave(port, probe, "GET", "/none", "rst")
    await work_goes_on(probe)
    assert probe.count("resource-recorded") == 1
    assert probe.count("on_disconnect") == 1
    assert access_statuses(caplog) == [499]


async def test_uncancellable_verb_wins_over_the_policy(port, probe, caplog):
    await leave(port, probe, "GET", "/uncancellable-get", "rst")
    await work_goes_on(probe)
    assert probe.count("resource-recorded") == 1
    assert access_statuses(caplog) == [499]


async def test_shielded_makes_an_opted_in_post_safe(port, probe, caplog):
    await leave(port, probe, "POST", "/shielded-post", "rst")
    await work_goes_on(probe)
    await nothing_happens_within(0.1, what="the handler going on past its shield")
    assert probe.count("resource-recorded") == 1
    assert probe.count("after-shield") == 0
    assert access_statuses(caplog) == [499]


async def test_servlet_post_is_not_cancelled_by_default(port, probe, caplog):
    await leave(port, probe, "POST", "/servlet/create", "rst")
    await work_goes_on(probe)
    assert probe.count("resource-recorded") == 1
    assert access_statuses(caplog) == [499]


async def test_servlet_post_opts_in_with_cancellable(port, probe, caplog):
    await leave(port, probe, "POST", "/servlet/cancellable", "fin")
    await work_stopped(probe)
    assert probe.count("resource-started") == 1
    assert probe.count("resource-recorded") == 0
    assert access_statuses(caplog) == [499]


async def test_connected_mutating_request_is_plain_tornado(http_client, base_url, probe, caplog):
    response = await http_client.fetch(base_url + "/effect", method="POST", body=b"")
    assert json.loads(response.body) == {"created": True}
    assert access_statuses(caplog) == [200]


# -- other reasons: cancel_request -----------------------------------------------------

GIVE_UP = CancelReason(504, "GAVE_UP", "Took too long")


class CancelledByReasonHandler(JsonErrorMixin, ProbeHandler):
    """Cancels itself for a non-disconnect reason, as a deadline or a shutdown would."""

    def prepare(self) -> None:
        self.call_later(0.05, self.cancel_request, GIVE_UP)

    async def _work(self) -> None:
        try:
            self.probe.suspended.set()
            await asyncio.sleep(0.3)
            self.probe.hit("completed")
            self.write({"late": True})
        finally:
            self.probe.hit("finally")

    async def get(self) -> None:
        await self._work()

    async def post(self) -> None:
        await self._work()


async def test_cancel_request_ends_a_connected_request_with_its_reason(
    http_client: AsyncHTTPClient, base_url, probe, caplog
):
    response = await http_client.fetch(base_url + "/timeout", raise_error=False)
    assert response.code == 504
    assert json.loads(response.body) == {"errcode": "GAVE_UP", "error": "Took too long"}
    assert probe.count("finally") == 1
    assert probe.count("completed") == 0
    assert access_statuses(caplog) == [504]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_cancel_request_follows_the_policy_for_mutating_requests(
    http_client: AsyncHTTPClient, base_url, probe, caplog
):
    # Not cancellable: the work completes and its real answer is sent.
    response = await http_client.fetch(base_url + "/timeout-post", method="POST", body=b"")
    assert response.code == 200
    assert json.loads(response.body) == {"late": True}
    assert probe.count("completed") == 1
    assert access_statuses(caplog) == [200]


class NoContentServlet(JsonServlet):
    def on_DELETE(self) -> Any:
        return 204, None


async def test_servlet_may_answer_204_without_a_body(caplog):
    registry = ServletRegistry()
    registry.register(NoContentServlet, ["/gone"])
    app = tornado.web.Application(registry.urlspecs())
    server = tornado.httpserver.HTTPServer(app)
    sock, other_port = tornado.testing.bind_unused_port()
    server.add_socket(sock)
    try:
        client = AsyncHTTPClient()
        response = await client.fetch(f"http://127.0.0.1:{other_port}/gone", method="DELETE")
    finally:
        server.stop()
    assert response.code == 204
    assert response.body == b""
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
