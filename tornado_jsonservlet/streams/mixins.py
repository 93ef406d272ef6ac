"""Long-lived responses that stop when the client leaves: SSE, JSON lines, long-poll.

A hand-written event stream in Tornado is ``while True: self.write(...); await
self.flush()``. It keeps running after the client closed its tab (until a write
happens to fail), forever for a client that vanished without a FIN (nothing is
written that could fail), and it buffers without limit for a client that reads
slowly. The mixins here build on :class:`~tornado_jsonservlet.disconnect.CancelOnDisconnectMixin`
so that the end of a stream is an ordinary event:

* **The client leaves.** A GET stream is cancelled at its next ``await`` (what the
  producer awaits: a subscription, a sleep, a flush). Its ``finally`` blocks run,
  its ``spawn``\\ed children and timers are cancelled, and the access log records
  one line with status 499. Nothing is logged at ERROR. Where cancellation is
  opted out, the next send raises ``StreamClosedError`` instead (never logged), so
  a producer loop ends either way and cannot spin on no-op writes.
* **The server ends it.** The handler returns; the response is finished normally
  and logged once with its status (200).
* **Backpressure.** Every send awaits its flush, so a producer runs at its own
  client's pace. Sends are serialised (Tornado's HTTP/1 connection supports one
  flush in flight at a time). Bytes handed to the stream but not yet accepted by
  the kernel are counted (:attr:`StreamingResponseMixin.buffered_bytes`). A
  client that falls further behind than ``max_buffered_bytes`` (several producers
  sending concurrently to one slow client, for instance) has its connection
  closed, which the disconnect machinery then treats like any departure; this is
  logged at INFO. A single event bigger than the limit is still sent when nothing
  else is waiting: the bound is ``max_buffered_bytes`` plus one event.
* **Fairness.** When the kernel accepts every write at once, a flush completes
  without suspending; a producer that never waits for anything else would then
  hold the event loop. A send yields to the loop when 5 ms have passed since the
  last time it did.
* **Silent peers** (laptop lid, NAT timeout) are found by the SSE heartbeat: a
  comment line written after ``heartbeat_interval`` idle seconds. A write to a
  connection that the peer has forgotten fails, and the handler is cancelled.
* **HEAD.** A HEAD request gets the stream's headers and ends at the first send
  (or ``start_stream()``, or ``relay_events()``): the producer is ended with
  ``tornado.web.Finish``, never logged, and the keep-alive connection serves the
  next request.
* **Relays.** :meth:`EventStreamMixin.relay_events` writes each message of a
  broadcaster subscription from inside ``publish()``: no task is woken per
  subscriber and each message is encoded once, which is what lets one process
  serve thousands of subscribers of a busy channel.

Every byte goes through one :class:`~tornado_jsonservlet.stream_writer.OrderedWriter`
per response (Tornado's HTTP/1 connection takes one write at a time). Of the
disconnect mixins, only their public API is used here, and
``_without_stream_closed``, which turns a write that found the connection closed
into a recorded disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterable, Awaitable
from typing import Any, ClassVar, NoReturn, Optional, TypeVar, Union

import tornado.web
from tornado.httputil import HTTPOutputError
from tornado.iostream import IOStream, StreamClosedError

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.cancellation import CancelOnDisconnectMixin
from tornado_jsonservlet.core.scope import scope_of
from tornado_jsonservlet.errors.exceptions import BadRequest
from tornado_jsonservlet.jsonio.codec import encode
from tornado_jsonservlet.production.shutdown import shutdown_notice
from tornado_jsonservlet.streams.broadcast import EndReason, Subscription
from tornado_jsonservlet.streams.sse_format import (
    HEARTBEAT,
    ServerSentEvent,
    format_comment,
    format_event,
    parse_last_event_id,
)
from tornado_jsonservlet.streams.writer import OrderedWriter

__all__ = [
    "EVENT_STREAM_CONTENT_TYPE",
    "JSON_LINES_CONTENT_TYPE",
    "EventStreamMixin",
    "JsonLinesMixin",
    "LongPollMixin",
    "StreamingResponseMixin",
]

_T = TypeVar("_T")

EVENT_STREAM_CONTENT_TYPE = "text/event-stream"
JSON_LINES_CONTENT_TYPE = "application/x-ndjson"

log = logging.getLogger("tornado_jsonservlet.streaming")

# A producer whose flushes all complete at once (the kernel takes everything)
# never suspends; it yields to the event loop after this long so that other
# requests are not starved.
_MAX_RUN_SECONDS = 0.005

# How long a dropped slow client may take to be reported gone by the connection
# layer; it is immediate in practice (the next loop iteration).
_DROP_NOTICE_SECONDS = 1.0


def _positive_number(cls: type, name: str, allow_none: bool) -> None:
    value = getattr(cls, name)
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise TypeError(f"{cls.__name__}.{name} must be a positive number, not {value!r}")


class _StreamState:
    """A streamed response's state in its request scope (``scope.stream``)."""

    __slots__ = (
        "direct_stream",
        "direct_writes",
        "dropping",
        "last_event_id",
        "last_event_id_read",
        "last_sent",
        "stream_started",
        "writer",
        "yielded_at",
    )

    def __init__(self) -> None:
        self.stream_started = False
        self.writer: Optional[OrderedWriter] = None
        self.direct_writes = False
        self.direct_stream: Optional[IOStream] = None
        self.last_sent = 0.0
        self.dropping = False
        self.yielded_at = 0.0
        self.last_event_id_read = False
        self.last_event_id: Optional[str] = None


