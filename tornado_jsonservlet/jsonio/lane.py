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
* While interactive work is being served (:meth:`LowPriorityLane.note_interactive`,
  which ``write_json`` calls for every small response), the lane also leaves the CPU
  idle between slices, for as long as the last slice took. Yielding between slices is
  not enough there. A small request takes several trips round the loop, and a slice
  may run before each of them. Also, a CPU that never idles makes every new arrival
  wait longer on a shared machine: a task that only burns CPU and yields often still
  raises an idle server's small-request latency severalfold. The pause brings the
  small-request tail under big readers back near its unloaded value, at the price of
  some of the readers' throughput (the figures, and the commands that produce them,
  are on the documentation's performance page: ``benchmarks/compare.py``, P3). Big
  responses alone run at full speed: the pause ends ``interactive_window`` after the
  last small response.

Only public asyncio APIs are used; the idle test is a timing heuristic.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from typing import Callable, Optional, TypeVar

__all__ = ["LowPriorityLane", "lane_for_running_loop"]

_T = TypeVar("_T")


class LowPriorityLane:
    """Serialises bulk work and runs each piece when the loop looks idle."""

    def __init__(
        self,
        *,
        idle_gap: float = 0.0002,
        max_wait: float = 0.02,
        bulk_share: float = 0.5,
        interactive_window: float = 0.05,
    ) -> None:
        #: A yield round trip faster than this (seconds) means nothing else ran.
        self.idle_gap = idle_gap
        #: The longest a piece of work waits for an idle moment (seconds); also the
        #: longest pause between two pieces, whatever one of them took.
        self.max_wait = max_wait
        self.bulk_share = bulk_share
        #: How long (seconds) one :meth:`note_interactive` keeps the lane polite.
        self.interactive_window = interactive_window
        self._interactive_at = -math.inf
        #: When the next piece may look for its idle moment (``time.perf_counter``).
        self._resume_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def bulk_share(self) -> float:
        """The share of the CPU bulk work may take while interactive work is being
        served, in (0, 1]; 1.0 turns the pause between pieces off.

        Checked when set, so that a bad value fails where it is configured rather
        than in the middle of a response.
        """
        return self._bulk_share

    @bulk_share.setter
    def bulk_share(self, share: float) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"bulk_share must be in (0, 1], not {share!r}")
        self._bulk_share = share

    def note_interactive(self) -> None:
        """Report interactive work (a small response) served just now.

        For the next ``interactive_window`` seconds, bulk work leaves the CPU idle
        between pieces, so that newly arriving requests find it ready. Call it
        from handlers whose latency matters and that do not use ``write_json``.
        """
        self._interactive_at = time.perf_counter()

    @property
    def yielding_to_interactive(self) -> bool:
        """True while the lane pauses between pieces (interactive work is recent)."""
        return self._interactive_recent_at(time.perf_counter())

    def _interactive_recent_at(self, moment: float) -> bool:
        return moment - self._interactive_at < self.interactive_window

    async def run(self, work: Callable[[], _T]) -> _T:
        """Wait for an idle moment (or ``max_wait``), then call ``work()`` synchronously.

        ``work`` should take a couple of milliseconds at most: it blocks the loop.
        While interactive work is recent, the next piece then waits
        ``(1 - bulk_share) / bulk_share`` times as long as ``work()`` took (at most
        ``max_wait``) before it looks for its idle moment. The pause is taken
        before the next piece, not after this one, so the last piece of a response
        is not delayed, and a caller cancelled meanwhile loses nothing it was
        given. The sleep can overrun by up to a millisecond on an otherwise idle loop:
        the selector counts timeouts in whole milliseconds.
        """
        async with self._lock:
            pause = self._resume_at - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(min(pause, self.max_wait))
            await self._idle_moment()
            share = self._bulk_share  # read before the work: nothing can fail after it
            started = time.perf_counter()
            result = work()
            if self._interactive_recent_at(started):
                ended = time.perf_counter()
                self._resume_at = ended + (ended - started) * (1.0 - share) / share
            return result

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


# The last loop asked for and its lane: every small response asks, almost always
# from the same loop, and a weak dictionary's look-up makes a weak reference.
_last_asked: Optional[tuple[weakref.ref[asyncio.AbstractEventLoop], LowPriorityLane]] = None


def lane_for_running_loop() -> LowPriorityLane:
    """The shared lane of the running event loop (created on first use)."""
    global _last_asked
    loop = asyncio.get_running_loop()
    last = _last_asked
    if last is not None and last[0]() is loop:
        return last[1]
    lane = _lanes.get(loop)
    if lane is None:
        lane = _lanes[loop] = LowPriorityLane()
    _last_asked = (weakref.ref(loop), lane)
    return lane
