"""The current request's deadline, visible to all the work the request starts.

A request's work spreads beyond its handler: outbound HTTP calls, child tasks, threads.
Each of them needs to know how long the caller will still wait, without the handler
passing a deadline through every call. A :class:`~contextvars.ContextVar` gives exactly
that. asyncio copies the context into every task created from the request's task,
and :func:`~tornado_jsonservlet.threads.run_in_executor` copies it into the thread.

The deadline is an absolute time on asyncio's clock (:func:`loop_time`: the running
loop's ``time()``, which is ``time.monotonic()`` for asyncio's loops), so it does not
drift as it is passed on and a change of the wall clock cannot move it. Note that
Tornado's ``IOLoop.time()`` is wall-clock time (``time.time()``): do not mix the two.
Whoever owns the request (the handler machinery) sets it; everything else only reads
it, through :func:`deadline_remaining`. Nothing here starts a timer: an unset
deadline costs one ``ContextVar.get()``.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextvars import ContextVar
from typing import Optional

__all__ = [
    "DEFAULT_DEADLINE_HEADER",
    "deadline_header",
    "deadline_remaining",
    "loop_time",
    "request_deadline",
]

#: The header that tells an upstream how long its caller will wait, in milliseconds.
#: Envoy sends the same header, so services behind Envoy and services calling each other
#: directly understand one another.
DEFAULT_DEADLINE_HEADER = "X-Envoy-Expected-Rq-Timeout-Ms"

#: The current request's absolute deadline (:func:`loop_time`), or None for no deadline.
request_deadline: ContextVar[Optional[float]] = ContextVar(
    "tornado_jsonservlet.request_deadline", default=None
)

#: The name of the header that carries the remaining time to upstreams.
deadline_header: ContextVar[str] = ContextVar(
    "tornado_jsonservlet.deadline_header", default=DEFAULT_DEADLINE_HEADER
)


def loop_time() -> float:
    """The clock deadlines are measured on: the running asyncio loop's ``time()``.

    In a thread without a running loop (work started by ``run_in_executor``), it is
    ``time.monotonic()``, the clock asyncio's own loops use.

    .. versionadded:: 0.1
    """
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def deadline_remaining() -> Optional[float]:
    """Seconds left before the current request's deadline, or None without one.

    Never negative: a deadline that has passed leaves ``0.0``. A deadline that is not
    a finite number (NaN, infinity) counts as no deadline, so a bad value can never
    turn into a bogus timeout or header.

    .. versionadded:: 0.1
    """
    deadline = request_deadline.get()
    if deadline is None or not math.isfinite(deadline):
        return None
    return max(0.0, deadline - loop_time())
