"""RedisBroadcaster against a real redis-server: across broadcasters and processes,
unsubscribing when clients leave, and losing the server."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import tornado.web

from tests.sse_client import StreamReader, parse_events
from tests.support import Probe, access_statuses, settle, wait_until
from tornado_jsonservlet import BroadcastUnavailable, EndReason, EventStreamMixin

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from tornado_jsonservlet.streams.redis_broadcast import RedisBroadcaster  # noqa: E402

pytestmark = pytest.mark.gen_test

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broadcaster(redis_server, io_loop):
    broadcaster = RedisBroadcaster(redis_server.url, channel_prefix="test:", timeout=2)
    yield broadcaster
    io_loop.run_sync(broadcaster.close)


async def numsub(url: str, channel: str) -> int:
    client = redis_asyncio.Redis.from_url(url)
    try:
        ((_, count),) = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_messages_cross_between_broadcasters(redis_server, broadcaster):
    other = RedisBroadcaster(redis_server.url, channel_prefix="test:")
    try:
        async with broadcaster.subscribe("news") as messages, other.subscribe("news") as mine:
            assert await numsub(redis_server.url, "test:news") == 2
            assert await other.publish("news", {"title": "é", "n": [1, 2]}) == 2
            assert await other.publish("elsewhere", 1) == 0
            for subscription in (messages, mine):
                message = await asyncio.wait_for(subscription.__anext__(), 2)
                assert message == {"title": "é", "n": [1, 2]}
    finally:
        await other.close()


async def test_last_subscriber_leaving_unsubscribes_in_redis(redis_server, broadcaster):
    async with broadcaster.subscribe("a") as first:
        async with broadcaster.subscribe("a"):
            assert await numsub(redis_server.url, "test:a") == 1  # one connection per process
        assert broadcaster.subscriber_count("a") == 1
    assert first.ended is EndReason.UNSUBSCRIBED

    async def unsubscribed() -> bool:
        return await numsub(redis_server.url, "test:a") == 0

    await wait_until(unsubscribed, what="no subscriber left in Redis")
    # And subscribing again works on the same connection.
    async with broadcaster.subscribe("a") as again:
        await broadcaster.publish("a", "back")
        assert await asyncio.wait_for(again.__anext__(), 2) == "back"


async def test_a_message_from_another_process(redis_server, broadcaster):
    script = (
        "import asyncio, sys\n"
        "from tornado_jsonservlet.streams.redis_broadcast import RedisBroadcaster\n"
        "async def main():\n"
        "    b = RedisBroadcaster(sys.argv[1], channel_prefix='test:')\n"
        "    print(await b.publish('jobs', {'from': 'child'}))\n"
        "    await b.close()\n"
        "asyncio.run(main())\n"
    )
    async with broadcaster.subscribe("jobs") as messages:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, redis_server.url, cwd=ROOT, stdout=subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(child.communicate(), 20)
        assert child.returncode == 0
        assert out.strip() == b"1"
        assert await asyncio.wait_for(messages.__anext__(), 2) == {"from": "child"}


async def test_non_json_message_is_skipped_with_a_warning(redis_server, broadcaster, caplog):
    client = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        async with broadcaster.subscribe("a") as messages:
            await client.publish("test:a", b"\xffnot json")
            await broadcaster.publish("a", "fine")
            assert await asyncio.wait_for(messages.__anext__(), 2) == "fine"
    finally:
        await client.aclose()
    skipped = [r for r in caplog.records if "not JSON" in r.getMessage()]
    assert [r.levelno for r in skipped] == [logging.WARNING]


async def test_lagging_subscriber_over_redis(broadcaster):
    async with broadcaster.subscribe("a", max_queued=2) as slow:
        for n in range(4):
            await broadcaster.publish("a", n)
        await wait_until(lambda: slow.ended is not None, what="the slow subscription ending")
        assert [m async for m in slow] == [0, 1]
        assert slow.ended is EndReason.LAGGED


async def test_losing_redis_ends_subscriptions_cleanly(redis_server, broadcaster, caplog):
    baseline = len(asyncio.all_tasks())
    async with broadcaster.subscribe("a") as first, broadcaster.subscribe("b") as second:
        readers = [asyncio.ensure_future(m.__anext__()) for m in (first, second)]
        await settle()  # the readers start waiting
        redis_server.kill()
        done, pending = await asyncio.wait(readers, timeout=5)
        assert not pending, "a subscription hung after Redis went away"
        for reader in done:
            with pytest.raises(StopAsyncIteration):
                reader.result()
        assert first.ended is EndReason.CONNECTION_LOST
        assert second.ended is EndReason.CONNECTION_LOST
        assert broadcaster.subscriber_count() == 0

    with pytest.raises(BroadcastUnavailable):
        await asyncio.wait_for(broadcaster.publish("a", 1), 5)
    with pytest.raises(BroadcastUnavailable):
        async with broadcaster.subscribe("a"):
            pass
    lost = [r for r in caplog.records if "Redis connection lost" in r.getMessage()]
    assert len(lost) == 1
    assert lost[0].levelno == logging.WARNING
    assert errors(caplog) == []

    # Redis comes back: new subscriptions work again.
    redis_server.start()
    async with broadcaster.subscribe("a") as again:
        await broadcaster.publish("a", "back")
        assert await asyncio.wait_for(again.__anext__(), 2) == "back"
    await wait_until(  # + the reader
        lambda: len(asyncio.all_tasks()) <= baseline + 1, what="the tasks back to the baseline"
    )


# -- an SSE endpoint on Redis ------------------------------------------------------


class Relay(EventStreamMixin, tornado.web.RequestHandler):
    heartbeat_interval = None

    def initialize(self, probe: Probe, broadcaster: RedisBroadcaster) -> None:
        self.probe = probe
        self.broadcaster = broadcaster

    async def get(self) -> None:
        async with self.broadcaster.subscribe("feed") as messages:
            await self.start_stream()
            self.probe.suspended.set()
            async for message in messages:
                await self.send_event(message)
            self.probe.values["ended"] = messages.ended

    def on_finish(self) -> None:
        self.probe.values["status"] = self.get_status()
        self.probe.finished.set()


@pytest.fixture
def app(io_loop, probe, broadcaster):
    return tornado.web.Application(
        [(r"/feed", Relay, {"probe": probe, "broadcaster": broadcaster})]
    )


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_sse_client_leaving_unsubscribes_in_redis(
    port, probe, broadcaster, redis_server, caplog, how
):
    reader = await StreamReader.open(port, "/feed")
    try:
        await probe.wait_suspended()
        await broadcaster.publish("feed", {"n": 1})
        event = await reader.next_event()
        assert json.loads(event.data) == {"n": 1}
    finally:
        reader.close(how)
    await probe.wait_finished()

    async def unsubscribed() -> bool:
        return await numsub(redis_server.url, "test:feed") == 0

    await wait_until(unsubscribed, what="no subscriber left in Redis")
    await settle()
    assert access_statuses(caplog) == [499]
    assert errors(caplog) == []


async def test_sse_stream_ends_when_redis_is_lost(port, probe, redis_server, caplog):
    reader = await StreamReader.open(port, "/feed")
    try:
        await probe.wait_suspended()
        redis_server.kill()
        body = await reader.read_until_complete()
    finally:
        reader.close()
    assert parse_events(body.decode()) == ([], [])
    await probe.wait_finished()
    assert probe.values["ended"] is EndReason.CONNECTION_LOST
    assert probe.values["status"] == 200
    assert errors(caplog) == []
