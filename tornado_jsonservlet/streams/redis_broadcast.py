"""Fan-out across processes and hosts through Redis pub/sub.

Needs the ``redis`` extra: ``pip install 'tornado-jsonservlet[redis]'``.

Each process keeps one pub/sub connection, subscribed to the channels its local
subscribers want (a channel is subscribed when its first local subscriber arrives
and unsubscribed, in the background, when its last one leaves). One reader task
hands incoming messages to the local subscriptions, with the same bounded queues
and slow-subscriber policy as :class:`~tornado_jsonservlet.broadcast.InMemoryBroadcaster`.

Messages travel as JSON (:func:`~tornado_jsonservlet.jsonio.encode`), so they must
be JSON-encodable; subscribers receive the decoded value.

When the connection to Redis is lost, the loss is logged at WARNING and every local
subscription ends with ``EndReason.CONNECTION_LOST``: their ``async for`` loops
finish, SSE clients reconnect, and their new subscriptions reconnect to Redis (or
get a 503 ``UNAVAILABLE`` while it is down). Nothing waits on a dead connection:
``publish`` and ``subscribe`` fail fast with
:class:`~tornado_jsonservlet.broadcast.BroadcastUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

# The reader wakes this often when idle (redis-py's own pub/sub loop polls the same way).
_POLL_SECONDS = 1.0


class RedisBroadcaster(Broadcaster):
    """A :class:`~tornado_jsonservlet.broadcast.Broadcaster` over Redis pub/sub.

    :param url: where Redis is, e.g. ``redis://127.0.0.1:6379/0``; ignored when
        ``client`` is given.
    :param client: a ``redis.asyncio.Redis`` to use instead (it is not closed by
        :meth:`close`). Give it ``decode_responses=False``; its retry policy applies.
    :param channel_prefix: prepended to every channel name in Redis, to keep
        applications sharing one Redis apart.
    :param timeout: seconds to connect or to have a subscription confirmed.

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
    ) -> None:
        super().__init__(max_queued=max_queued)
        if not isinstance(channel_prefix, str):
            raise TypeError("channel_prefix must be a str")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.channel_prefix = channel_prefix
        self.timeout = timeout
        self._owns_client = client is None
        # No silent retries: a lost connection must end the subscriptions (their
        # clients resume from Last-Event-ID) rather than drop messages unnoticed.
        self._client: Any = (
            client
            if client is not None
            else redis.asyncio.Redis.from_url(
                url,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=timeout,
                socket_keepalive=True,
            )
        )
        self._pubsub: Any = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._active: set[str] = set()  # channels whose SUBSCRIBE Redis confirmed
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._lock: Optional[asyncio.Lock] = None
        self._background: set[asyncio.Task[None]] = set()

    # -- public API ------------------------------------------------------------

    async def publish(self, channel: str, message: Any) -> int:
        """Publish ``message`` (JSON-encoded) to ``channel`` in every process.

        Returns the number of pub/sub connections (roughly: processes with
        subscribers to the channel) that Redis delivered it to.
        """
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        data = encode(message)
        try:
            return int(await self._client.publish(self._name(channel), data))
        except _CONNECTION_ERRORS as error:
            log.warning("Redis unavailable, message to %r not published: %s", channel, error)
            raise BroadcastUnavailable() from None

    async def close(self) -> None:
        """End every subscription (``EndReason.BROADCASTER_CLOSED``) and close the
        connection to Redis, unless it was given as ``client``.
        """
        await super().close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(set(self._background))
        await self._drop_pubsub()
        if self._owns_client:
            await self._client.aclose()

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
        async with self._get_lock():
            if channel in self._active or channel not in self._channels:
                return
            name = self._name(channel)
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmations[name] = confirmed
            try:
                if self._pubsub is None:
                    self._pubsub = self._client.pubsub()
                pubsub = self._pubsub
                await asyncio.wait_for(pubsub.subscribe(name), self.timeout)
                if self._reader is None:
                    self._reader = asyncio.ensure_future(self._read(pubsub))
                await asyncio.wait_for(asyncio.shield(confirmed), self.timeout)
            except _CONNECTION_ERRORS as error:
                log.warning("Redis unavailable, cannot subscribe to %r: %s", channel, error)
                if self._reader is None:
                    await self._drop_pubsub()
                raise BroadcastUnavailable() from None
            finally:
                self._confirmations.pop(name, None)
                if not confirmed.done():
                    confirmed.cancel()
                elif not confirmed.cancelled():
                    confirmed.exception()  # retrieved: never reported as unretrieved
            self._active.add(channel)

    def _channel_unused(self, channel: str) -> None:
        if channel not in self._active:
            return
        task = asyncio.ensure_future(self._unsubscribe_if_unused(channel))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unsubscribe_if_unused(self, channel: str) -> None:
        async with self._get_lock():
            # A new subscriber may have arrived meanwhile; then keep the channel.
            if channel in self._channels or channel not in self._active:
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
        """Deliver messages until the connection is lost or the broadcaster closes."""
        try:
            while True:
                message = await pubsub.get_message(timeout=_POLL_SECONDS)
                if message is not None:
                    self._dispatch(message)
        except asyncio.CancelledError:
            raise
        except _CONNECTION_ERRORS as error:
            log.warning(
                "Redis connection lost (%s); ending %d subscriptions",
                error or type(error).__name__,
                self.subscriber_count(),
            )
        except Exception:
            log.error("Redis broadcaster reader failed", exc_info=True)
        if self._reader is asyncio.current_task():
            self._reader = None
        self._connection_lost()

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
            return
        channel = name.decode("utf-8", "replace")[len(self.channel_prefix) :]
        try:
            value = decode(message["data"])
        except (ValueError, TypeError) as error:
            log.warning("Ignoring a message on %r that is not JSON: %s", channel, error)
            return
        self._deliver(channel, value)

    def _connection_lost(self) -> None:
        self._active.clear()
        for confirmed in self._confirmations.values():
            if not confirmed.done():
                confirmed.set_exception(redis.exceptions.ConnectionError("connection lost"))
        self._end_all(EndReason.CONNECTION_LOST)
        # Forget the broken connection now (the next subscriber makes a new one);
        # closing it may take a moment.
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            task = asyncio.ensure_future(self._close_quietly(pubsub))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await self._close_quietly(pubsub)

    @staticmethod
    async def _close_quietly(pubsub: Any) -> None:
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await pubsub.aclose()
