"""Fan-out: publish a message once, deliver it to every subscriber of a channel.

::

    broadcaster = InMemoryBroadcaster()          # one process
    # broadcaster = RedisBroadcaster("redis://127.0.0.1:6379/0")   # several processes

    async with broadcaster.subscribe("news") as messages:
        async for message in messages:
            await self.send_event(message)

    await broadcaster.publish("news", {"title": "..."})

A subscription lives exactly as long as its ``async with`` block: a handler that is
cancelled because its client left exits the block and is unsubscribed there and
then, without awaiting anything (so nothing can interrupt the clean-up).

Slow subscribers
----------------
Publishing never waits for a subscriber. Each subscription has a bounded queue
(``max_queued`` messages, 1000 by default). A subscriber whose queue is full when a
message arrives has fallen behind for good: rather than block the publisher, grow
without bound, or silently skip messages, the broadcaster **drops it**. Its queue
keeps the messages already in it; once those are read, iteration stops and
:attr:`Subscription.ended` is :attr:`EndReason.LAGGED` (logged at INFO). An SSE
handler then typically returns, the client reconnects with ``Last-Event-ID`` and
resumes from the application's own history, at its own pace.

Why a subscription ended
------------------------
``async for`` ends without an exception; :attr:`Subscription.ended` says why:
``LAGGED``, ``BROADCASTER_CLOSED`` (:meth:`Broadcaster.close`, at shutdown), or
``CONNECTION_LOST`` (the Redis connection broke; see
:mod:`~tornado_jsonservlet.redis_broadcast`).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import enum
import logging
from types import TracebackType
from typing import Any, Callable, Optional

from tornado_jsonservlet.errors.exceptions import ServletError

#: A callable handed each message as it is published, with a dict shared by every
#: receiver of that one delivery (for work done once per message, like encoding).
Receiver = Callable[[Any, dict[Any, Any]], None]

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "BroadcastUnavailable",
    "Broadcaster",
    "EndReason",
    "InMemoryBroadcaster",
    "Subscription",
]

log = logging.getLogger("tornado_jsonservlet.broadcast")

#: Messages a subscriber may have waiting before it is dropped as lagging.
DEFAULT_MAX_QUEUED = 1000


class EndReason(str, enum.Enum):
    """Why a :class:`Subscription` stopped delivering messages.

    .. versionadded:: 0.1
    """

    #: Its queue was full when a message arrived: it fell behind and was dropped.
    LAGGED = "lagged"
    #: The broadcaster was closed (application shutdown).
    BROADCASTER_CLOSED = "broadcaster_closed"
    #: The connection to the message bus (Redis) was lost.
    CONNECTION_LOST = "connection_lost"
    #: The ``async with`` block was left.
    UNSUBSCRIBED = "unsubscribed"


class BroadcastUnavailable(ServletError):
    """The message bus cannot be reached: a 503 ``UNAVAILABLE`` if a handler lets it escape.

    Logged by the error mixins as a deliberate 5xx (WARNING), not as a bug.

    .. versionadded:: 0.1
    """

    def __init__(self, msg: str = "Broadcast service unavailable") -> None:
        super().__init__(503, msg, "UNAVAILABLE")


def _check_max_queued(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_queued must be a positive int, not {value!r}")
    return int(value)


class Subscription:
    """The messages of one channel for one subscriber: ``async for message in subscription``.

    Read it from one task at a time. Iteration ends (without an exception) when
    the subscription ends; :attr:`ended` says why.

    .. versionadded:: 0.1
    """

    __slots__ = ("_queue", "_receiver", "_waiter", "channel", "ended", "max_queued")

    def __init__(self, channel: str, max_queued: int) -> None:
        self.channel = channel
        self.max_queued = max_queued
        #: ``None`` while messages may still come; then an :class:`EndReason`.
        self.ended: Optional[EndReason] = None
        self._queue: collections.deque[Any] = collections.deque()
        self._waiter: Optional[asyncio.Future[None]] = None
        self._receiver: Optional[Receiver] = None

    @property
    def pending(self) -> int:
        """Messages delivered to this subscriber and not read yet."""
        return len(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._queue:
                # Taken only once the reader runs again: a read cancelled while
                # waiting leaves the message queued for the next one.
                return self._queue.popleft()
            if self.ended is not None:
                raise StopAsyncIteration
            await self._until_woken()

    def __repr__(self) -> str:
        state = self.ended.value if self.ended is not None else "open"
        return f"<Subscription {self.channel!r} {state}, {len(self._queue)} pending>"

    # -- for relays ----------------------------------------------------------------

    def _receive_with(self, receiver: Optional[Receiver]) -> None:
        """Hand each message to ``receiver`` as it is published (``None``: queue again).

        The fast path of a relay: publishing then costs one call per subscriber
        instead of waking every subscriber's task. Messages already queued are
        handed over first, so the order is kept. The receiver runs inside
        ``publish`` and must not raise or block.
        """
        if receiver is not None:
            while self._queue:
                receiver(self._queue.popleft(), {})
        self._receiver = receiver

    async def _until_woken(self) -> None:
        """Wait until the subscription ends or :meth:`_wake` is called.

        Iteration waits here for the next message; a relay, whose receiver takes
        the messages, waits here between checks of its own conditions.
        """
        if self.ended is not None:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    # -- for broadcasters ----------------------------------------------------------

    def _offer(self, message: Any, memo: dict[Any, Any]) -> bool:
        """Queue ``message``; False (and the subscription ends as lagged) if it is full.

        ``memo`` is shared by every subscriber of this one delivery.
        """
        if self.ended is not None:
            return False
        receiver = self._receiver
        if receiver is not None:
            receiver(message, memo)
            return True
        if len(self._queue) >= self.max_queued:
            self._end(EndReason.LAGGED)
            return False
        self._queue.append(message)
        self._wake()
        return True

    def _end(self, reason: EndReason) -> None:
        if self.ended is None:
            self.ended = reason
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _SubscribeContext:
    """``async with broadcaster.subscribe(channel) as messages:``."""

    __slots__ = ("_broadcaster", "_channel", "_max_queued", "_subscription")

    def __init__(self, broadcaster: Broadcaster, channel: str, max_queued: int) -> None:
        self._broadcaster = broadcaster
        self._channel = channel
        self._max_queued = max_queued
        self._subscription: Optional[Subscription] = None

    async def __aenter__(self) -> Subscription:
        subscription = Subscription(self._channel, self._max_queued)
        await self._broadcaster._attach(subscription)
        self._subscription = subscription
        return subscription

    async def __aexit__(
        self,
        typ: Optional[type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            # Synchronous on purpose: this runs while a cancelled handler unwinds.
            self._broadcaster._detach(subscription)
            subscription._end(EndReason.UNSUBSCRIBED)


class Broadcaster(abc.ABC):
    """Publish/subscribe by channel name. Subclasses carry messages between subscribers.

    Subscriptions are local to the process; an implementation decides how a
    published message reaches them (directly, or through a message bus).

    .. versionadded:: 0.1
    """

    def __init__(self, *, max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        self.max_queued = _check_max_queued(max_queued)
        self._channels: dict[str, set[Subscription]] = {}
        self._closed = False

    # -- public API ------------------------------------------------------------

    @abc.abstractmethod
    async def publish(self, channel: str, message: Any) -> int:
        """Send ``message`` to every subscriber of ``channel``; return how many it reached.

        :raises BroadcastUnavailable: the message bus cannot be reached.
        """

    def subscribe(self, channel: str, *, max_queued: Optional[int] = None) -> _SubscribeContext:
        """``async with broadcaster.subscribe(channel) as messages:`` -- see the module doc.

        Messages published once the block is entered are delivered (the
        subscription is in place when ``__aenter__`` returns).

        :raises BroadcastUnavailable: on entering, if the message bus cannot be
            reached or the broadcaster is closed.
        """
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        queued = self.max_queued if max_queued is None else _check_max_queued(max_queued)
        return _SubscribeContext(self, channel, queued)

    def subscriber_count(self, channel: Optional[str] = None) -> int:
        """Subscriptions in this process, for ``channel`` or in all."""
        if channel is not None:
            return len(self._channels.get(channel, ()))
        return sum(len(subscriptions) for subscriptions in self._channels.values())

    async def close(self) -> None:
        """End every subscription (``BROADCASTER_CLOSED``) and refuse new ones."""
        self._closed = True
        self._end_all(EndReason.BROADCASTER_CLOSED)

    # -- for implementations -------------------------------------------------------

    async def _channel_ready(self, channel: str) -> None:
        """Make sure messages published to ``channel`` reach this process.

        Called for every new subscription, after it was added locally. In one
        process there is nothing to do.
        """
        return

    def _channel_unused(self, channel: str) -> None:
        """The last local subscriber of ``channel`` left. Must not block."""
        return

    def _deliver(self, channel: str, message: Any) -> int:
        """Hand ``message`` to the local subscribers of ``channel``; drop those that lag."""
        subscriptions = self._channels.get(channel)
        if not subscriptions:
            return 0
        delivered = 0
        lagging = None
        memo: dict[Any, Any] = {}
        for subscription in subscriptions:
            if subscription._offer(message, memo):
                delivered += 1
            elif subscription.ended is EndReason.LAGGED:
                lagging = lagging or []
                lagging.append(subscription)
        for subscription in lagging or ():
            log.info(
                "Subscriber to %r fell %d messages behind; dropped (lagged)",
                channel,
                subscription.pending,
            )
            self._detach(subscription)
        return delivered

    def _end_all(self, reason: EndReason) -> None:
        channels, self._channels = self._channels, {}
        for subscriptions in channels.values():
            for subscription in subscriptions:
                subscription._end(reason)

    async def _attach(self, subscription: Subscription) -> None:
        if self._closed:
            raise BroadcastUnavailable("Broadcaster is closed")
        self._channels.setdefault(subscription.channel, set()).add(subscription)
        try:
            await self._channel_ready(subscription.channel)
        except BaseException:
            self._detach(subscription)
            raise

    def _detach(self, subscription: Subscription) -> None:
        subscriptions = self._channels.get(subscription.channel)
        if subscriptions is None or subscription not in subscriptions:
            return
        subscriptions.discard(subscription)
        if not subscriptions:
            del self._channels[subscription.channel]
            self._channel_unused(subscription.channel)


class InMemoryBroadcaster(Broadcaster):
    """Fan-out within one process (one event loop). Messages are passed as they are,
    not copied: every subscriber gets the same object, so treat it as immutable.

    .. versionadded:: 0.1
    """

    async def publish(self, channel: str, message: Any) -> int:
        """Queue ``message`` for every local subscriber of ``channel`` without waiting;
        return how many it reached. A subscriber whose queue is full is dropped
        (``EndReason.LAGGED``).

        :raises TypeError: ``channel`` is not a ``str``.
        """
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        return self._deliver(channel, message)
