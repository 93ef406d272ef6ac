"""RedisBroadcaster against a real redis-server: across broadcasters and processes,
unsubscribing when clients leave, and losing the server."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tornado.web

from tests.sse_client import StreamReader, parse_events
from tests.support import Probe, access_statuses, settle, wait_until
from tornado_jsonservlet import BroadcastUnavailable, EndReason, EventStreamMixin

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from tornado_jsonservlet.streams.redis_broadcast import RedisBroadcaster  # noqa: E402

pytestmark = pytest.mark.gen_test(timeout=40)

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


def tasks_besides_the_reader() -> list[asyncio.Task[object]]:
    """The running tasks, less the broadcaster's reader and the read it waits on (on
    Python < 3.12 ``asyncio.wait_for`` runs that read as a task of its own)."""
    reader_work = ("RedisBroadcaster._read", "PubSub.get_message", "PubSub.ping")
    return [t for t in asyncio.all_tasks() if not any(w in repr(t) for w in reader_work)]


async def test_losing_redis_ends_subscriptions_cleanly(redis_server, broadcaster, caplog):
    baseline = len(tasks_besides_the_reader())
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
    await wait_until(
        lambda: len(tasks_besides_the_reader()) <= baseline, what="the tasks back to the baseline"
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


# -- deadlines: a Redis that stops answering --------------------------------------

TIMEOUT = 0.5


class StallingProxy:
    """A TCP proxy to Redis that the test controls: :meth:`partition` stops it
    forwarding in both directions *without closing anything*, as a network
    partition or a NAT that forgot the flow would; :meth:`heal` forwards again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def partition(self) -> None:
        self._forwarding.clear()

    def heal(self) -> None:
        self._forwarding.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await source.read(65536)
                await self._forwarding.wait()  # partitioned: hold the bytes, close nothing
                if not data:
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()
        except OSError:
            sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for writer in self._writers:
            writer.close()


@pytest.fixture
def proxy(redis_server, io_loop):
    proxy = io_loop.run_sync(StallingProxy(redis_server.port).start)
    yield proxy
    io_loop.run_sync(proxy.close)


@pytest.fixture
def quick(redis_server, io_loop):
    """A broadcaster with short deadlines, straight to Redis."""
    broadcaster = RedisBroadcaster(
        redis_server.url, timeout=TIMEOUT, health_check_interval=0.3, retry_after=0.5
    )
    yield broadcaster
    redis_server.thaw()
    io_loop.run_sync(broadcaster.close)


