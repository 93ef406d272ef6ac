"""run_in_executor and current_cancel_token: thread work learns that its caller left."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import tornado.web

from tests.support import (
    Probe,
    ProbeHandler,
    access_statuses,
    messages,
    nothing_happens_within,
    wait_until,
)
from tornado_jsonservlet import CancelToken, current_cancel_token, run_in_executor
from tornado_jsonservlet.core.context import deadline_remaining, loop_time, request_deadline
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

HOW = pytest.mark.parametrize("how", ["fin", "rst"])


class ThreadWorkHandler(ProbeHandler):
    """Runs ``work`` in a thread. ``mode``: how the thread ends once cancelled."""

    async def get(self) -> None:
        mode = self.get_argument("mode", "return")
        started = threading.Event()
        self.probe.values["thread-started"] = started

        def work() -> str:
            token = current_cancel_token()
            self.probe.values["token"] = token
            started.set()
            if mode == "ignore":  # never looks at its token
                time.sleep(0.3)
                self.probe.values["thread-ended"] = time.monotonic()
                raise ValueError("late failure nobody waits for")
            token.wait(10)
            self.probe.values["noticed"] = time.monotonic()
            try:
                if mode == "raise":
                    token.raise_if_cancelled()
                return "late result"
            finally:
                self.probe.values["thread-ended"] = time.monotonic()

        try:
            self.probe.suspended.set()
            result = await run_in_executor(work)
        except asyncio.CancelledError:
            self.probe.values["released"] = time.monotonic()
            raise
        self.write(result)


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    return tornado.web.Application([("/work", ThreadWorkHandler, {"probe": probe})])


async def leave_during_thread_work(port: int, probe: Probe, mode: str, how: str) -> float:
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", f"/work?mode={mode}")
    await wait_until(lambda: "thread-started" in probe.values, what="the handler starts the thread")
    await wait_until(probe.values["thread-started"].is_set, what="the thread starts its work")
    left = time.monotonic()
    conn.close(how)  # type: ignore[arg-type]
    await probe.wait_finished()
    return left


@HOW
@pytest.mark.parametrize("mode", ["return", "raise"])
async def test_client_leaving_releases_the_handler_and_tells_the_thread(
    port, probe, caplog, how, mode
):
    left = await leave_during_thread_work(port, probe, mode, how)
    assert probe.values["status"] == 499
    assert access_statuses(caplog) == [499]
    assert probe.values["released"] - left < 0.5
    await wait_until(lambda: "thread-ended" in probe.values, what="the cancelled thread ends")
    token = probe.values["token"]
    assert token.cancelled
    # The thread learned it at once, not at the end of its 10 s wait.
    assert probe.values["noticed"] - probe.values["released"] < 0.1
    # The thread's outcome reaches the loop: nothing is logged (the suite's guard).
    await nothing_happens_within(0.05, what="a log record about the thread's outcome")


async def test_thread_that_ignores_its_token_is_abandoned_quietly(port, probe, caplog):
    left = await leave_during_thread_work(port, probe, "ignore", "rst")
    released = probe.values["released"] - left
    assert released < 0.2  # not the thread's 0.3 s
    assert "thread-ended" not in probe.values  # it is still running
    await wait_until(lambda: "thread-ended" in probe.values, what="the abandoned thread ends")
    await nothing_happens_within(0.05, what="a log record about the abandoned thread's error")
    # Its ValueError went nowhere: no ERROR (the suite guard), no "never retrieved".
    assert not [m for m in messages(caplog) if "never retrieved" in m or "late failure" in m]
    assert access_statuses(caplog) == [499]


async def test_connected_client_gets_the_result(http_client, port, probe):
    fetch = http_client.fetch(f"http://127.0.0.1:{port}/work?mode=return")
    await wait_until(lambda: "token" in probe.values, what="the thread gets its token")
    assert not probe.values["token"].cancelled
    probe.values["token"].cancel()  # lets the thread's wait end; nobody cancelled the await
    response = await fetch
    assert response.body == b"late result"


async def test_exception_in_thread_reaches_the_awaiting_coroutine():
    def fail(text: str) -> None:
        raise ValueError(text)

    with pytest.raises(ValueError, match="from the thread"):
        await run_in_executor(fail, "from the thread")


async def test_arguments_and_own_executor():
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="own") as executor:
        name = await run_in_executor(lambda: threading.current_thread().name, executor=executor)
        assert name.startswith("own")
        assert await run_in_executor(pow, 2, 10, executor=executor) == 1024


async def test_wait_for_cancels_the_await_and_sets_the_token():
    tokens: list[CancelToken] = []
    done = threading.Event()

    def work() -> None:
        token = current_cancel_token()
        tokens.append(token)
        token.wait(10)
        done.set()

    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(run_in_executor(work), 0.05)
    assert time.monotonic() - started < 0.5
    await wait_until(done.is_set, what="the thread sees its token cancelled")
    assert tokens[0].cancelled


@pytest.fixture
def single_thread() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


async def test_call_still_queued_in_the_executor_never_starts(single_thread):
    gate = threading.Event()
    ran: list[str] = []
    running = threading.Event()

    def hold_the_thread() -> bool:
        running.set()
        return gate.wait(5)

    first = asyncio.ensure_future(run_in_executor(hold_the_thread, executor=single_thread))
    second = asyncio.ensure_future(run_in_executor(ran.append, "second", executor=single_thread))
    await wait_until(running.is_set, what="the first call occupies the only thread")
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    gate.set()
    assert await first is True
    await run_in_executor(lambda: None, executor=single_thread)  # the queue has drained
    assert ran == []


async def test_context_reaches_the_thread():
    token = request_deadline.set(loop_time() + 5)
    try:
        remaining = await run_in_executor(deadline_remaining)
    finally:
        request_deadline.reset(token)
    assert remaining is not None
    assert 4 < remaining <= 5


def test_token_outside_run_in_executor_is_never_cancelled():
    token = current_cancel_token()
    assert not token.cancelled
    token.raise_if_cancelled()  # does not raise
    assert token.wait(0) is False
    assert current_cancel_token() is not token  # each caller gets its own


def test_raise_if_cancelled_is_not_caught_by_except_exception():
    token = CancelToken()
    token.cancel()
    assert token.cancelled
    assert token.wait(0) is True

    def careless_thread_code() -> None:
        try:
            token.raise_if_cancelled()
        except Exception:
            pytest.fail("a broad except swallowed the cancellation")

    with pytest.raises(asyncio.CancelledError):
        careless_thread_code()
