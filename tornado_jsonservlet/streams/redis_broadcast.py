"""Fan-out across processes and hosts through Redis pub/sub.

Needs the ``redis`` extra: ``pip install 'tornado-jsonservlet[redis]'``.

Each process keeps one pub/sub connection, subscribed to the channels its local
subscribers want (a channel is subscribed when its first local subscriber arrives
and unsubscribed, in the background, when its last one leaves). One reader task
hands incoming messages to the local subscriptions, with the same bounded queues
and slow-subscriber policy as :class:`~tornado_jsonservlet.broadcast.InMemoryBroadcaster`.

Messages travel as JSON (:func:`~tornado_jsonservlet.jsonio.encode`), so they must
be JSON-encodable; subscribers receive the decoded value.

Deadlines
---------
Every round trip to Redis (``publish``, subscribing, unsubscribing, the health
check) is bounded by ``timeout`` here, not by redis-py's socket options, whose
defaults differ between redis-py versions (none at all in 5.0, 5 s later). A
Redis that stops answering therefore costs a caller at most one ``timeout``.

When the connection to Redis is lost, the loss is logged at WARNING and every local
subscription ends with ``EndReason.CONNECTION_LOST``: their ``async for`` loops
finish, SSE clients reconnect, and their new subscriptions reconnect to Redis (or
get a 503 ``UNAVAILABLE`` while it is down).

A connection can also die *silently*: a NAT that forgets an idle flow, a network
partition, a frozen server. Nothing then arrives, not even an error. The reader
therefore sends a ``PING`` on the pub/sub connection after
``health_check_interval`` seconds without traffic and counts the connection as
lost when no answer comes within ``timeout``: a dead connection is detected
within ``health_check_interval + timeout`` (plus at most one second of polling).

Failing fast while Redis is down
--------------------------------
A round trip that runs out of time *opens the circuit*: for the next
``retry_after`` seconds, ``publish`` and ``subscribe`` raise
:class:`~tornado_jsonservlet.broadcast.BroadcastUnavailable` at once instead of
each waiting out its own timeout. After that, one caller at a time is let through
as a probe (the others still fail at once); its success closes the circuit. So
with Redis frozen the first caller gets its 503 after one ``timeout`` and the
following ones at once. Errors that come fast by themselves (connection refused
by a stopped Redis) do not open the circuit, so a restarted Redis is used at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any, Optional

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tornado_jsonservlet.jsonio.codec import decode, encode
from tornado_jsonservlet.streams.broadcast import (
    DEFAULT_MAX_QUEUED,
    Broadcaster,
    BroadcastUnavailable,
    EndReason,
)

__all__ = ["RedisBroadcaster"]

log = logging.getLogger("tornado_jsonservlet.broadcast")

# Errors that mean "Redis cannot be reached", as opposed to a bug.
_CONNECTION_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    asyncio.TimeoutError,
)
# Errors that mean "Redis did not answer in time": the ones that cost a caller a
# whole timeout, and so the ones that open the circuit.
_TIMEOUT_ERRORS = (redis.exceptions.TimeoutError, asyncio.TimeoutError, TimeoutError)

# The reader wakes at least this often when idle (redis-py's pub/sub loop polls too).
_POLL_SECONDS = 1.0
# The payload of the reader's health-check PING, to recognise its answer.
_PING_PAYLOAD = b"tornado-jsonservlet-health-check"


def _positive_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class _DeadConnection(redis.exceptions.TimeoutError):
    """The pub/sub connection did not answer the health check's PING in time."""


