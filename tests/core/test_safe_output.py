"""SafeWriteMixin: output after a disconnect is a quiet no-op; connected output is Tornado's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import tornado.web
from tornado.iostream import StreamClosedError

from tests.support import Probe, access_statuses, leave_while_suspended
from tornado_jsonservlet import SafeWriteMixin

pytestmark = pytest.mark.gen_test


class _Reporting(tornado.web.RequestHandler):
    probe: Probe

    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    def on_finish(self) -> None:
        self.probe.hit("on_finish")
        self.probe.finished.set()


class LateWriter(_Reporting):
    """The seed problem: work finishes after the client left, then writes."""

    async def get(self) -> None:
        self.probe.suspended.set()
        await asyncio.sleep(0.3)
        self.probe.hit("work-done")
        self.write("late")
        await self.flush()
        await self.finish("!")
        self.probe.hit("after-finish")


class PlainLateWriter(LateWriter):
    pass


class SafeLateWriter(SafeWriteMixin, LateWriter):
    pass


class EveryOutputMethod(SafeWriteMixin, _Reporting):
    async def get(self) -> None:
        self.probe.suspended.set()
        await self.wait_for_disconnect()
        results: dict[str, Any] = {
            "write": self.write("x"),
            "flush": self.flush(),
            "render": self.render("no-such-template.html"),
            "redirect": self.redirect("/elsewhere"),
            "send_error": self.send_error(503),
            "finish": self.finish("y"),
            "finish-again": self.finish(),
        }
        self.probe.values["results"] = results
        for name in ("flush", "render", "finish", "finish-again"):
            await results[name]


class FlushIntoDeadStream(SafeWriteMixin, _Reporting):
    async def get(self) -> None:
        self.write(b"x" * (32 * 1024 * 1024))
        self.probe.suspended.set()
        await self.flush()
        self.probe.values["gone"] = self.client_disconnected
        self.probe.hit("after-flush")


class WriteAfterFinish(SafeWriteMixin, _Reporting):
    def get(self) -> None:
        self.finish("done")
        for attempt in (lambda: self.write("more"), self.finish):
            try:
                attempt()
            except RuntimeError:
                self.probe.hit("runtime-error")


class BackendStreamClosed(SafeWriteMixin, _Reporting):
    async def get(self) -> None:
        raise StreamClosedError()  # e.g. a backend connection died: a real error


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    routes = {
        "/plain": PlainLateWriter,
        "/safe": SafeLateWriter,
        "/every": EveryOutputMethod,
        "/deadflush": FlushIntoDeadStream,
        "/after-finish": WriteAfterFinish,
        "/backend": BackendStreamClosed,
    }
    return tornado.web.Application([(p, h, {"probe": probe}) for p, h in routes.items()])


@pytest.mark.allow_error_log(
    r"Uncaught exception GET /plain", r"Cannot send error response after headers written"
)
async def test_plain_tornado_shows_the_problem(port, probe, caplog):
    """Control: without the mixin the late finish() is an ERROR and a 200."""
    await leave_while_suspended(port, probe, "/plain")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], StreamClosedError)
    assert access_statuses(caplog) == [200]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_late_output_is_quiet_and_logged_as_499(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/safe", how)
    assert probe.count("work-done") == 1  # SafeWriteMixin alone does not cancel
    assert probe.count("after-finish") == 1
    assert access_statuses(caplog) == [499]


async def test_every_output_method_is_a_noop_returning_completed_awaitables(port, probe, caplog):
    await leave_while_suspended(port, probe, "/every")
    results = probe.values["results"]
    assert results["write"] is None
    assert results["redirect"] is None
    assert results["send_error"] is None
    for name in ("flush", "render", "finish", "finish-again"):
        assert isinstance(results[name], asyncio.Future)
        assert results[name].done()
        assert results[name].result() is None
    assert probe.count("on_finish") == 1
    assert access_statuses(caplog) == [499]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_flush_into_a_dead_stream_reports_the_disconnect(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/deadflush", how)
    assert probe.count("after-flush") == 1
    assert probe.values["gone"] is True
    assert access_statuses(caplog) == [499]


async def test_programming_errors_still_raise_while_connected(http_client, base_url, probe):
    response = await http_client.fetch(base_url + "/after-finish")
    assert response.body == b"done"
    assert probe.count("runtime-error") == 2


@pytest.mark.allow_error_log(r"Uncaught exception GET /backend", r"^500 GET /backend")
async def test_stream_closed_error_from_elsewhere_is_still_an_error(http_client, base_url, caplog):
    response = await http_client.fetch(base_url + "/backend", raise_error=False)
    assert response.code == 500
    assert any("Uncaught exception" in r.getMessage() for r in caplog.records)
