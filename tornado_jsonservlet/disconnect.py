"""Cancel on disconnect: stop a handler's work the moment its client leaves.

What happens
------------
Tornado runs each request's ``prepare()`` and HTTP-verb method inside one asyncio
task. When the client disconnects while that code is suspended at an ``await``,
:class:`CancelOnDisconnectMixin` cancels the task. ``asyncio.CancelledError`` is
raised at that ``await``, so ``finally`` blocks and ``async with`` exits run as
usual. When it reaches the mixin again, the mixin swallows it, finishes the
request without sending anything, and the access log records one line with
status 499.

Only cancellations the mixin started are handled this way. Any other one (server
shutdown, a test's teardown, ``task.cancel()`` by application code) propagates
exactly as in plain Tornado. The mixin tells them apart with
``Task.cancelling()`` on Python 3.11+; on 3.9/3.10, which lack it, a foreign
cancellation that coincides with a disconnect is treated as the disconnect.

What else belongs to the request
--------------------------------
* ``call_later`` timers and ``spawn`` child tasks are cancelled on disconnect and
  when the request finishes: they exist for this response only.
* ``add_disconnect_callback``/``on_disconnect`` run once, on disconnect only.
* ``async with self.shielded():`` delays the cancellation until the block ends,
  for work that must not be interrupted halfway (a two-step write, say).
* ``@uncancellable`` on a method, or ``cancel_on_disconnect = False`` on the
  class, opts out: the work runs to completion, its output is dropped quietly.

How the mixin finds the task
----------------------------
Nothing in Tornado stores the request's task on the handler. At class creation
the mixin wraps ``prepare`` and each HTTP-verb method; the wrapper notes
``asyncio.current_task()`` while the method is suspended and handles the
cancellation where it surfaces. So the same result (499, no ERROR) is reached on
every supported Tornado, whether its ``_execute`` answers a cancelled task with
a 500 (6.6) or lets it escape (6.4, 6.5): the cancellation never reaches it.
"""

from __future__ import annotations

import asyncio
import functools
from types import TracebackType
from typing import Any, Awaitable, Callable, Coroutine, Optional, TypeVar

import tornado.web

from .connection import log
from .safe_output import SafeWriteMixin

__all__ = ["CancelOnDisconnectMixin", "uncancellable"]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")

_UNCANCELLABLE = "_tornado_jsonservlet_uncancellable"
_WRAPPED = "_tornado_jsonservlet_cancellable"


def uncancellable(method: _F) -> _F:
    """Mark ``prepare`` or an HTTP-verb method to run to completion after a disconnect.

    The disconnect is still detected (``client_disconnected``, callbacks, hooks)
    and output is still dropped safely; only the cancellation is skipped. Use it for
    work whose side effects must complete, such as a payment.
    """
    setattr(method, _UNCANCELLABLE, True)
    return method


def _cancellable_method(method: Callable[..., Any]) -> Callable[..., Any]:
    is_uncancellable = getattr(method, _UNCANCELLABLE, False)

    @functools.wraps(method)
    def cancellable(self: CancelOnDisconnectMixin, *args: Any, **kwargs: Any) -> Any:
        if self._request_task is not None:
            # Nested (``await super().get()``) or called from a child task: the
            # outermost method owns the cancellation.
            return method(self, *args, **kwargs)
        allowed = self.cancel_on_disconnect and not is_uncancellable
        if allowed and self._client_gone:
            # Gone before this method started: do not start the work at all.
            self._finish_as_disconnected()
            return None
        result = method(self, *args, **kwargs)
        return None if result is None else self._await_cancellable(result, allowed)

    setattr(cancellable, _WRAPPED, True)
    return cancellable