async def timed_failure(awaitable) -> float:
    """Seconds until ``awaitable`` raises BroadcastUnavailable (it must)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(BroadcastUnavailable):
        await asyncio.wait_for(awaitable, 30)
    return loop.time() - began


async def subscribe_once(broadcaster: RedisBroadcaster, channel: str) -> None:
    async with broadcaster.subscribe(channel):
        pass


async def test_frozen_redis_costs_the_first_caller_one_timeout_and_the_next_nothing(
    redis_server, quick, caplog
):
    assert await quick.publish("warm", 1) == 0  # a pooled connection exists
    redis_server.freeze()
    publishers = [await timed_failure(quick.publish("a", n)) for n in range(10)]
    subscriber = await timed_failure(subscribe_once(quick, "a"))
    print(
        f"frozen Redis, timeout {TIMEOUT}s: 503 after {publishers[0]:.3f}s (1st caller), "
        f"{publishers[9]:.4f}s (10th), {subscriber:.4f}s (a subscriber)"
    )
    assert TIMEOUT * 0.9 <= publishers[0] <= TIMEOUT + 0.4
    assert max(publishers[1:]) < 0.05, publishers
    assert subscriber < 0.05
    assert quick.unavailable
    opened = [r for r in caplog.records if "did not answer" in r.getMessage()]
    assert [r.levelno for r in opened] == [logging.WARNING]

    # Still frozen after retry_after: one caller probes (one timeout), the others
    # meanwhile fail at once.
    await wait_until(lambda: time.monotonic() >= quick._probe_at, what="the probe time")
    probe = asyncio.ensure_future(timed_failure(quick.publish("a", "probe")))
    await settle()
    assert await timed_failure(quick.publish("a", "meanwhile")) < 0.05
    assert TIMEOUT * 0.9 <= await probe <= TIMEOUT + 0.4

    # Back again: after retry_after, one probe closes the circuit.
    redis_server.thaw()

    async def publishes() -> bool:
        try:
            await quick.publish("a", "back")
        except BroadcastUnavailable:
            return False
        return True

    await wait_until(publishes, what="publishing again after Redis thawed")
    assert not quick.unavailable
    assert errors(caplog) == []


async def test_concurrent_callers_on_a_frozen_redis_wait_one_timeout_at_most(redis_server, quick):
    assert await quick.publish("warm", 1) == 0
    redis_server.freeze()
    times = await asyncio.gather(
        *(timed_failure(quick.publish("a", n)) for n in range(10)),
        *(timed_failure(subscribe_once(quick, f"c{n}")) for n in range(5)),
    )
    assert max(times) <= TIMEOUT + 0.4, times


async def test_frozen_redis_ends_subscriptions_within_the_stated_bound(redis_server, quick, caplog):
    async with quick.subscribe("a") as messages:
        await quick.publish("a", 1)
        assert await asyncio.wait_for(messages.__anext__(), 2) == 1
        loop = asyncio.get_running_loop()
        redis_server.freeze()
        began = loop.time()
        rest = asyncio.ensure_future(messages.__anext__())
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(rest, 10)
        detected = loop.time() - began
    print(f"frozen Redis: subscription ended after {detected:.2f}s")
    assert messages.ended is EndReason.CONNECTION_LOST
    assert detected <= quick.health_check_interval + quick.timeout + 1.0
    assert errors(caplog) == []


async def test_a_silently_dead_connection_is_detected_and_ends_subscriptions(proxy, caplog):
    broadcaster = RedisBroadcaster(proxy.url, timeout=TIMEOUT, health_check_interval=0.5)
    try:
        async with broadcaster.subscribe("a") as messages:
            await broadcaster.publish("a", "before")
            assert await asyncio.wait_for(messages.__anext__(), 2) == "before"
            loop = asyncio.get_running_loop()
            proxy.partition()
            began = loop.time()
            rest = asyncio.ensure_future(messages.__anext__())
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(rest, 10)
            detected = loop.time() - began
            assert messages.ended is EndReason.CONNECTION_LOST
        bound = broadcaster.health_check_interval + broadcaster.timeout + 1.0
        print(f"partitioned Redis: dead connection detected after {detected:.2f}s (bound {bound}s)")
        assert detected <= bound
        lost = [r for r in caplog.records if "Redis connection lost" in r.getMessage()]
        assert [r.levelno for r in lost] == [logging.WARNING]

        # New callers: one timeout for the first, then at once.
        first = await timed_failure(broadcaster.publish("a", 1))
        tenth = [await timed_failure(broadcaster.publish("a", n)) for n in range(9)][-1]
        print(f"partitioned Redis: 503 after {first:.3f}s (1st caller), {tenth:.4f}s (10th)")
        assert first <= TIMEOUT + 0.4
        assert tenth < 0.05

        proxy.heal()

        async def subscribes() -> bool:
            try:
                await subscribe_once(broadcaster, "a")
            except BroadcastUnavailable:
                return False
            return True

        await wait_until(subscribes, what="subscribing again once the partition healed")
        assert errors(caplog) == []
    finally:
        await broadcaster.close()


async def test_killed_and_restarted_redis_is_used_again_at_once(redis_server, quick):
    async with quick.subscribe("a") as messages:
        redis_server.kill()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(messages.__anext__(), 5)
    # Refused connections fail fast on their own: no circuit, no waiting after a restart.
    assert await timed_failure(quick.publish("a", 1)) < TIMEOUT
    assert not quick.unavailable
    redis_server.start()
    async with quick.subscribe("a") as again:
        await quick.publish("a", "back")
        assert await asyncio.wait_for(again.__anext__(), 2) == "back"


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("timeout", 0, ValueError),
        ("timeout", float("nan"), ValueError),
        ("health_check_interval", -1, ValueError),
        ("retry_after", float("inf"), ValueError),
        ("retry_after", "1", TypeError),
        ("timeout", True, TypeError),
    ],
)
async def test_bad_durations_are_refused_at_construction(name, value, error):
    with pytest.raises(error, match=name):
        RedisBroadcaster(**{name: value})
