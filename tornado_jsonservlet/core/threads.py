"""Thread work that learns its caller left.

A thread cannot be stopped from outside: Python has no safe way to interrupt it.
What can be done is to stop *waiting* for it, and to tell it that nobody is waiting
any more, so that code written to check can stop early. :func:`run_in_executor`
does both:

* the awaiting coroutine is released at once when it is cancelled (a client that
  left, a deadline, ``asyncio.wait_for``), like any other ``await``;
* the function running in the thread finds a :class:`CancelToken` through
  :func:`current_cancel_token`, and the token is set at the moment the await is
  cancelled. Long loops check ``token.cancelled``, call ``token.raise_if_cancelled()``,
  or sleep with ``token.wait(seconds)`` instead of ``time.sleep``;
* whatever the abandoned thread returns or raises afterwards is dropped without a
  log record: it is the answer to a question nobody asks any more.

Cancellation in threads is therefore cooperative: a function that never looks at
its token runs to the end, only its result is ignored.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import Executor
from typing import Callable, Optional, TypeVar

__all__ = ["CancelToken", "current_cancel_token", "run_in_executor"]

_T = TypeVar("_T")


class CancelToken:
    """Tells work running in a thread whether the coroutine awaiting it was cancelled.

    Safe to read from any thread. Outside :func:`run_in_executor`,
    :func:`current_cancel_token` returns a token that nothing cancels, so the same
    function works whether or not it runs under the toolkit.

    .. versionadded:: 0.1
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def cancelled(self) -> bool:
        """True once the awaiting coroutine was cancelled."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise ``asyncio.CancelledError`` if the awaiting coroutine was cancelled.

        ``CancelledError`` is a ``BaseException``, so a broad ``except Exception`` in
        the thread's code does not swallow it by accident.
        """
        if self._event.is_set():
            raise asyncio.CancelledError("the coroutine awaiting this work was cancelled")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancellation.

        Returns True if the token is cancelled. Use it instead of ``time.sleep`` in a
        polling loop, so a cancellation is noticed at once.
        """
        return self._event.wait(timeout)

    def cancel(self) -> None:
        """Mark the work cancelled. :func:`run_in_executor` calls it; so may tests."""
        self._event.set()

    def __repr__(self) -> str:
        return f"<CancelToken cancelled={self.cancelled}>"


_current_token: contextvars.ContextVar[Optional[CancelToken]] = contextvars.ContextVar(
    "tornado_jsonservlet.cancel_token", default=None
)


def current_cancel_token() -> CancelToken:
    """The token of the :func:`run_in_executor` call running this code.

    Outside such a call, a fresh token that is never cancelled.

    .. versionadded:: 0.1
    """
    token = _current_token.get()
    return CancelToken() if token is None else token


async def run_in_executor(
    fn: Callable[..., _T], *args: object, executor: Optional[Executor] = None
) -> _T:
    """Run ``fn(*args)`` in ``executor`` (the loop's default one if None) and await it.

    The function runs in a copy of the caller's context, so context variables such as
    the request deadline (:func:`~tornado_jsonservlet.core.context.deadline_remaining`) are
    visible in the thread, and :func:`current_cancel_token` finds this call's token.

    If the awaiting coroutine is cancelled, the await ends at once with
    ``CancelledError`` and the token is set. A call still queued in the executor
    never starts; one already running goes on until it checks its token or returns,
    and its result or exception is then dropped quietly.

    .. versionadded:: 0.1
    """
    loop = asyncio.get_running_loop()
    token = CancelToken()
    context = contextvars.copy_context()
    context.run(_current_token.set, token)

    def call() -> _T:
        return context.run(fn, *args)

    future = loop.run_in_executor(executor, call)
    try:
        return await future
    except asyncio.CancelledError:
        # Usually asyncio has cancelled ``future`` too: a call still queued never
        # starts, and a late result is discarded without a log. But the cancellation
        # can also land just after the thread finished, with its outcome already in
        # ``future``; retrieving it keeps an exception from being reported as
        # "never retrieved".
        token.cancel()
        if future.done() and not future.cancelled():
            future.exception()
        raise