def _stream_state(handler: tornado.web.RequestHandler) -> _StreamState:
    scope = scope_of(handler)
    state: Optional[_StreamState] = scope.stream
    if state is None:
        state = scope.stream = _StreamState()
    return state


class StreamingResponseMixin(CancelOnDisconnectMixin):
    """Shared machinery of streamed responses: headers, serialised sends, the byte bound.

    Use :class:`EventStreamMixin` or :class:`JsonLinesMixin`; subclass this one
    for another streamed format (override :meth:`set_stream_headers`).
    """

    #: Bytes a client may fall behind by before its connection is closed.
    max_buffered_bytes: ClassVar[int] = 1024 * 1024

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A configuration mistake is reported when the class is defined, not
        # when the first client connects.
        _positive_number(cls, "max_buffered_bytes", allow_none=False)

    # -- public API ------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Bytes handed to the stream that the kernel has not accepted yet.

        Counts the write in flight and any sends waiting behind it; the connection
        is closed when a new send finds more than ``max_buffered_bytes`` here.
        """
        writer = _stream_state(self).writer
        return 0 if writer is None else writer.buffered

    @property
    def stream_started(self) -> bool:
        """True once the response headers went out; errors can no longer be rendered."""
        return _stream_state(self).stream_started

    async def start_stream(self) -> None:
        """Send the headers now rather than with the first item.

        Useful when the first item may take a while: the client sees the stream
        open at once (an ``EventSource`` fires ``open``).
        """
        if not _stream_state(self).stream_started:
            await self.send_bytes(b"")

    def set_stream_headers(self) -> None:
        """Set the response headers of the stream; called once, before they are sent."""

    async def send_bytes(self, data: bytes) -> None:
        """Write ``data`` as it is and wait until it is flushed.

        The building block of the format-specific methods. Sends are written in
        the order they are made; concurrent callers wait for their own data.

        :raises StreamClosedError: the client has gone and this request is not
            cancelled on disconnect (a cancellable one is cancelled instead).
        """
        if self.request.method == "HEAD":
            await self._jsonservlet_end_head()
        if not self._jsonservlet_connected():
            await self._jsonservlet_stop_producer()
        flushed = self._jsonservlet_send_now(data)
        if _stream_state(self).dropping:
            await self._jsonservlet_wait_until_dropped()
        if flushed is not None:
            # Shielded: the future is shared by everything queued with this data.
            await asyncio.shield(flushed)
        if not self._jsonservlet_connected():
            # The flush found the connection closed; it was recorded as a
            # disconnect. A cancellable request is cancelled at this await.
            await self._jsonservlet_stop_producer()
        now = asyncio.get_running_loop().time()
        if now - _stream_state(self).yielded_at >= _MAX_RUN_SECONDS:
            await asyncio.sleep(0)
            _stream_state(self).yielded_at = now

    # -- machinery -------------------------------------------------------------

    def _jsonservlet_send_now(self, data: bytes) -> Optional[asyncio.Future[None]]:
        """Hand ``data`` to the connection after everything sent before.

        Returns ``None`` when the kernel took it at once, else a future resolved
        once it is flushed. A client already ``max_buffered_bytes`` behind is
        disconnected instead, and nothing is sent. Never suspends, so a relay can
        call it from inside ``publish``.
        """
        writer = _stream_state(self).writer
        if writer is None:
            writer = _stream_state(self).writer = OrderedWriter(self._jsonservlet_write_chunk)
        behind = writer.buffered
        if behind and behind + len(data) > self.max_buffered_bytes:
            self._jsonservlet_close_slow_client(behind + len(data))
            return None
        _stream_state(self).last_sent = asyncio.get_running_loop().time()
        return writer.send(data)

    def _jsonservlet_write_chunk(self, data: bytes) -> Optional[asyncio.Future[None]]:
        """The one place a stream's bytes reach Tornado (called by the writer).

        The first chunk goes out with the headers through ``flush()``. After that,
        when no output transform (gzip) must see the chunks and the method is not
        HEAD, a chunk is written the way ``flush()`` would end up writing it, but
        without its bookkeeping: straight to the socket when the connection is a
        plain TCP stream with nothing pending (the common case, and what
        ``IOStream.write`` itself does first), else through the connection. For a
        small event that is a third of the cost, which is what a fan-out to
        thousands of clients is made of.

        Once the response is finished, a chunk still queued (a spawned sender's,
        cancelled with the request) is dropped: written now, it would follow the
        terminating chunk, where the next response on the connection begins.
        """
        if tornado_internals.is_finished(self):
            return None
        if _stream_state(self).direct_writes:
            stream = _stream_state(self).direct_stream
            if stream is not None and not stream.writing() and not stream.closed():
                framed = b"%x\r\n%b\r\n" % (len(data), data) if data else data
                try:
                    sent = stream.socket.send(framed)
                except OSError:  # EAGAIN, or an error that stream.write reports properly
                    sent = 0
                if sent == len(framed):
                    return None
                return self._jsonservlet_quiet(stream.write(framed[sent:]))
            return self._jsonservlet_write_through_connection(data)
        first = not _stream_state(self).stream_started
        if first:
            _stream_state(self).stream_started = True
            self.set_stream_headers()
            self._jsonservlet_disable_nagle()
            self._jsonservlet_stream_opened()
        self.write(data)
        flushed = self.flush()
        if first:
            self._jsonservlet_choose_direct_writes()
        return flushed

    def _jsonservlet_write_through_connection(self, data: bytes) -> asyncio.Future[None]:
        connection = self.request.connection
        assert connection is not None
        try:
            written = connection.write(data)
        except HTTPOutputError:
            # More than a Content-Length set by the application: Tornado closed
            # the stream, a server error that flush() reports the same way.
            scope_of(self).closed_by_server = True
            raise
        return self._jsonservlet_quiet(written)

    def _jsonservlet_choose_direct_writes(self) -> None:
        # Decided once the headers are out: only then is the framing known.
        if tornado_internals.transforms_of(self) != [] or self.request.method == "HEAD":
            return  # every chunk must go through flush()
        _stream_state(self).direct_writes = True
        stream = getattr(self.request.connection, "stream", None)
        chunked = tornado_internals.response_headers(self).get("Transfer-Encoding") == "chunked"
        if type(stream) is IOStream and chunked and not stream.closed():
            _stream_state(self).direct_stream = stream

    def _jsonservlet_stream_opened(self) -> None:
        """Called once, just before the headers are flushed."""

    async def _jsonservlet_end_head(self) -> NoReturn:
        """HEAD: send the stream's headers, finish, and end the producer.

        A HEAD response has no body, so nothing the producer could send would
        ever reach the client, and a producer left running would hold the
        request, and the keep-alive connection behind it, open for nothing.
        ``tornado.web.Finish`` ends the handler without an error or a log line.
        """
        if not tornado_internals.is_finished(self):
            state = _stream_state(self)
            if not state.stream_started:
                state.stream_started = True
                self.set_stream_headers()
                await self.flush()  # the headers: GET's, without a body
            if not tornado_internals.is_finished(self):
                self.finish()
        raise tornado.web.Finish()

    def _jsonservlet_connected(self) -> bool:
        # A method, not the property: the answer changes across awaits.
        return not self.client_disconnected

    def _jsonservlet_disable_nagle(self) -> None:
        # Events are small and latency matters: TCP_NODELAY on. Connections the
        # toolkit serves have it on already; this covers any other stream.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None and not stream.closed():
            stream.set_nodelay(True)

    async def _jsonservlet_stop_producer(self) -> NoReturn:
        # Give the disconnect machinery its chance to cancel this task (the
        # cancellation lands at this await); where cancellation is opted out, end
        # the producer with an exception that is never logged.
        await asyncio.sleep(0)
        raise StreamClosedError(real_error=None)

    def _jsonservlet_close_slow_client(self, behind: int) -> None:
        if _stream_state(self).dropping:
            return
        _stream_state(self).dropping = True
        log.info(
            "Client fell %d bytes behind (max_buffered_bytes=%d); closing its connection: %s",
            behind,
            self.max_buffered_bytes,
            tornado_internals.request_summary(self),
        )
        # A departure the server decided, recorded as both: the client is gone
        # for everything downstream (its output, its hooks, its 499), and the
        # close that follows is the toolkit's, not the client's (as for a write
        # that stalls for write_timeout).
        self._jsonservlet_client_left()
        scope_of(self).closed_by_server = True
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.close()

    async def _jsonservlet_wait_until_dropped(self) -> NoReturn:
        # Wait for the disconnect machinery to notice (and cancel this task, where
        # it is cancellable). asyncio.wait, unlike wait_for on Python < 3.12,
        # never swallows a cancellation that arrives together with the result.
        gone = self.wait_for_disconnect()
        try:
            await asyncio.wait({gone}, timeout=_DROP_NOTICE_SECONDS)
        finally:
            gone.cancel()
        await self._jsonservlet_stop_producer()


class EventStreamMixin(StreamingResponseMixin):
    """Server-sent events: ``await self.send_event(data, event=..., id=..., retry=...)``.

    ::

        class ClockHandler(EventStreamMixin, tornado.web.RequestHandler):
            async def get(self):
                n = int(self.last_event_id or 0)
                while True:
                    n += 1
                    await self.send_event({"n": n}, id=n)
                    await asyncio.sleep(1)

    The stream starts with the first event (or
    :meth:`~tornado_jsonservlet.streams.mixins.StreamingResponseMixin.start_stream`), with
    ``Content-Type: text/event-stream``, ``Cache-Control: no-cache`` and
    ``X-Accel-Buffering: no`` (nginx passes events through unbuffered). While it
    is idle, a comment line is sent every ``heartbeat_interval`` seconds.

    .. versionadded:: 0.1
    """

    #: Seconds of silence before a heartbeat comment is sent; ``None`` disables it.
    heartbeat_interval: ClassVar[Optional[float]] = 15.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _positive_number(cls, "heartbeat_interval", allow_none=True)

    @property
    def last_event_id(self) -> Optional[str]:
        """The ``Last-Event-ID`` a reconnecting client sent, or ``None``.

        Read it before the first event: an invalid value (over 256 characters, not
        UTF-8, containing CR, LF or NUL) raises a 400 ``INVALID_HEADER`` error,
        which can only be rendered before the stream starts.
        """
        if not _stream_state(self).last_event_id_read:
            try:
                _stream_state(self).last_event_id = parse_last_event_id(
                    self.request.headers.get("Last-Event-ID")
                )
            except ValueError as error:
                raise BadRequest(str(error), "INVALID_HEADER", header="Last-Event-ID") from None
            _stream_state(self).last_event_id_read = True
        return _stream_state(self).last_event_id

    async def send_event(
        self,
        data: Any,
        *,
        event: Optional[str] = None,
        id: Optional[Union[str, int]] = None,  # the SSE field's name
        retry: Optional[int] = None,
    ) -> None:
        """Send one event and wait until it is flushed.

        ``data`` that is a ``str`` is sent as text (split into ``data:`` lines at
        CR, LF and CRLF, as the WHATWG parser reads them); anything else (dict,
        list, number, bool, None) is sent as JSON. ``retry`` (milliseconds) tells
        the client how long to wait before reconnecting.

        :raises ValueError: ``event`` or ``id`` containing a line break (and ``id``
            a NUL), or a negative ``retry``. Nothing is sent.
        :raises TypeError: data that JSON cannot represent, or a
            :class:`ServerSentEvent` given with other fields. Nothing is sent.
        :raises StreamClosedError: see
            :meth:`~tornado_jsonservlet.streams.mixins.StreamingResponseMixin.send_bytes`.
        """
        if isinstance(data, ServerSentEvent):
            if event is not None or id is not None or retry is not None:
                raise TypeError(
                    "a ServerSentEvent carries its own event, id and retry; "
                    "give them when creating it"
                )
            await self.send_bytes(data.encoded)
        else:
            await self.send_bytes(format_event(data, event=event, id=id, retry=retry))

    async def relay_events(
        self, messages: Subscription, *, event: Optional[str] = None
    ) -> Optional[EndReason]:
        """Send every message of a broadcaster subscription as an event, until it ends.

        ::

            async with broadcaster.subscribe("news") as messages:
                await self.relay_events(messages)

        The same as ``async for m in messages: await self.send_event(m,
        event=event)``, but much cheaper for a channel with many subscribers:
        the message is written to this client from inside ``publish()``, with
        no task woken per subscriber, and encoded once per publish rather than
        once per subscriber. A :class:`ServerSentEvent` message is sent with its
        own fields, whatever ``event`` says (its id lets clients resume); any
        other message is sent as ``data`` (JSON unless a ``str``) with ``event``.

        Everything else is as with :meth:`send_event`: the heartbeat, the
        ``max_buffered_bytes`` bound (a client further behind is disconnected,
        and logged at INFO), and cancellation when the client leaves. Returns
        why the subscription ended (``subscription.ended``) once everything
        before that is flushed.

        :raises TypeError: a message JSON cannot represent, or whatever else
            encoding or writing a message raised (the stream has started, so the
            connection is then aborted). The publisher and the other
            subscribers are not affected.
        :raises StreamClosedError: the client left and this request is not
            cancelled on disconnect.
        """
        await self.start_stream()
        failures: list[Exception] = []
        encode_key = ("sse", event)

        def receive(message: Any, memo: dict[Any, Any]) -> None:
            # Runs inside publish(): whatever goes wrong here is this handler's
            # failure, raised by relay_events, never the publisher's (an encoder
            # may raise anything, an application-set Content-Length makes the
            # write raise), and the other subscribers still get the message.
            if failures or _stream_state(self).dropping or not self._jsonservlet_connected():
                return
            try:
                data = memo.get(encode_key)
                if data is None:
                    data = memo[encode_key] = _event_bytes(message, event)
                self._jsonservlet_send_now(data)
            except Exception as error:
                failures.append(error)
                messages._wake()

        messages._receive_with(receive)
        # A departed client wakes the loop below; so does a slow one, whose
        # connection _send_now closed (that close is a disconnect too).
        self.add_disconnect_callback(messages._wake)
        try:
            while messages.ended is None and not failures and self._jsonservlet_connected():
                await messages._until_woken()
        finally:
            messages._receive_with(None)
        if failures:
            raise failures[0]
        if _stream_state(self).dropping:
            await self._jsonservlet_wait_until_dropped()
        writer = _stream_state(self).writer
        if self._jsonservlet_connected() and writer is not None:
            await writer.drained()
        if not self._jsonservlet_connected():
            await self._jsonservlet_stop_producer()
        return messages.ended

    async def send_comment(self, text: str = "") -> None:
        """Send a comment line, which clients ignore (a heartbeat with a message)."""
        await self.send_bytes(format_comment(text))

    def set_stream_headers(self) -> None:
        """``text/event-stream``, ``Cache-Control: no-cache`` and
        ``X-Accel-Buffering: no`` (nginx then passes events through unbuffered).
        """
        self.set_header("Content-Type", EVENT_STREAM_CONTENT_TYPE)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    # -- heartbeat -------------------------------------------------------------

    def _jsonservlet_stream_opened(self) -> None:
        super()._jsonservlet_stream_opened()
        _stream_state(self).last_sent = asyncio.get_running_loop().time()
        if self.heartbeat_interval is not None:
            self.call_later(self.heartbeat_interval, self._jsonservlet_heartbeat_due)

    def _jsonservlet_heartbeat_due(self) -> None:
        """Timer callback: send a heartbeat if nothing was sent for a whole interval.

        The timer belongs to the request (``call_later``), so it stops when the
        client leaves or the response finishes. A heartbeat is skipped while a
        send is in flight: that send already probes the connection.
        """
        interval = self.heartbeat_interval
        if interval is None or self.client_disconnected or tornado_internals.is_finished(self):
            return
        idle = asyncio.get_running_loop().time() - _stream_state(self).last_sent
        # (timers may fire a clock tick early, hence the tolerance)
        if idle >= interval * 0.99 and self.buffered_bytes == 0:
            self.spawn(self._jsonservlet_send_heartbeat())
            delay = interval
        else:
            delay = max(interval - idle, interval / 10)
        self.call_later(delay, self._jsonservlet_heartbeat_due)

    async def _jsonservlet_send_heartbeat(self) -> None:
        # A StreamClosedError here means the disconnect is already recorded and the
        # producer is being stopped: nothing to report.
        with contextlib.suppress(StreamClosedError):
            await self.send_bytes(HEARTBEAT)


def _event_bytes(message: Any, event: Optional[str]) -> bytes:
    if isinstance(message, ServerSentEvent):
        return message.encoded
    return format_event(message, event=event)


class JsonLinesMixin(StreamingResponseMixin):
    """JSON lines: ``await self.stream_json_lines(async_iterable)``.

    ::

        class ExportHandler(JsonLinesMixin, tornado.web.RequestHandler):
            async def get(self):
                await self.stream_json_lines(db.iterate_rows())

    .. versionadded:: 0.1
    """

    async def stream_json_lines(self, items: AsyncIterable[Any]) -> None:
        """Send each item as one line of JSON (``application/x-ndjson``), then finish.

        Each line awaits its flush (backpressure). The iterator is closed with
        ``aclose()`` when the stream ends for any reason, the client leaving
        included, so an async generator's ``finally`` blocks run at once.

        :raises TypeError: an item JSON cannot represent. Before the first line,
            the error is rendered as a response; after it, the connection is
            aborted so the client sees a truncated stream, never a clean end.
        """
        iterator = items.__aiter__()
        try:
            async for item in iterator:
                await self.send_bytes(encode(item) + b"\n")
            await self.start_stream()  # an empty stream still gets its headers
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        await self.finish()

    def set_stream_headers(self) -> None:
        """``application/x-ndjson``, ``Cache-Control: no-cache`` and
        ``X-Accel-Buffering: no``.
        """
        self.set_header("Content-Type", JSON_LINES_CONTENT_TYPE)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")


class LongPollMixin(CancelOnDisconnectMixin):
    """Long-poll: wait for the next message, a timeout, or the client leaving.

    ::

        class UpdatesHandler(LongPollMixin, JsonResponseMixin, tornado.web.RequestHandler):
            async def get(self):
                async with broadcaster.subscribe("news") as messages:
                    message = await self.long_poll(messages, timeout=25)
                if message is None:
                    self.set_status(204)
                else:
                    await self.write_json(message)

    .. versionadded:: 0.1
    """

    async def long_poll(
        self, source: Union[AsyncIterable[_T], Awaitable[_T]], *, timeout: float
    ) -> Optional[_T]:
        """The next item of ``source`` (an async iterable, or an awaitable).

        Returns ``None`` if ``timeout`` seconds pass first, if an iterable ends, if
        the server begins a graceful shutdown (see
        :func:`~tornado_jsonservlet.production.shutdown.shutdown_notice`), or if the
        client leaves (``client_disconnected`` then says so). A GET is
        cancelled instead when its client leaves (499, no ERROR). Whatever ends
        the wait, the pending read of ``source`` is cancelled before this returns:
        with a :class:`~tornado_jsonservlet.broadcast.Subscription` no message is
        lost, it stays queued for the next read; an async generator is finished by
        the cancellation.

        :raises ValueError: ``timeout`` not a positive number.
        """
        if isinstance(timeout, bool) or not (
            isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if self.client_disconnected:
            if asyncio.iscoroutine(source):
                source.close()  # never awaited: close it so Python does not warn
            return None
        if isinstance(source, AsyncIterable):
            next_item: Awaitable[_T] = source.__aiter__().__anext__()
        else:
            next_item = source
        reader: asyncio.Future[_T] = asyncio.ensure_future(next_item)
        gone: asyncio.Future[Any] = self.wait_for_disconnect()
        # A shutdown ends the wait like a timeout: the client gets its usual
        # "nothing yet" answer at once and polls again (another process, after a
        # restart), instead of a 503 when the grace period runs out.
        draining: asyncio.Future[None] = shutdown_notice(self)
        try:
            await asyncio.wait(
                {reader, gone, draining}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if reader.done() and not reader.cancelled():
                error = reader.exception()
                if isinstance(error, StopAsyncIteration):
                    return None
                return reader.result()
            return None
        finally:
            gone.cancel()
            draining.cancel()
            if not reader.done():
                reader.cancel()
                # Let the read unwind now, so no task outlives the request.
                await asyncio.wait({reader})
