"""One write in flight per response: chunks go out in order, and those that arrive
while a write is pending are coalesced into the next one.

Why this exists
---------------
Tornado's HTTP/1 connection supports one write in flight at a time: a second
``connection.write()`` before the first completes replaces the first's future,
which then never resolves. A streamed response has several writers, though: the
producer, the heartbeat timer, and a relay that writes from inside
``Broadcaster.publish`` without waking the handler's task at all. They all go
through one :class:`OrderedWriter`, which

* writes at once when nothing is pending. The kernel usually takes the whole
  chunk, the write completes synchronously, and :meth:`OrderedWriter.send` returns
  ``None``: no future is created and nobody has to wait;
* otherwise appends the chunk to a queue and returns a future resolved when it
  is flushed. Everything queued while one write is pending leaves in a single
  write, so a client that reads slowly gets fewer, larger writes;
* counts the bytes not yet accepted (:attr:`OrderedWriter.buffered`), which is what
  the streaming mixins bound with ``max_buffered_bytes``.

The writer knows nothing about HTTP: it is handed a function that writes one
chunk and returns ``None`` when the chunk was taken at once, or else a future
resolved once it is written. The future must not fail (the streaming mixins
turn a closed connection into a recorded disconnect first).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

__all__ = ["OrderedWriter"]


def _resolve(waiter: Optional[asyncio.Future[None]]) -> None:
    # A waiter whose awaiting task was cancelled is already done (cancelled).
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _fail(waiter: Optional[asyncio.Future[None]], error: Exception) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_exception(error)
        # Marked as retrieved: a relay sends without awaiting, and its senders
        # learn of the error otherwise. Whoever awaits the waiter still gets it.
        waiter.exception()


class OrderedWriter:
    """Writes chunks in order with at most one write in flight; see the module doc."""

    __slots__ = ("_in_flight", "_in_flight_waiter", "_queue", "_queue_waiter", "_write", "buffered")

    def __init__(self, write: Callable[[bytes], Optional[asyncio.Future[None]]]) -> None:
        self._write = write
        #: Bytes handed to :meth:`send` that the connection has not finished writing.
        self.buffered = 0
        # Bytes of the write in flight; None when there is none. An empty chunk
        # can be in flight too (the headers, and what was written before them).
        self._in_flight: Optional[int] = None
        self._in_flight_waiter: Optional[asyncio.Future[None]] = None
        self._queue: list[bytes] = []
        self._queue_waiter: Optional[asyncio.Future[None]] = None

    @property
    def idle(self) -> bool:
        """True when nothing is being written or waiting to be."""
        return self._in_flight is None and not self._queue

    def send(self, data: bytes) -> Optional[asyncio.Future[None]]:
        """Write ``data`` after everything sent before.

        Returns ``None`` when the connection took it at once, otherwise a future
        resolved once it is flushed. An exception raised by the write function (a
        framing error, say) propagates here when ``data`` is written at once; for
        data written later, when the write before it completes, it fails the
        returned future instead.
        """
        if self._in_flight is not None or self._queue:
            self._queue.append(data)
            self.buffered += len(data)
            if self._queue_waiter is None:
                self._queue_waiter = asyncio.get_running_loop().create_future()
            return self._queue_waiter
        return self._start(data, None)

    async def drained(self) -> None:
        """Wait until everything sent so far is written."""
        while not self.idle:
            waiter = self._queue_waiter if self._queue else self._in_flight_waiter
            if waiter is None:
                waiter = self._in_flight_waiter = asyncio.get_running_loop().create_future()
            # Shielded: a waiter is shared by every sender of the same chunk, and
            # one of them being cancelled must not cancel it for the others.
            await asyncio.shield(waiter)

    def _start(
        self, data: bytes, waiter: Optional[asyncio.Future[None]]
    ) -> Optional[asyncio.Future[None]]:
        written = self._write(data)
        if written is None:  # taken at once, nothing to wait for
            _resolve(waiter)
            return None
        if written.done():
            if not written.cancelled():
                written.exception()  # retrieved: a failed write means the peer is gone
            _resolve(waiter)
            return None
        self._in_flight = len(data)
        self.buffered += len(data)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        self._in_flight_waiter = waiter
        written.add_done_callback(self._written)
        return waiter

    def _written(self, written: asyncio.Future[None]) -> None:
        if not written.cancelled():
            written.exception()
        self.buffered -= self._in_flight or 0
        self._in_flight = None
        waiter, self._in_flight_waiter = self._in_flight_waiter, None
        _resolve(waiter)
        if self._queue:
            data = b"".join(self._queue)
            self._queue.clear()
            self.buffered -= len(data)
            queued_waiter, self._queue_waiter = self._queue_waiter, None
            try:
                self._start(data, queued_waiter)
            except Exception as error:
                # A callback has no caller to raise to: the batch's senders get it.
                _fail(queued_waiter, error)
