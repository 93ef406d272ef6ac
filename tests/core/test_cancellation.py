"""CancelOnDisconnectMixin against a real server and real clients that FIN or RST."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.iostream import StreamClosedError

from tests.support import (
    Probe,
    ProbeHandler,
    access_lines,
    access_statuses,
    leave_while_suspended,
    nothing_happens_within,
    settle,
    wait_until,
)
from tornado_jsonservlet import CancelOnDisconnectMixin, cancellable, uncancellable
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

HOW = pytest.mark.parametrize("how", ["fin", "rst"])


class SlowHandler(ProbeHandler):
    async def get(self) -> None:
        self.add_disconnect_callback(self.probe.hit, "callback")
        wait = float(self.get_argument("wait", "5"))
        try:
            self.probe.hit("started")
            self.probe.suspended.set()
            await asyncio.sleep(wait)
            self.probe.hit("after-await")
            self.write("done")
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise
        finally:
            self.probe.hit("finally")


class SlowPrepareHandler(ProbeHandler):
    async def prepare(self) -> None:
        try:
            self.probe.suspended.set()
            await asyncio.sleep(float(self.get_argument("wait", "5")))
            self.probe.hit("prepared")
        finally:
            self.probe.hit("prepare-finally")

    def get(self) -> None:
        self.probe.hit("get")


class TimerHandler(ProbeHandler):
    async def get(self) -> None:
        self.call_later(0.2, self.probe.hit, "timer-fired")
        self.probe.suspended.set()
        await asyncio.sleep(float(self.get_argument("wait", "5")))
        self.write("done")


class SpawnHandler(ProbeHandler):
    async def get(self) -> None:
        async def child() -> None:
            try:
                self.probe.hit("child-started")
                await asyncio.sleep(5)
                self.probe.hit("child-completed")
            finally:
                self.probe.hit("child-finally")

        self.probe.values["child"] = self.spawn(child())
        self.probe.suspended.set()
        await asyncio.sleep(float(self.get_argument("wait", "5")))
        self.write("done")


class ShieldedHandler(ProbeHandler):
    async def get(self) -> None:
        try:
            async with self.shielded():
                self.probe.hit("shield-entered")
                self.probe.suspended.set()
                await asyncio.sleep(0.3)
                self.probe.values["gone-inside-shield"] = self.client_disconnected
                self.probe.hit("shield-completed")
            self.probe.hit("after-shield")
            await asyncio.sleep(5)
        finally:
            self.probe.hit("finally")


class UncancellableHandler(ProbeHandler):
    @uncancellable
    async def get(self) -> None:
        self.probe.suspended.set()
        await asyncio.sleep(0.3)
        self.probe.values["gone"] = self.client_disconnected
        self.write("late output")
        await self.flush()
        await self.finish("more")
        self.probe.hit("completed")


class OptOutHandler(ProbeHandler):
    cancel_policy = "none"

    async def get(self) -> None:
        self.probe.suspended.set()
        await self.wait_for_disconnect()
        self.probe.hit("noticed")
        await asyncio.sleep(0.05)
        self.write("late output")
        self.probe.hit("completed")


class ForeignCancelHandler(ProbeHandler):
    async def get(self) -> None:
        self.probe.values["task"] = asyncio.current_task()
        self.probe.suspended.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            self.probe.hit("cancelled")
            raise


@tornado.web.stream_request_body
class UploadHandler(ProbeHandler):
    def prepare(self) -> None:
        self.received = 0

    def data_received(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self.probe.suspended.set()

    @cancellable
    async def post(self) -> None:
        self.probe.hit("post")
        self.probe.values.setdefault("posted", asyncio.Event()).set()
        await asyncio.sleep(float(self.get_argument("wait", "0")))
        self.write(str(self.received))


class ManyHandler(ProbeHandler):
    async def get(self) -> None:
        try:
            self.probe.hit("started")
            if self.probe.count("started") == self.probe.values["expected"]:
                self.probe.suspended.set()
            self.spawn(asyncio.sleep(5))
            self.call_later(5, self.probe.hit, "timer-fired")
            await asyncio.sleep(5)
            self.probe.hit("after-await")
        finally:
            self.probe.hit("finally")


class FinishRaceHandler(ProbeHandler):
    async def get(self) -> None:
        try:
            self.probe.suspended.set()
            await self.probe.values["go"].wait()
            self.finish("raced")
        finally:
            self.probe.hit("finally")


class NoSuperCloseHandler(SlowHandler):
    def on_connection_close(self) -> None:  # deliberately no super()
        self.probe.values["gone-in-hook"] = self.client_disconnected
        self.probe.hit("user-on_connection_close")


class BigFlushHandler(ProbeHandler):
    async def get(self) -> None:
        try:
            self.write(b"x" * (32 * 1024 * 1024))
            self.probe.suspended.set()
            await self.flush()
            self.probe.hit("after-flush")
            await asyncio.sleep(float(self.get_argument("wait", "5")))
            self.probe.hit("after-sleep")
        finally:
            self.probe.hit("finally")


class ContentLengthTooLowHandler(ProbeHandler):
    async def get(self) -> None:
        self.set_header("Content-Length", "2")
        self.write("hello")
        await self.flush()


class ContentLengthTooHighHandler(ProbeHandler):
    def get(self) -> None:
        self.set_header("Content-Length", "42")
        self.finish("ok")


class NestedHandler(SlowHandler):
    async def get(self) -> None:
        try:
            await super().get()
        finally:
            self.probe.hit("outer-finally")


class SyncHandler(ProbeHandler):
    def get(self) -> None:
        self.write({"sync": True})


async def _broken_child() -> None:
    raise ValueError("child bug")


class UnretrievedChildHandler(ProbeHandler):
    async def get(self) -> None:
        child = self.spawn(_broken_child())
        await asyncio.wait([child])  # waits, but never looks at the outcome
        self.write("ok")


class AwaitedChildHandler(ProbeHandler):
    async def get(self) -> None:
        try:
            await self.spawn(_broken_child())
        except ValueError as error:
            self.write(f"handled: {error}")


class LateCallbackHandler(ProbeHandler):
    @uncancellable
    async def get(self) -> None:
        self.probe.suspended.set()
        await self.wait_for_disconnect()
        self.add_disconnect_callback(self.probe.hit, "late-callback")
        self.probe.hit("registered")


class ErrorAfterDisconnectHandler(ProbeHandler):
    @uncancellable
    async def get(self) -> None:
        self.probe.suspended.set()
        await self.wait_for_disconnect()
        raise tornado.web.HTTPError(400)


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    routes: list[tuple[str, type[tornado.web.RequestHandler]]] = [
        ("/slow", SlowHandler),
        ("/prepare", SlowPrepareHandler),
        ("/timer", TimerHandler),
        ("/spawn", SpawnHandler),
        ("/shielded", ShieldedHandler),
        ("/uncancellable", UncancellableHandler),
        ("/optout", OptOutHandler),
        ("/foreign", ForeignCancelHandler),
        ("/upload", UploadHandler),
        ("/many", ManyHandler),
        ("/race", FinishRaceHandler),
        ("/nosuper", NoSuperCloseHandler),
        ("/bigflush", BigFlushHandler),
        ("/cl-low", ContentLengthTooLowHandler),
        ("/cl-high", ContentLengthTooHighHandler),
        ("/nested", NestedHandler),
        ("/sync", SyncHandler),
        ("/unretrieved-child", UnretrievedChildHandler),
        ("/awaited-child", AwaitedChildHandler),
        ("/latecallback", LateCallbackHandler),
        ("/errorafter", ErrorAfterDisconnectHandler),
    ]
    return tornado.web.Application([(path, h, {"probe": probe}) for path, h in routes])


# -- the work stops -----------------------------------------------------------


@HOW
async def test_verb_is_cancelled_at_its_await(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/slow", how)
    assert probe.count("started") == 1
    assert probe.count("cancelled") == 1
    assert probe.count("after-await") == 0
    assert probe.count("finally") == 1
    assert probe.count("callback") == 1
    assert probe.count("on_disconnect") == 1
    assert probe.count("on_finish") == 1
    assert probe.values["status"] == 499
    assert access_statuses(caplog) == [499]
    assert access_lines(caplog)[0].startswith("499 GET /slow (127.0.0.1)")
    access = [r for r in caplog.records if r.name == "tornado.access"]
    assert access[0].levelno == logging.WARNING


@HOW
async def test_slow_prepare_is_cancelled_and_verb_never_runs(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/prepare", how)
    assert probe.count("prepare-finally") == 1
    assert probe.count("prepared") == 0
    assert probe.count("get") == 0
    assert access_statuses(caplog) == [499]


@HOW
async def test_call_later_timer_never_fires_after_disconnect(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/timer", how)
    await nothing_happens_within(0.35, what="the 0.2 s timer firing")
    assert probe.count("timer-fired") == 0
    assert access_statuses(caplog) == [499]


async def test_call_later_timer_is_cancelled_when_request_finishes(http_client, base_url, probe):
    response = await http_client.fetch(base_url + "/timer?wait=0.01")
    assert response.body == b"done"
    await nothing_happens_within(0.35, what="the 0.2 s timer firing")
    assert probe.count("timer-fired") == 0


async def test_call_later_timer_fires_while_request_runs(http_client, base_url, probe):
    response = await http_client.fetch(base_url + "/timer?wait=0.3")
    assert response.code == 200
    assert probe.count("timer-fired") == 1


@HOW
async def test_spawned_child_is_cancelled_on_disconnect(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/spawn", how)
    child = probe.values["child"]
    await asyncio.wait([child], timeout=1)
    assert child.cancelled()
    assert probe.count("child-finally") == 1
    assert probe.count("child-completed") == 0
    assert access_statuses(caplog) == [499]


async def test_spawned_child_is_cancelled_when_request_finishes(http_client, base_url, probe):
    response = await http_client.fetch(base_url + "/spawn?wait=0.01")
    assert response.code == 200
    child = probe.values["child"]
    await asyncio.wait([child], timeout=1)
    assert child.cancelled()
    assert probe.count("child-completed") == 0


async def test_spawned_child_exception_that_the_handler_awaited_is_not_logged(
    http_client, base_url, caplog
):
    response = await http_client.fetch(base_url + "/awaited-child")
    assert response.body == b"handled: child bug"
    gc.collect()
    await settle()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.allow_error_log(r"Task exception was never retrieved")
async def test_spawned_child_exception_nobody_retrieved_is_reported_once(
    http_client, base_url, caplog
):
    response = await http_client.fetch(base_url + "/unretrieved-child")
    assert response.code == 200
    for _ in range(3):
        gc.collect()
        await settle()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "never retrieved" in errors[0].getMessage()
    assert "child bug" in repr(errors[0].exc_info)


@HOW
async def test_shielded_block_completes_then_cancellation_lands(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/shielded", how)
    assert probe.count("shield-completed") == 1
    assert probe.values["gone-inside-shield"] is True
    assert probe.count("after-shield") == 0
    assert probe.count("finally") == 1
    assert access_statuses(caplog) == [499]


@HOW
async def test_uncancellable_method_runs_to_completion_quietly(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/uncancellable", how)
    assert probe.values["gone"] is True
    assert probe.count("completed") == 1
    assert probe.count("on_disconnect") == 1
    assert access_statuses(caplog) == [499]


@HOW
async def test_class_opt_out_runs_to_completion_and_sees_disconnect(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/optout", how)
    assert probe.count("noticed") == 1
    assert probe.count("completed") == 1
    assert access_statuses(caplog) == [499]


async def test_nested_super_call_is_cancelled_once(port, probe, caplog):
    await leave_while_suspended(port, probe, "/nested", "rst")
    assert probe.count("cancelled") == 1
    assert probe.count("finally") == 1
    assert probe.count("outer-finally") == 1
    assert access_statuses(caplog) == [499]


# -- other cancellations are untouched ------------------------------------------


@pytest.mark.allow_error_log(r"^500 GET /foreign", r"Exception in callback")
async def test_foreign_cancellation_propagates(port, probe, caplog):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", "/foreign")
    await probe.wait_suspended()
    task = probe.values["task"]
    task.cancel()
    await asyncio.wait([task], timeout=2)
    assert probe.count("cancelled") == 1
    assert task.cancelled(), "the mixin swallowed a cancellation it did not start"
    assert 499 not in access_statuses(caplog)
    conn.close("fin")
    await settle()


# -- streaming uploads ----------------------------------------------------------


async def test_streamed_upload_works_while_connected(http_client, base_url, probe):
    body = b"y" * 200_000
    response = await http_client.fetch(base_url + "/upload?wait=0.01", method="POST", body=body)
    assert response.body == str(len(body)).encode()
    assert probe.values["status"] == 200


@HOW
async def test_disconnect_during_streamed_upload(port, probe, caplog, how):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("POST", "/upload", body=b"z" * 1000, content_length=1_000_000)
    await probe.wait_suspended()
    conn.close(how)
    await probe.wait_finished()
    await settle()
    assert probe.count("post") == 0
    assert access_statuses(caplog) == [499]


@HOW
async def test_disconnect_after_upload_cancels_the_verb(port, probe, caplog, how):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("POST", "/upload?wait=5", body=b"z" * 1000)
    posted = probe.values.setdefault("posted", asyncio.Event())
    await asyncio.wait_for(posted.wait(), 5)
    conn.close(how)
    await probe.wait_finished()
    assert access_statuses(caplog) == [499]


# -- traps from the design notes -----------------------------------------------------


async def test_many_concurrent_disconnects_leak_no_tasks(port, probe, caplog):
    count = 60
    probe.values["expected"] = count
    await settle()
    baseline = asyncio.all_tasks()
    conns = [await RawHTTPConnection.open(port) for _ in range(count)]
    for conn in conns:
        await conn.send_request("GET", "/many")
    await probe.wait_suspended()
    for index, conn in enumerate(conns):
        conn.close("rst" if index % 2 else "fin")
    await wait_until(lambda: probe.count("on_finish") == count, what=f"{count} handlers finished")
    await wait_until(lambda: asyncio.all_tasks() <= baseline, what="the tasks back to the baseline")
    assert probe.count("finally") == count
    assert probe.count("after-await") == 0
    assert access_statuses(caplog) == [499] * count
    leaked = asyncio.all_tasks() - baseline
    assert not leaked, f"{len(leaked)} tasks leaked: {list(leaked)[:3]}"
    assert probe.count("timer-fired") == 0


@pytest.mark.parametrize("order", ["finish-first", "close-first"])
async def test_disconnect_racing_with_finish(port, probe, caplog, order):
    rounds = 8
    for _ in range(rounds):
        probe.suspended.clear()
        probe.finished.clear()
        probe.values["go"] = asyncio.Event()
        conn = await RawHTTPConnection.open(port)
        await conn.send_request("GET", "/race")
        await probe.wait_suspended()
        if order == "finish-first":
            probe.values["go"].set()
            conn.close("rst")
        else:
            conn.close("rst")
            await asyncio.sleep(0.001)
            probe.values["go"].set()
        await probe.wait_finished()
    await settle()
    statuses = access_statuses(caplog)
    assert len(statuses) == rounds
    assert set(statuses) <= {200, 499}
    assert probe.count("finally") == rounds
    assert probe.count("on_finish") == rounds


async def test_client_that_resets_right_after_sending(http_server, port, probe, caplog):
    rounds = 10
    for _ in range(rounds):
        conn = await RawHTTPConnection.open(port)
        await conn.send_request("GET", "/slow")
        await asyncio.sleep(0.001)
        conn.close("rst")
    # A reset may come before the server read the request: not every round reaches a
    # handler. Wait until the server has closed every connection and each handler
    # that started has ended and been logged.
    await settle()  # the server accepts the connections
    await wait_until(
        lambda: (
            not http_server._connections
            and probe.count("finally") == probe.count("started")
            and len(access_lines(caplog)) == probe.count("on_finish")
        ),
        what="the server done with every reset connection",
    )
    await settle()
    # Every request that reached a handler is logged once, as 499; none ran its work.
    assert access_statuses(caplog) == [499] * len(access_lines(caplog))
    assert len(access_lines(caplog)) == probe.count("on_finish")
    assert probe.count("after-await") == 0
    assert probe.count("finally") == probe.count("started")


class EarlyPostHandler(ProbeHandler):
    async def post(self) -> None:
        self.probe.hit("post")
        await asyncio.sleep(0.05)
        self.probe.hit("after-await")


class EarlyCancellablePostHandler(EarlyPostHandler):
    @cancellable
    async def post(self) -> None:
        await super().post()


async def _post_then_reset_before_the_handler_exists(
    handler: type[tornado.web.RequestHandler], probe: Probe
) -> None:
    # With a body timeout, Tornado takes one more loop turn between reading the
    # body and creating the handler: an RST that lands right after the last body
    # byte is processed in between, before the close callback exists. The
    # handler is then created on an already-closed stream.
    app = tornado.web.Application([("/early", handler, {"probe": probe})])
    server = tornado.httpserver.HTTPServer(app, body_timeout=10)
    sock, port = tornado.testing.bind_unused_port()
    server.add_socket(sock)
    try:
        conn = await RawHTTPConnection.open(port)
        await conn.send_raw(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        await asyncio.sleep(0.05)
        await conn.send_raw(b"body")
        conn.close("rst")
        await probe.wait_finished()
        await settle()
    finally:
        server.stop()
        await server.close_all_connections()


async def test_cancellable_request_gone_before_the_handler_starts_never_runs(probe, caplog):
    await _post_then_reset_before_the_handler_exists(EarlyCancellablePostHandler, probe)
    assert probe.events == ["on_disconnect", "on_finish"]
    assert access_statuses(caplog) == [499]


async def test_mutating_request_gone_before_the_handler_starts_still_completes(probe, caplog):
    await _post_then_reset_before_the_handler_exists(EarlyPostHandler, probe)
    assert probe.events == ["on_disconnect", "post", "after-await", "on_finish"]
    assert access_statuses(caplog) == [499]


@HOW
async def test_on_connection_close_override_without_super(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/nosuper", how)
    assert probe.count("user-on_connection_close") == 1
    assert probe.values["gone-in-hook"] is True
    assert probe.count("cancelled") == 1
    assert probe.count("after-await") == 0
    assert probe.count("on_disconnect") == 1
    assert access_statuses(caplog) == [499]


@HOW
async def test_handler_awaiting_flush_when_the_stream_dies(port, probe, caplog, how):
    await leave_while_suspended(port, probe, "/bigflush", how)
    assert probe.count("after-sleep") == 0
    assert probe.count("finally") == 1
    assert access_statuses(caplog) == [499]


@pytest.mark.allow_error_log(
    r"Uncaught exception",
    r"Cannot send error response after headers written",
    r"Failed to flush partial response",
)
@pytest.mark.parametrize("path", ["/cl-low", "/cl-high"])
async def test_tornado_initiated_close_is_a_server_error_not_a_disconnect(
    http_client, base_url, probe, caplog, path
):
    # The client sees a broken response (Tornado aborts the connection).
    with pytest.raises((HTTPClientError, StreamClosedError)):
        await http_client.fetch(base_url + path)
    await probe.wait_finished()
    await settle()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("Uncaught exception" in m for m in errors)
    assert 499 not in access_statuses(caplog)
    assert probe.count("on_disconnect") == 0


# -- the disconnect is visible, callbacks are exact -------------------------------


async def test_disconnect_callback_registered_late_runs_at_once(port, probe):
    await leave_while_suspended(port, probe, "/latecallback", "fin")
    assert probe.events.index("late-callback") < probe.events.index("registered")
    assert probe.count("late-callback") == 1


async def test_error_raised_after_disconnect_is_logged_as_499_not_400(port, probe, caplog):
    await leave_while_suspended(port, probe, "/errorafter", "rst")
    assert access_statuses(caplog) == [499]


# -- while connected, exactly Tornado -----------------------------------------------


async def test_connected_request_is_plain_tornado(
    http_client: AsyncHTTPClient, base_url, probe, caplog
):
    response = await http_client.fetch(base_url + "/slow?wait=0.01")
    assert response.code == 200
    assert response.body == b"done"
    assert "Etag" in response.headers
    assert probe.events == ["started", "after-await", "finally", "on_finish"]
    assert access_statuses(caplog) == [200]


async def test_sync_verb_is_untouched(http_client, base_url):
    response = await http_client.fetch(base_url + "/sync")
    assert response.body == b'{"sync": true}'
    assert response.headers["Content-Type"].startswith("application/json")


async def test_unimplemented_verb_is_still_405(http_client, base_url, caplog):
    response = await http_client.fetch(base_url + "/slow", method="DELETE", raise_error=False)
    assert response.code == 405
    assert access_statuses(caplog) == [405]


def test_mixin_is_importable_from_package_root() -> None:
    import tornado_jsonservlet

    assert tornado_jsonservlet.CancelOnDisconnectMixin is CancelOnDisconnectMixin
