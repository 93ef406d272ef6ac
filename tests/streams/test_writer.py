"""OrderedWriter on its own: a write function whose futures the test completes by hand.

No server is needed here: what is tested is the writer's bookkeeping (order, one
write in flight, coalescing, ``buffered``, ``drained()``), which the streaming
tests then exercise end to end over real connections.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Optional

import pytest

from tornado_jsonservlet.streams.writer import OrderedWriter

pytestmark = pytest.mark.gen_test


class FakeConnection:
    """Records each write and hands back a future the test completes."""

    def __init__(self, *, at_once: bool = False) -> None:
        self.at_once = at_once
        self.writes: list[bytes] = []
        self.pending: list[asyncio.Future[None]] = []
        self.fail_with: Optional[BaseException] = None

    def write(self, data: bytes) -> asyncio.Future[None]:
        if self.fail_with is not None:
            raise self.fail_with
        self.writes.append(data)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.at_once:
            future.set_result(None)
        else:
            self.pending.append(future)
        return future

    def complete_next(self) -> None:
        self.pending.pop(0).set_result(None)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_write_the_connection_takes_at_once_creates_no_future():
    connection = FakeConnection(at_once=True)
    writer = OrderedWriter(connection.write)
    assert writer.send(b"abc") is None
    assert writer.send(b"de") is None
    assert connection.writes == [b"abc", b"de"]
    assert writer.buffered == 0
    assert writer.idle
    await writer.drained()  # nothing to wait for


async def test_one_write_in_flight_and_the_rest_coalesced_in_order():
    connection = FakeConnection()
    writer = OrderedWriter(connection.write)
    first = writer.send(b"one")
    second = writer.send(b"two")
    third = writer.send(b"three")
    assert first is not None
    assert second is not None
    assert third is second  # queued together, resolved together
    assert connection.writes == [b"one"]  # the others wait for the first
    assert writer.buffered == len(b"onetwothree")
    assert not writer.idle

    connection.complete_next()
    await settle()
    assert first.done()
    assert not second.done()
    assert connection.writes == [b"one", b"twothree"]  # one write for both
    assert writer.buffered == len(b"twothree")

    fourth = writer.send(b"four")  # behind the coalesced write: a new batch
    assert fourth is not None
    assert fourth is not second
    connection.complete_next()
    await settle()
    assert second.done()
    assert not fourth.done()
    assert connection.writes == [b"one", b"twothree", b"four"]
    connection.complete_next()
    await settle()
    assert fourth.done()
    assert writer.buffered == 0
    assert writer.idle


async def test_a_pending_empty_write_still_holds_the_next_one_back():
    """An empty chunk (``start_stream``'s, which flushes the headers and anything
    written before them) can be pending too; a send behind it must wait, or two
    writes are in flight and Tornado resolves only the second one's future."""
    connection = FakeConnection()
    writer = OrderedWriter(connection.write)
    headers = writer.send(b"")
    assert headers is not None
    behind = writer.send(b"event")
    assert connection.writes == [b""]
    assert not writer.idle
    drained = asyncio.ensure_future(writer.drained())
    await settle()
    assert not drained.done()
    connection.complete_next()
    await settle()
    assert headers.done()
    assert connection.writes == [b"", b"event"]
    assert behind is not None
    assert not behind.done()
    connection.complete_next()
    await settle()
    assert behind.done()
    await asyncio.wait_for(drained, 1)


async def test_drained_waits_for_everything_sent_before():
    connection = FakeConnection()
    writer = OrderedWriter(connection.write)
    writer.send(b"a")
    writer.send(b"b")
    drained = asyncio.ensure_future(writer.drained())
    await settle()
    assert not drained.done()
    connection.complete_next()
    await settle()
    assert not drained.done()  # "b" is still being written
    connection.complete_next()
    await asyncio.wait_for(drained, 1)
    assert writer.idle


async def test_a_cancelled_waiter_does_not_cancel_the_others():
    """Senders of one batch share one future; send_bytes and drained() await it
    shielded, so cancelling one of them leaves the others waiting, and the data is
    written all the same."""
    connection = FakeConnection()
    writer = OrderedWriter(connection.write)
    writer.send(b"in flight")
    batch = writer.send(b"x")
    assert writer.send(b"y") is batch
    assert batch is not None

    async def sender() -> str:
        await asyncio.shield(batch)
        return "flushed"

    cancelled = asyncio.ensure_future(sender())
    kept = asyncio.ensure_future(sender())
    drained_cancelled = asyncio.ensure_future(writer.drained())
    drained_kept = asyncio.ensure_future(writer.drained())
    await settle()
    cancelled.cancel()
    drained_cancelled.cancel()
    await settle()
    assert cancelled.cancelled()
    assert drained_cancelled.cancelled()
    assert not batch.cancelled()
    connection.complete_next()
    await settle()
    assert connection.writes == [b"in flight", b"xy"]
    connection.complete_next()
    assert await asyncio.wait_for(kept, 1) == "flushed"
    await asyncio.wait_for(drained_kept, 1)
    assert writer.buffered == 0


async def test_an_error_writing_a_queued_batch_reaches_its_senders(caplog):
    """The write function may raise (Tornado refuses more bytes than a
    Content-Length announced). For a batch written from the completion callback
    there is no caller to raise to: the batch's future carries the error, so
    its senders see it, and asyncio logs nothing."""
    connection = FakeConnection()
    writer = OrderedWriter(connection.write)
    writer.send(b"first")
    batch = writer.send(b"too much")
    assert batch is not None
    connection.fail_with = RuntimeError("framing error")
    connection.complete_next()
    await settle()
    assert batch.done()
    with pytest.raises(RuntimeError, match="framing error"):
        await asyncio.shield(batch)
    assert writer.buffered == 0
    assert writer.idle
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_error_writing_at_once_propagates_and_leaves_the_writer_usable():
    connection = FakeConnection(at_once=True)
    writer = OrderedWriter(connection.write)
    connection.fail_with = ValueError("refused")
    with pytest.raises(ValueError, match="refused"):
        writer.send(b"x")
    assert writer.idle
    connection.fail_with = None
    assert writer.send(b"y") is None
    assert connection.writes == [b"y"]


async def test_a_write_whose_future_fails_is_retrieved_and_the_queue_moves_on(caplog):
    connection = FakeConnection()
    writer = OrderedWriter(connection.write)
    first = writer.send(b"a")
    second = writer.send(b"b")
    connection.pending.pop(0).set_exception(OSError("gone"))
    await settle()
    assert first is not None
    assert first.done()
    assert connection.writes == [b"a", b"b"]
    connection.complete_next()
    await settle()
    assert second is not None
    assert second.done()
    del first, second
    gc.collect()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
