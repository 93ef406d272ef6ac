"""InMemoryBroadcaster: delivery, clean-up on exit and cancellation, the lagging policy."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from tests.support import nothing_happens_within
from tornado_jsonservlet import BroadcastUnavailable, EndReason, InMemoryBroadcaster

pytestmark = pytest.mark.gen_test


async def collect(subscription, count: int) -> list[object]:
    received = []
    async for message in subscription:
        received.append(message)
        if len(received) == count:
            break
    return received


async def test_publish_reaches_every_subscriber_of_the_channel():
    broadcaster = InMemoryBroadcaster()
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(broadcaster.subscribe("a"))
        second = await stack.enter_async_context(broadcaster.subscribe("a"))
        other = await stack.enter_async_context(broadcaster.subscribe("b"))
        assert broadcaster.subscriber_count("a") == 2
        assert broadcaster.subscriber_count() == 3
        assert await broadcaster.publish("a", {"n": 1}) == 2
        assert await broadcaster.publish("a", [2]) == 2
        assert await broadcaster.publish("nobody", 3) == 0
        assert await collect(first, 2) == [{"n": 1}, [2]]
        assert await collect(second, 2) == [{"n": 1}, [2]]
        assert other.pending == 0
    assert broadcaster.subscriber_count() == 0
    assert first.ended is EndReason.UNSUBSCRIBED


async def test_a_waiting_reader_is_woken_by_publish():
    broadcaster = InMemoryBroadcaster()
    async with broadcaster.subscribe("a") as messages:
        reader = asyncio.ensure_future(collect(messages, 1))
        await nothing_happens_within(0.01, what="the reader returning before a publish")
        assert not reader.done()
        await broadcaster.publish("a", "hi")
        assert await asyncio.wait_for(reader, 1) == ["hi"]


async def test_cancelled_subscriber_is_removed_and_loses_nothing_queued():
    broadcaster = InMemoryBroadcaster()
    entered = asyncio.Event()

    async def subscriber() -> None:
        async with broadcaster.subscribe("a") as messages:
            entered.set()
            async for _ in messages:
                pass

    task = asyncio.ensure_future(subscriber())
    await entered.wait()
    assert broadcaster.subscriber_count("a") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert broadcaster.subscriber_count() == 0

    # A read cancelled while waiting leaves later messages for the next read.
    async with broadcaster.subscribe("a") as messages:
        read = asyncio.ensure_future(messages.__anext__())
        await asyncio.sleep(0)
        read.cancel()
        await broadcaster.publish("a", "kept")
        with pytest.raises(asyncio.CancelledError):
            await read
        assert await collect(messages, 1) == ["kept"]


async def test_a_lagging_subscriber_is_dropped_after_its_queued_messages(caplog):
    broadcaster = InMemoryBroadcaster(max_queued=3)
    async with broadcaster.subscribe("a") as slow, broadcaster.subscribe("a") as fast:
        for n in range(3):
            assert await broadcaster.publish("a", n) == 2
            assert await collect(fast, 1) == [n]
        assert await broadcaster.publish("a", 3) == 1  # slow is full: dropped
        assert await broadcaster.publish("a", 4) == 1
        assert broadcaster.subscriber_count("a") == 1
        assert await collect(fast, 2) == [3, 4]
        assert [m async for m in slow] == [0, 1, 2]  # what it had, then the end
        assert slow.ended is EndReason.LAGGED
        assert fast.ended is None
    lagged = [r for r in caplog.records if "lagged" in r.getMessage()]
    assert len(lagged) == 1
    assert lagged[0].levelno == logging.INFO


async def test_per_subscription_queue_bound():
    broadcaster = InMemoryBroadcaster(max_queued=100)
    async with broadcaster.subscribe("a", max_queued=1) as tiny:
        await broadcaster.publish("a", 1)
        await broadcaster.publish("a", 2)
        assert [m async for m in tiny] == [1]
        assert tiny.ended is EndReason.LAGGED


async def test_close_ends_subscriptions_and_refuses_new_ones():
    broadcaster = InMemoryBroadcaster()
    async with broadcaster.subscribe("a") as messages:
        reader = asyncio.ensure_future(collect(messages, 10))
        await asyncio.sleep(0)
        await broadcaster.close()
        assert await asyncio.wait_for(reader, 1) == []
        assert messages.ended is EndReason.BROADCASTER_CLOSED
    with pytest.raises(BroadcastUnavailable) as refused:
        async with broadcaster.subscribe("a"):
            pass
    assert refused.value.status_code == 503
    assert refused.value.errcode == "UNAVAILABLE"


def test_configuration_mistakes_raise_at_once():
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_queued"):
            InMemoryBroadcaster(max_queued=bad)  # type: ignore[arg-type]
    broadcaster = InMemoryBroadcaster()
    with pytest.raises(TypeError, match="channel"):
        broadcaster.subscribe(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_queued"):
        broadcaster.subscribe("a", max_queued=0)


# -- receivers (what relays use) --------------------------------------------------------


async def test_a_receiver_gets_queued_messages_first_then_each_publish_at_once():
    broadcaster = InMemoryBroadcaster(max_queued=2)
    received: list[object] = []
    async with broadcaster.subscribe("a") as messages:
        await broadcaster.publish("a", 1)
        await broadcaster.publish("a", 2)
        messages._receive_with(lambda message, memo: received.append(message))
        assert received == [1, 2]  # handed over in order, before anything new
        assert messages.pending == 0
        for n in range(3, 10):  # far more than max_queued: nothing is queued
            assert await broadcaster.publish("a", n) == 1
            assert received[-1] == n  # inside publish(), no task switch
        assert messages.ended is None
        messages._receive_with(None)  # queued again, for an ordinary reader
        await broadcaster.publish("a", 10)
        assert received == list(range(1, 10))
        assert await collect(messages, 1) == [10]


async def test_one_memo_per_delivery_shared_by_every_receiver():
    broadcaster = InMemoryBroadcaster()
    memos: list[dict[object, object]] = []

    def receive(message: object, memo: dict[object, object]) -> None:
        memo.setdefault("encoded", f"<{message}>")
        memos.append(memo)

    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            subscription = await stack.enter_async_context(broadcaster.subscribe("a"))
            subscription._receive_with(receive)
        await broadcaster.publish("a", "first")
        await broadcaster.publish("a", "second")
    assert len(memos) == 6
    assert all(memo is memos[0] for memo in memos[:3])
    assert all(memo is memos[3] for memo in memos[3:])
    assert memos[0] is not memos[3]
    assert (memos[0]["encoded"], memos[3]["encoded"]) == ("<first>", "<second>")


async def test_until_woken_returns_on_a_wake_or_the_end():
    broadcaster = InMemoryBroadcaster()
    async with broadcaster.subscribe("a") as messages:
        messages._receive_with(lambda message, memo: None)
        waiting = asyncio.ensure_future(messages._until_woken())
        await nothing_happens_within(0.01, what="a wake-up with nothing sent")
        assert not waiting.done()
        await broadcaster.publish("a", "taken by the receiver")
        await nothing_happens_within(0.01, what="a wake-up by a message for the receiver")
        assert not waiting.done()  # a message for the receiver is no wake-up
        messages._wake()
        await asyncio.wait_for(waiting, 1)
        waiting = asyncio.ensure_future(messages._until_woken())
        await asyncio.sleep(0)
        await broadcaster.close()
        await asyncio.wait_for(waiting, 1)
        assert messages.ended is EndReason.BROADCASTER_CLOSED
        await asyncio.wait_for(messages._until_woken(), 1)  # ended: returns at once