async def _cancel_and_wait(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again as needed.

    Before Python 3.12 ``asyncio.wait_for`` inside a task can swallow a cancellation
    that coincides with the completion of what it waits for; one ``cancel()`` is
    then not enough, and waiting for the task would hang.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


class RedisBroadcaster(Broadcaster):
    """A :class:`~tornado_jsonservlet.broadcast.Broadcaster` over Redis pub/sub.

    :param url: where Redis is, e.g. ``redis://127.0.0.1:6379/0``; ignored when
        ``client`` is given.
    :param client: a ``redis.asyncio.Redis`` to use instead (it is not closed by
        :meth:`close`). Give it ``decode_responses=False``; its retry policy applies.
    :param channel_prefix: prepended to every channel name in Redis, to keep
        applications sharing one Redis apart.
    :param timeout: seconds any one round trip to Redis may take (connecting,
        publishing, having a subscription confirmed, answering a health check).
    :param health_check_interval: seconds without traffic on the pub/sub
        connection before the reader checks it with a ``PING``.
    :param retry_after: seconds during which callers fail at once after a round
        trip timed out, before one of them probes Redis again.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: Optional[Any] = None,
        channel_prefix: str = "",
        max_queued: int = DEFAULT_MAX_QUEUED,
        timeout: float = 5.0,
        health_check_interval: float = 5.0,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(max_queued=max_queued)
        if not isinstance(channel_prefix, str):
            raise TypeError("channel_prefix must be a str")
        self.channel_prefix = channel_prefix
        self.timeout = _positive_seconds("timeout", timeout)
        self.health_check_interval = _positive_seconds(
            "health_check_interval", health_check_interval
        )
        self.retry_after = _positive_seconds("retry_after", retry_after)
        self._owns_client = client is None
        # No silent retries: a lost connection must end the subscriptions (their
        # clients resume from Last-Event-ID) rather than drop messages unnoticed.
        self._client: Any = (
            client
            if client is not None
            else redis.asyncio.Redis.from_url(
                url,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
                socket_keepalive=True,
            )
        )
        self._pubsub: Any = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._active: set[str] = set()  # channels whose SUBSCRIBE Redis confirmed
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._lock: Optional[asyncio.Lock] = None
        self._background: set[asyncio.Task[Any]] = set()
        # The circuit: monotonic time it opened (None: closed), next probe time.
        self._open_since: Optional[float] = None
        self._probe_at = 0.0
        self._probing = False

    # -- public API ------------------------------------------------------------

    @property
    def unavailable(self) -> bool:
        """True while the circuit is open: Redis recently failed to answer in time."""
        return self._open_since is not None

    async def publish(self, channel: str, message: Any) -> int:
        """Publish ``message`` (JSON-encoded) to ``channel`` in every process.

        Returns the number of pub/sub connections (roughly: processes with
        subscribers to the channel) that Redis delivered it to.

        :raises BroadcastUnavailable: Redis did not answer within ``timeout``,
            refused the connection, or is known to be unreachable (at once).
        """
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        data = encode(message)
        with self._round_trip(f"message to {channel!r} not published"):
            return int(
                await asyncio.wait_for(
                    self._client.publish(self._name(channel), data), self.timeout
                )
            )
        raise AssertionError("unreachable")  # pragma: no cover - for type checkers

    async def close(self) -> None:
        """End every subscription (``EndReason.BROADCASTER_CLOSED``) and close the
        connection to Redis, unless it was given as ``client``.
        """
        await super().close()
        reader, self._reader = self._reader, None
        if reader is not None:
            await _cancel_and_wait({reader})
        if self._background:
            await _cancel_and_wait(set(self._background))
        await self._drop_pubsub()
        if self._owns_client:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await asyncio.wait_for(self._client.aclose(), self.timeout)

    # -- the circuit -------------------------------------------------------------

    @contextlib.contextmanager
    def _round_trip(self, failure: str) -> Iterator[None]:
        """Run one round trip through the circuit; Redis errors become BroadcastUnavailable.

        While the circuit is open, raise at once, unless it is time for a probe and
        no other caller is probing: then this caller's round trip is the probe.
        """
        probe = False
        if self._open_since is not None:
            if self._probing or time.monotonic() < self._probe_at:
                log.debug("Redis unavailable (circuit open), %s", failure)
                raise BroadcastUnavailable()
            probe = self._probing = True
        try:
            yield
        except _CONNECTION_ERRORS as error:
            if isinstance(error, _TIMEOUT_ERRORS) or probe:
                self._open_circuit(error)
            log.warning("Redis unavailable, %s: %s", failure, self._describe(error))
            raise BroadcastUnavailable() from None
        else:
            if self._open_since is not None:
                log.warning(
                    "Redis answers again after %.1fs; circuit closed",
                    time.monotonic() - self._open_since,
                )
                self._open_since = None
        finally:
            if probe:
                self._probing = False

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, _TIMEOUT_ERRORS) and not str(error):
            return f"no answer within {self.timeout}s"
        return str(error) or type(error).__name__

    def _open_circuit(self, error: BaseException) -> None:
        now = time.monotonic()
        if self._open_since is None:
            self._open_since = now
            log.warning(
                "Redis did not answer (%s); failing fast for %.1fs before probing again",
                self._describe(error),
                self.retry_after,
            )
        self._probe_at = now + self.retry_after

    # -- subscribing -----------------------------------------------------------

    def _name(self, channel: str) -> bytes:
        return (self.channel_prefix + channel).encode("utf-8")

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _channel_ready(self, channel: str) -> None:
        if channel in self._active:
            return
        lock = self._get_lock()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout  # one deadline for the whole subscription
        was_open = self._open_since is not None
        with self._round_trip(f"cannot subscribe to {channel!r}"):
            # Waiting for the lock counts: its holder may be stuck on Redis.
            await asyncio.wait_for(lock.acquire(), self.timeout)
            try:
                if not was_open and self._open_since is not None:
                    # The holder found Redis unresponsive meanwhile: fail fast too.
                    raise BroadcastUnavailable()
                if channel in self._active or channel not in self._channels:
                    return
                await self._subscribe(channel, deadline)
                self._active.add(channel)
            finally:
                lock.release()

    async def _subscribe(self, channel: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        name = self._name(channel)
        confirmed = loop.create_future()
        self._confirmations[name] = confirmed
        try:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub()
            pubsub = self._pubsub
            await asyncio.wait_for(pubsub.subscribe(name), max(0.0, deadline - loop.time()))
            if self._reader is None:
                self._reader = asyncio.ensure_future(self._read(pubsub))
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                # Sent but not confirmed in time. Whether the connection is dead
                # is the health check's call; take the late subscription back.
                self._channel_unused(channel, confirmed=False)
                raise
        except _CONNECTION_ERRORS:
            if self._reader is None:
                self._forget_pubsub()
            raise
        finally:
            self._confirmations.pop(name, None)
            if not confirmed.done():
                confirmed.cancel()
            elif not confirmed.cancelled():
                confirmed.exception()  # retrieved: never reported as unretrieved

    def _channel_unused(self, channel: str, *, confirmed: bool = True) -> None:
        if confirmed and channel not in self._active:
            return
        task = asyncio.ensure_future(self._unsubscribe_if_unused(channel, confirmed))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unsubscribe_if_unused(self, channel: str, confirmed: bool) -> None:
        async with self._get_lock():
            # A new subscriber may have arrived meanwhile; then keep the channel.
            if channel in self._channels or (confirmed and channel not in self._active):
                return
            self._active.discard(channel)
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                await asyncio.wait_for(pubsub.unsubscribe(self._name(channel)), self.timeout)
            except _CONNECTION_ERRORS as error:
                # The reader reports the lost connection; nothing more to do here.
                log.debug("Could not unsubscribe from %r: %s", channel, error)

    # -- the reader ------------------------------------------------------------

    async def _read(self, pubsub: Any) -> None:
        """Deliver messages until the connection is lost or the broadcaster closes.

        Checks the connection with a PING after ``health_check_interval`` seconds
        of silence; no answer within ``timeout`` counts as a lost connection.
        """
        loop = asyncio.get_running_loop()
        poll = min(_POLL_SECONDS, self.health_check_interval, self.timeout)
        heard_at = loop.time()
        pinged_at: Optional[float] = None
        me = asyncio.current_task()
        try:
            # Not ``while True``: before Python 3.12 ``asyncio.wait_for`` can swallow a
            # cancellation that arrives as its inner read completes, and a reader that
            # lost its cancellation must still stop once it is no longer the reader.
            while self._reader is me:
                # get_message's own timeout only bounds the wait for data to
                # arrive; the outer deadline bounds reading the rest of a reply.
                message = await asyncio.wait_for(
                    pubsub.get_message(timeout=poll), poll + self.timeout
                )
                now = loop.time()
                if message is not None:
                    heard_at, pinged_at = now, None
                    self._dispatch(message)
                    continue
                if pinged_at is not None:
                    if now - pinged_at >= self.timeout:
                        raise _DeadConnection(f"no answer to PING within {self.timeout}s")
                elif now - heard_at >= self.health_check_interval:
                    pinged_at = now
                    await asyncio.wait_for(pubsub.ping(_PING_PAYLOAD), self.timeout)
        except asyncio.CancelledError:
            raise
        except _CONNECTION_ERRORS as error:
            if isinstance(error, _DeadConnection):
                self._open_circuit(error)
            self._connection_lost(error)
        except Exception as error:
            log.error("Redis broadcaster reader failed", exc_info=True)
            self._connection_lost(error, logged=True)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        name = message.get("channel")
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind == "subscribe":
            confirmed = self._confirmations.get(name) if isinstance(name, bytes) else None
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "message" or not isinstance(name, bytes):
            return  # also the health check's pong: it only had to arrive
        channel = name.decode("utf-8", "replace")[len(self.channel_prefix) :]
        try:
            value = decode(message["data"])
        except (ValueError, TypeError) as error:
            log.warning("Ignoring a message on %r that is not JSON: %s", channel, error)
            return
        self._deliver(channel, value)

    def _connection_lost(self, error: BaseException, *, logged: bool = False) -> None:
        """Forget the pub/sub connection and end every local subscription."""
        if not logged:
            log.warning(
                "Redis connection lost (%s); ending %d subscriptions",
                self._describe(error),
                self.subscriber_count(),
            )
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._active.clear()
        for confirmed in self._confirmations.values():
            if not confirmed.done():
                confirmed.set_exception(redis.exceptions.ConnectionError("connection lost"))
        self._end_all(EndReason.CONNECTION_LOST)
        self._forget_pubsub()

    def _forget_pubsub(self) -> None:
        """Forget the connection now (the next subscriber makes a new one) and close
        it in the background: closing may take a moment, which no caller waits for."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            task = asyncio.ensure_future(self._close_quietly(pubsub))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await self._close_quietly(pubsub)

    async def _close_quietly(self, pubsub: Any) -> None:
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await asyncio.wait_for(pubsub.aclose(), self.timeout)
