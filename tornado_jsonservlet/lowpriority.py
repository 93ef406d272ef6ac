"""A low-priority lane: run bulk CPU work only when the event loop has nothing better to do.

Encoding a 1 MB JSON document takes several milliseconds of pure CPU. Cutting it
into slices with ``await asyncio.sleep(0)`` between them is not enough: every
slice still runs as soon as it is scheduled, so small requests queue behind a
steady stream of slices. The lane instead treats bulk work as background work:

* Before each slice it yields repeatedly and times the round trip. A round trip
  of a few microseconds means no other callback ran, that is, the loop was idle.
  A slow one means other requests are being served, so it yields again.
* It waits at most ``max_wait`` (20 ms by default) per slice, so bulk work is
  never starved on a busy server; it only slows down.
* There is one lane per event loop, shared by all big responses, so several of
  them together still take at most one slice per idle moment.

Only public asyncio APIs are used; the idle test is a timing heuristic.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Callable, TypeVar

__all__ = ["LowPriorityLane", "lane_for_running_loop"]

_T = TypeVar("_T")


class LowPriorityLane:
    """Serialises bulk work and runs each piece when the loop looks idle."""

    def __init__(self, *, idle_gap: float = 0.0002, max_wait: float = 0.02) -> None:
        #: A yield round trip faster than this (seconds) means nothing else ran.
        self.idle_gap = idle_gap
        #: The longest a piece of work waits for an idle moment (seconds).
        self.max_wait = max_wait
        self._lock = asyncio.Lock()

    async def run(self, work: Callable[[], _T]) -> _T:
        """Wait for an idle moment (or ``max_wait``), then call ``work()`` synchronously.

        ``work`` should take a couple of milliseconds at most: it blocks the loop.
        """
        async with self._lock:
            await self._idle_moment()
            return work()

    def _idle_moment(self) -> asyncio.Future[None]:
        """A future that completes at the first idle moment, or after ``max_wait``.

        The probing runs as a chain of ``call_soon`` callbacks, each timing one trip
        round the loop (the same measurement as ``await asyncio.sleep(0)``), so the
        waiting task suspends exactly once per piece of work however busy the loop
        is: its number of await points does not depend on the load.
        """
        loop = asyncio.get_running_loop()
        idle: asyncio.Future[None] = loop.create_future()
        deadline = time.perf_counter() + self.max_wait
        last = time.perf_counter()

        def probe() -> None:
            nonlocal last
            if idle.done():  # the waiting task was cancelled
                return
            now = time.perf_counter()
            if now - last < self.idle_gap or now >= deadline:
                idle.set_result(None)
            else:
                last = now
                loop.call_soon(probe)

        loop.call_soon(probe)
        return idle


_lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LowPriorityLane] = (
    weakref.WeakKeyDictionary()
)


def lane_for_running_loop() -> LowPriorityLane:
    """The shared lane of the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    lane = _lanes.get(loop)
    if lane is None:
        lane = _lanes[loop] = LowPriorityLane()
    return lane
