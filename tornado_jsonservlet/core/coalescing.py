"""Request coalescing: run shared work once, and stop it when nobody waits.

Several requests often want the same slow answer at the same time (the same
report, the same upstream lookup). Running it once and handing each of them the
result is *coalescing*. Done naively, with every request awaiting one task,
it meets cancellation badly: cancelling a task cancels the future it awaits, so
the first client to leave would cancel the shared work under the clients that
stay. :class:`Coalescer` gives each waiter its own view of the shared work and
counts them; the work is cancelled only when its **last** waiter has gone,
because then nobody wants its answer.

::

    reports: Coalescer[str, dict] = Coalescer()

    class ReportHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
        async def get(self, name):
            self.write(await reports.run(name, lambda: build_report(name)))
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Hashable
from typing import Callable, Generic, TypeVar

__all__ = ["Coalescer"]

_K = TypeVar("_K", bound=Hashable)
_T = TypeVar("_T")


class _Flight(Generic[_T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[_T]) -> None:
        self.task = task
        self.waiters = 0


class Coalescer(Generic[_K, _T]):
    """Run the work for a key once for all concurrent callers.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._flights: dict[_K, _Flight[_T]] = {}

    def in_flight(self, key: _K) -> int:
        """How many callers are waiting for ``key``'s work now (0: none running)."""
        flight = self._flights.get(key)
        return 0 if flight is None else flight.waiters

    async def run(self, key: _K, work: Callable[[], Awaitable[_T]]) -> _T:
        """The result of ``work()`` for ``key``, started by the first caller only.

        Every caller gets the result, or the exception, of the one run. A caller
        that is cancelled (its client left) stops waiting at once; the work goes
        on for the others, and is cancelled when the last caller has gone. The
        next call after the work ended starts it afresh: results are not cached.
        """
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(asyncio.ensure_future(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda task: self._landed(key, task))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done():
                flight.task.cancel()  # nobody is waiting: stop

    def _landed(self, key: _K, task: asyncio.Task[_T]) -> None:
        if self._flights.get(key) is not None and self._flights[key].task is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have left before it failed