class _Shield:
    """``async with handler.shielded():`` -- see :meth:`CancelOnDisconnectMixin.shielded`."""

    __slots__ = ("_handler",)

    def __init__(self, handler: CancelOnDisconnectMixin) -> None:
        self._handler = handler

    async def __aenter__(self) -> None:
        self._handler._shield_depth += 1

    async def __aexit__(
        self,
        typ: Optional[type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        handler = self._handler
        handler._shield_depth -= 1
        if handler._shield_depth == 0 and handler._cancel_deferred:
            handler._cancel_deferred = False
            handler._deliver_deferred_cancel(raising_allowed=typ is None)


class CancelOnDisconnectMixin(SafeWriteMixin):
    """Cancel ``prepare()`` and the HTTP-verb coroutine when the client disconnects.

    Mix it in before ``RequestHandler`` (or your own base handler)::

        class ReportHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
            async def get(self):
                rows = await db.fetch_report()   # cancelled here if the client leaves
                self.write({"rows": rows})

    Output methods are safe after a disconnect (this mixin includes
    :class:`~tornado_jsonservlet.safe_output.SafeWriteMixin`). While the client
    stays connected, the handler behaves exactly as without the mixin.
    """

    #: Set to False on a class to keep its methods running after a disconnect.
    cancel_on_disconnect: bool = True

    _request_task: Optional[asyncio.Task[Any]] = None
    _request_task_cancellable: bool = False
    _cancel_sent: bool = False  # a cancellation of ours is on its way
    _task_cancelled: bool = False  # our Task.cancel() is not yet matched by uncancel()
    _shield_depth: int = 0
    _cancel_deferred: bool = False
    _timers: Optional[set[asyncio.TimerHandle]] = None
    _children: Optional[set[asyncio.Task[Any]]] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = ["prepare"] + [method.lower() for method in cls.SUPPORTED_METHODS]
        for name in names:
            method = getattr(cls, name, None)
            if method is None or getattr(method, _WRAPPED, False):
                continue
            if method in (tornado.web.RequestHandler.get, tornado.web.RequestHandler.prepare):
                continue  # Tornado's 405 stub or empty prepare: nothing to cancel
            setattr(cls, name, _cancellable_method(method))

    # -- public API ------------------------------------------------------------

    def shielded(self) -> _Shield:
        """Defer cancellation until the ``async with`` block ends.

        A disconnect inside the block is recorded at once (callbacks and hooks run),
        but the cancellation lands only when the block exits, so code after the
        block does not run. Blocks nest; the outermost exit delivers it.
        """
        return _Shield(self)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        """Schedule ``callback(*args)`` after ``delay`` seconds, for this request only.

        The timer is cancelled if the client disconnects or the request finishes
        first. The returned handle can be cancelled earlier as usual.
        """
        loop = asyncio.get_running_loop()
        if self._client_gone or self._finished:
            handle = loop.call_later(delay, callback, *args)
            handle.cancel()
            return handle
        timers = self._timers
        if timers is None:
            timers = self._timers = set()

        def fire() -> None:
            timers.discard(handle)
            callback(*args)

        handle = loop.call_later(delay, fire)
        timers.add(handle)
        return handle

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run ``coro`` as a child task owned by this request.

        The child is cancelled when the client disconnects or the request finishes.
        An exception it raises is logged at ERROR (it is a bug); its cancellation
        is not. Await the returned task to use its result.
        """
        task = asyncio.ensure_future(coro)
        if self._client_gone or self._finished:
            task.cancel()
        else:
            if self._children is None:
                self._children = set()
            self._children.add(task)
        task.add_done_callback(self._child_done)
        return task

    # -- Tornado hooks ---------------------------------------------------------

    def finish(self, chunk: Any = None) -> asyncio.Future[None]:
        try:
            return super().finish(chunk)
        finally:
            if self._finished:
                self._release_request_work()

    # -- machinery -------------------------------------------------------------

    async def _await_cancellable(self, awaitable: Awaitable[Any], cancellable: bool) -> Any:
        task = asyncio.current_task()
        self._request_task = task
        self._request_task_cancellable = cancellable
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self._is_own_cancellation(task):
                raise
            self._finish_as_disconnected()
            return None
        finally:
            self._request_task = None
            self._forget_task_cancel(task)

    def _on_client_left(self) -> None:
        self._release_request_work()
        super()._on_client_left()
        self._cancel_request_task()

    def _cancel_request_task(self) -> None:
        task = self._request_task
        if task is None or not self._request_task_cancellable or self._cancel_sent:
            return
        if self._shield_depth:
            self._cancel_deferred = True
            return
        if task is asyncio.current_task():
            # Detected from inside the task itself: a cancel() now would only land
            # at its next await, or cancel the whole task if there is none. Deliver
            # it once the task is suspended.
            task.get_loop().call_soon(self._cancel_request_task)
            return
        self._cancel_sent = True
        self._task_cancelled = task.cancel()

    def _deliver_deferred_cancel(self, *, raising_allowed: bool) -> None:
        task = self._request_task
        if task is None or self._cancel_sent:
            return
        if raising_allowed and task is asyncio.current_task():
            # Leaving the shield inside the request task: land the cancellation
            # right here so nothing after the block runs.
            self._cancel_sent = True
            raise asyncio.CancelledError()
        self._cancel_request_task()

    def _is_own_cancellation(self, task: Optional[asyncio.Task[Any]]) -> bool:
        if not self._cancel_sent:
            return False
        if task is not None and self._task_cancelled and hasattr(task, "uncancel"):
            self._task_cancelled = False
            # Anything left after removing ours was requested by someone else.
            return bool(task.uncancel() == 0)
        return True

    def _forget_task_cancel(self, task: Optional[asyncio.Task[Any]]) -> None:
        # The handler may have swallowed our CancelledError; undo our pending
        # request so later ``asyncio.timeout``/TaskGroup logic is not confused.
        if self._task_cancelled and task is not None and hasattr(task, "uncancel"):
            task.uncancel()
        self._task_cancelled = False

    def _release_request_work(self) -> None:
        """Cancel the timers and child tasks that exist only for this request."""
        timers, self._timers = self._timers, None
        for handle in timers or ():
            handle.cancel()
        children, self._children = self._children, None
        for child in children or ():
            child.cancel()

    def _child_done(self, task: asyncio.Task[Any]) -> None:
        if self._children is not None:
            self._children.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("Exception in task spawned by %r", self, exc_info=error)
