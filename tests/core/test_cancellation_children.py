"""The policy covers all the work of a request: its children follow it.

A deadline or a disconnect cancels a *cancellable* request's children (``spawn``,
``call_later``, ``run_in_executor``) with it. An *uncancellable* request (a POST
by default) runs to completion, children included: cancelling the child it awaits
would cut it in half as surely as cancelling the request itself, and the
``CancelledError`` escaping from its ``await`` would answer 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from tests.support import Probe, ProbeHandler, access_statuses, settle, wait_until
from tornado_jsonservlet import DEADLINE_EXCEEDED, cancellable
from tornado_jsonservlet.outbound import CancellableHTTPClient
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

HEADER = "X-Envoy-Expected-Rq-Timeout-Ms"
# Each child outlives the caller's deadline (50 ms) several times over.
WORK = 0.3


class Children(ProbeHandler):
    """Starts one child of each kind, then awaits them all."""

    async def post(self) -> None:
        await self._work()

    @cancellable
    async def put(self) -> None:
        await self._work()

    async def get(self) -> None:
        await self._work()

    async def _work(self) -> None:
        probe = self.probe

        async def child(name: str) -> str:
            try:
                await asyncio.sleep(WORK)
            except asyncio.CancelledError:
                probe.hit(f"{name}-cancelled")
                raise
            probe.hit(f"{name}-done")
            return name

        def in_thread() -> str:
            threading.Event().wait(WORK)  # the thread's own work, not a synchronisation
            probe.hit("thread-done")
            return "thread"

        timer_fired = asyncio.get_running_loop().create_future()
        self.call_later(WORK, lambda: timer_fired.done() or timer_fired.set_result("timer"))
        spawned = self.spawn(child("spawned"))
        probe.suspended.set()
        try:
            results = [await self.run_in_executor(in_thread), await spawned, await timer_fired]
            # A child started after the deadline passed runs too.
            results.append(await self.spawn(child("late")))
        except asyncio.CancelledError:
            probe.hit("cancelled")
            raise
        probe.hit("completed")
        probe.values["reason"] = self.cancel_reason
        self.write({"results": results})


class SlowUpstream(tornado.web.RequestHandler):
    async def post(self) -> None:
        await asyncio.sleep(WORK)  # the upstream's own work
        self.write({"upstream": self.request.headers.get(HEADER, "none")})


class CallsUpstream(ProbeHandler):
    """An uncancellable POST whose work includes an outbound call."""

    async def post(self) -> None:
        client = CancellableHTTPClient(force_instance=True)
        try:
            port = self.request.host.rsplit(":", 1)[1]
            upstream = await client.fetch(
                f"http://127.0.0.1:{port}/upstream", method="POST", body=b""
            )
        finally:
            client.close()
        self.write(upstream.body)


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    return tornado.web.Application(
        [
            ("/children", Children, {"probe": probe}),
            ("/calls-upstream", CallsUpstream, {"probe": probe}),
            ("/upstream", SlowUpstream),
        ],
        accept_deadline_header=True,
    )


async def test_a_deadline_runs_an_uncancellable_post_to_completion_children_included(
    port, probe, caplog
):
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}/children",
        method="POST",
        body=b"",
        headers={HEADER: "50"},
        raise_error=False,
    )
    await settle()
    # Its normal answer, not a 500 and not a 504: the work was done.
    assert response.code == 200, response.body
    assert json.loads(response.body) == {"results": ["thread", "spawned", "timer", "late"]}
    assert probe.values["reason"] is DEADLINE_EXCEEDED  # the deadline is known
    assert "cancelled" not in probe.events
    assert not [e for e in probe.events if e.endswith("-cancelled")]
    assert access_statuses(caplog) == [200]


async def test_a_disconnect_runs_an_uncancellable_post_to_completion_children_included(
    port, probe, caplog
):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("POST", "/children", body=b"")
    await probe.wait_suspended()
    conn.close("rst")
    await probe.wait_finished()
    await settle()
    assert "completed" in probe.events
    assert {"spawned-done", "late-done", "thread-done"} <= set(probe.events)
    assert access_statuses(caplog) == [499]


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_a_deadline_still_cancels_a_cancellable_request_with_its_children(
    port, probe, caplog, method
):
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}/children",
        method=method,
        body=b"" if method == "PUT" else None,
        headers={HEADER: "50"},
        raise_error=False,
    )
    assert response.code == 504
    await wait_until(lambda: "spawned-cancelled" in probe.events, what="the child cancelled")
    assert "completed" not in probe.events
    assert access_statuses(caplog) == [504]


async def test_an_uncancellable_posts_outbound_call_is_not_cut_by_its_deadline(port, probe, caplog):
    # The deadline does not cap the outbound call of a request that will not be
    # cancelled (capped, it would time out mid-way and the POST would fail half
    # done), nor is it passed on to the upstream as a deadline it should keep.
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}/calls-upstream",
        method="POST",
        body=b"",
        headers={HEADER: "50"},
        raise_error=False,
    )
    assert response.code == 200, response.body
    assert json.loads(response.body) == {"upstream": "none"}
