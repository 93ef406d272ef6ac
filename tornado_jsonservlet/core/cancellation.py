"""Request cancellation: stop a handler's work the moment nobody wants its answer.

Cancellation, the concept
-------------------------
A request is *cancelled* for a :class:`CancelReason`: its client left
(:data:`CLIENT_LEFT`, the common case), its deadline passed, or the server is
shutting down. Whatever the reason, the same things happen:

1. the timers (``call_later``) and child tasks (``spawn``) owned by the request
   are cancelled: they exist for this response only;
2. if the request is *cancellable* (see the policy below), its task is cancelled:
   ``asyncio.CancelledError`` is raised at the ``await`` where ``prepare()`` or
   the HTTP-verb method is suspended, so ``finally`` blocks and ``async with``
   exits run as usual;
3. the cancellation is absorbed at one point, Tornado's ``_execute``, which runs
   the whole request in its task; the request is then finished with the reason's
   outcome: nothing sent and status 499 in the access log when the client left,
   an error response otherwise (504 for a deadline, for example).

Deadlines
---------
``request_deadline`` (seconds; a class attribute, or the application setting of
the same name, the class winning) gives each request a deadline. When it passes,
the request is cancelled for :data:`DEADLINE_EXCEEDED`: exactly what a disconnect
cancels is cancelled, and the client, still there, gets 504
``{"errcode": "DEADLINE_EXCEEDED"}``. While a deadline is in force,
:func:`~tornado_jsonservlet.context.deadline_remaining` tells any code the
request runs (child tasks, threads, the cancellable HTTP client, which caps its
timeouts and tells upstreams) how long is left. With the application setting
``accept_deadline_header=True``, a request's deadline is also bounded by the
milliseconds its caller sent in the ``deadline_header`` setting's header (default
``X-Envoy-Expected-Rq-Timeout-Ms``, as Envoy sends it). A deadline costs one
``call_later``; no deadline costs nothing.

Only cancellations the toolkit started are absorbed. Any other one (server
shutdown by the application, a test's teardown, ``task.cancel()`` by application
code) propagates exactly as in plain Tornado. They are told apart with
``Task.cancelling()``/``uncancel()`` on Python 3.11+; on 3.9/3.10, which lack
them, a foreign cancellation that coincides with one of ours counts as ours.

Which requests are cancelled: the policy
----------------------------------------
Cancelling a request that changes state can cut it in half: a ``POST`` that
started a resource and was about to record it leaves the resource orphaned. So
by default only the *safe* methods, GET, HEAD and OPTIONS, are cancelled. A
``POST``, ``PUT``, ``PATCH`` or ``DELETE`` whose client leaves runs to
completion; its output is dropped quietly and the request is logged as 499.

* ``@cancellable`` on a verb method opts that method in;
* ``@uncancellable`` on a verb method opts it out;
* ``cancel_policy`` on the class sets the default: ``"safe"`` (the default),
  ``"all"`` or ``"none"``. Disconnect detection and safe output stay on.
* ``async with self.shielded():`` protects a critical section of a cancellable
  request: the cancellation is delivered when the block ends.

How the task is found, and why no method is wrapped
---------------------------------------------------
Applications introspect their handler methods (``__code__``,
``inspect.iscoroutinefunction``, decorators' ``__wrapped__``), so the mixin
never replaces them. Tornado runs ``RequestHandler._execute`` as the request's
task; the mixin overrides ``_execute``, notes ``asyncio.current_task()`` there,
and absorbs its own cancellation when it comes back out. Tornado 6.6 answers a
cancelled handler task with ``send_error(500)`` before re-raising, and 6.4/6.5
let the cancellation escape; the mixin gives the same result on all three.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, ClassVar, Literal, Optional, TypeVar, Union

import tornado.web
from tornado.log import access_log, app_log

from tornado_jsonservlet.core import context, threads
from tornado_jsonservlet.core.connection import CLIENT_CLOSED_REQUEST, abort_response
from tornado_jsonservlet.core.safe_output import SafeWriteMixin
from tornado_jsonservlet.errors.exceptions import ServletError
from tornado_jsonservlet.jsonio.codec import JSON_CONTENT_TYPE, encode

__all__ = [
    "CLIENT_LEFT",
    "DEADLINE_EXCEEDED",
    "SAFE_METHODS",
    "CancelOnDisconnectMixin",
    "CancelPolicy",
    "CancelReason",
    "cancellable",
    "running_requests",
    "uncancellable",
]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")

#: Methods that must not change server state (RFC 9110, 9.2.1): cancelled by default.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CancelPolicy = Literal["safe", "all", "none"]
_POLICIES = ("safe", "all", "none")

_CANCEL_MARK = "_tornado_jsonservlet_cancel"

_tornado_write_error = tornado.web.RequestHandler.write_error
_reported_bad_settings: set[int] = set()


@dataclass(frozen=True)
class CancelReason:
    """Why a request's work is cancelled, and how the request then ends.

    ``status``, ``errcode`` and ``message`` make the error response sent when
    the cancellation is absorbed; for :data:`CLIENT_LEFT` nothing is sent (there is
    nobody to send it to) and ``status`` is what the access log records.
    """

    status: int
    errcode: str
    message: str


#: The client disconnected: logged as 499, nothing sent.
CLIENT_LEFT = CancelReason(CLIENT_CLOSED_REQUEST, "CLIENT_CLOSED_REQUEST", "Client closed request")

#: The request's deadline passed (gRPC's name for it): 504 to a client still there.
DEADLINE_EXCEEDED = CancelReason(
    504, "DEADLINE_EXCEEDED", "The request took longer than its deadline"
)

# An inbound deadline header carries whole milliseconds; more than ten digits
# (about 115 days) is not a deadline anyone means.
_MAX_DEADLINE_DIGITS = 10


def _valid_deadline(value: object) -> bool:
    """None, or a positive finite number of seconds."""
    if value is None:
        return True
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _header_deadline(value: Optional[str]) -> Optional[float]:
    """Seconds from a caller's deadline header, or None for a missing or bad value.

    Strict: ASCII digits only, bounded length, above zero (proxies send 0 for "no
    timeout"). Anything else is ignored, never an error: a caller's bad header
    must not fail the request.
    """
    if not value or len(value) > _MAX_DEADLINE_DIGITS or not value.isascii():
        return None
    if not value.isdigit():
        return None
    milliseconds = int(value)
    return milliseconds / 1000.0 if milliseconds > 0 else None


def cancellable(method: _F) -> _F:
    """Mark an HTTP-verb method to be cancelled when its client leaves.

    For mutating methods (POST, PUT, PATCH, DELETE), which run to completion by
    default. Make sure a cancellation at any ``await`` leaves consistent state, or
    protect the critical steps with ``async with self.shielded():``. Returns the
    method itself: nothing is wrapped.
    """
    setattr(method, _CANCEL_MARK, True)
    return method


def uncancellable(method: _F) -> _F:
    """Mark an HTTP-verb method to run to completion after its client leaves.

    The disconnect is still detected (``client_disconnected``, callbacks, hooks)
    and output is still dropped safely; only the cancellation is skipped. Returns
    the method itself: nothing is wrapped.
    """
    setattr(method, _CANCEL_MARK, False)
    return method


# -- in-flight registry (read by graceful shutdown) -------------------------------
# Every toolkit request whose ``_execute`` is running, so that a shutdown can cancel
# what is left after its grace period. Weak: a registry must never keep a request alive.
_running: weakref.WeakSet[CancelOnDisconnectMixin] = weakref.WeakSet()


def running_requests() -> list[CancelOnDisconnectMixin]:
    """The toolkit requests running on the current event loop (handler started, not ended)."""
    loop = asyncio.get_running_loop()
    return [h for h in list(_running) if h._request_task and h._request_task.get_loop() is loop]


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
        if handler._shield_depth or handler._cancel_reason is None:
            return
        task = handler._request_task
        if typ is None and task is not None and task is asyncio.current_task():
            # Leaving the shield inside the request's own task: land the
            # cancellation right here, so nothing after the block runs.
            if handler._cancel_task(task, now=True):
                await asyncio.sleep(0)
        else:
            handler._deliver_cancel()


class CancelOnDisconnectMixin(SafeWriteMixin):
    """Cancel ``prepare()`` and the HTTP-verb coroutine when the client disconnects.

    Mix it in before ``RequestHandler`` (or your own base handler)::

        class ReportHandler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
            async def get(self):
                rows = await fetch_report()   # cancelled here if the client leaves
                self.write({"rows": rows})

    GET, HEAD and OPTIONS are cancelled by default; see the module documentation
    for the policy. Output methods are safe after a disconnect (this mixin
    includes :class:`~tornado_jsonservlet.safe_output.SafeWriteMixin`). While the
    client stays connected, the handler behaves exactly as without the mixin.
    """

    #: Which requests a disconnect cancels: ``"safe"`` (GET/HEAD/OPTIONS), ``"all"``
    #: or ``"none"``. ``@cancellable``/``@uncancellable`` on a verb method win.
    cancel_policy: ClassVar[CancelPolicy] = "safe"

    #: Seconds each request may take before it is cancelled with a 504; None: no
    #: deadline. Set here, it wins over the application setting of the same name.
    request_deadline: ClassVar[Optional[float]] = None
    _deadline_from_class: ClassVar[bool] = False

    # Per-request state; class-level defaults keep a connected request allocation-free.
    _request_task: Optional[asyncio.Task[Any]] = None
    _cancel_reason: Optional[CancelReason] = None  # set once, when cancellation starts
    _cancel_in_flight: bool = False  # our task.cancel() is not yet absorbed
    _shield_depth: int = 0
    _owned: Optional[set[Union[asyncio.TimerHandle, asyncio.Task[Any]]]] = None
    _deadline_at: Optional[float] = None  # loop time

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "cancel_on_disconnect" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__}.cancel_on_disconnect was replaced by cancel_policy: "
                'use cancel_policy = "none" (or "safe", the default, or "all")'
            )
        if cls.cancel_policy not in _POLICIES:
            raise ValueError(
                f"{cls.__name__}.cancel_policy must be one of {_POLICIES}, "
                f"not {cls.cancel_policy!r}"
            )
        if "request_deadline" in cls.__dict__:
            if not _valid_deadline(cls.request_deadline):
                raise ValueError(
                    f"{cls.__name__}.request_deadline must be None or a positive number "
                    f"of seconds, not {cls.request_deadline!r}"
                )
            cls._deadline_from_class = True
        prepare = cls.__dict__.get("prepare")
        if prepare is not None and hasattr(prepare, _CANCEL_MARK):
            raise TypeError(
                f"{cls.__name__}.prepare: @cancellable/@uncancellable apply to HTTP-verb "
                "methods (the verb decides for the whole request); protect steps of "
                "prepare() with 'async with self.shielded():'"
            )

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

        The timer is cancelled if the request is cancelled (its client left, say)
        or finishes first. The returned handle can be cancelled earlier as usual.
        """
        loop = asyncio.get_running_loop()
        if self._cancel_reason is not None or self._finished:
            handle = loop.call_later(delay, callback, *args)
            handle.cancel()
            return handle
        owned = self._owned_work()

        def fire() -> None:
            owned.discard(handle)
            callback(*args)

        handle = loop.call_later(delay, fire)
        owned.add(handle)
        return handle

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run ``coro`` as a child task owned by this request.

        The child is cancelled when the request is cancelled or finishes. Await the
        returned task to use its result or handle its exception. An exception
        nobody retrieves is reported by asyncio, once, when the task is garbage
        collected ("Task exception was never retrieved"); one that the handler
        awaited, or got through ``task.exception()``, is not reported.
        """
        task = asyncio.ensure_future(coro)
        if self._cancel_reason is not None or self._finished:
            task.cancel()
        else:
            owned = self._owned_work()
            owned.add(task)
            task.add_done_callback(owned.discard)
        return task

    def deadline_remaining(self) -> Optional[float]:
        """Seconds left before this request's deadline (never negative), or None."""
        if self._deadline_at is None:
            return None
        return max(0.0, self._deadline_at - context.loop_time())

    async def run_in_executor(
        self, fn: Callable[..., _T], *args: object, executor: Optional[Executor] = None
    ) -> _T:
        """Run ``fn(*args)`` in a thread, for this request.

        If the request is cancelled (its client left, its deadline passed), the await
        ends at once; the thread cannot be stopped, but
        :func:`~tornado_jsonservlet.current_cancel_token` inside ``fn`` is set at that
        moment so it can stop itself. See :func:`tornado_jsonservlet.threads.run_in_executor`.
        """
        return await threads.run_in_executor(fn, *args, executor=executor)

    def cancel_request(self, reason: CancelReason) -> None:
        """Cancel this request's work for ``reason``; see the module documentation.

        The first reason wins; later calls, and calls after the request finished,
        do nothing. Safe to call from any callback on the request's event loop.
        """
        if self._cancel_reason is not None or self._finished:
            return
        self._cancel_reason = reason
        self._release_request_work()
        self._deliver_cancel()

    # -- Tornado hooks ---------------------------------------------------------

    async def _execute(
        self, transforms: list[tornado.web.OutputTransform], *args: bytes, **kwargs: bytes
    ) -> None:
        # The one absorption point: Tornado runs the whole request (prepare, body,
        # verb) inside this coroutine's task, the same signature on 6.4 to 6.6.
        task = asyncio.current_task()
        self._request_task = task
        deadline = self._deadline_seconds()
        if deadline is not None:
            self._start_deadline(deadline)
        _running.add(self)  # in-flight registry
        try:
            if self._cancel_reason is not None and self._is_cancellable():
                # Cancelled before the handler started (a client that sent its
                # request and reset at once): do not start the work at all.
                self._transforms = transforms
                self._finish_cancelled()
                prepared: Optional[asyncio.Future[None]] = getattr(self, "_prepared_future", None)
                if prepared is not None and not prepared.done():
                    prepared.set_result(None)  # releases a waiting streamed-body reader
                return
            await super()._execute(transforms, *args, **kwargs)
        except asyncio.CancelledError:
            if not self._absorb_own_cancel(task):
                raise
            self._finish_cancelled()
        finally:
            _running.discard(self)  # in-flight registry
            self._request_task = None
            if self._cancel_in_flight:
                # The handler swallowed our CancelledError: take back our request so
                # asyncio.timeout/TaskGroup logic around the task is not confused.
                self._absorb_own_cancel(task)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        if (
            self._cancel_in_flight
            and "exc_info" not in kwargs
            and asyncio.current_task() is self._request_task
        ):
            # Tornado 6.6 answers its task's cancellation with a plain 500. When
            # the cancellation is ours, the request ends with our outcome instead.
            self._finish_cancelled()
            return
        super().send_error(status_code, **kwargs)

    def _log(self) -> None:
        reason = self._cancel_reason
        if (
            reason is not None
            and reason.status >= 500
            and self.get_status() == reason.status
            and "log_function" not in self.settings
            and type(self.application).log_request is tornado.web.Application.log_request
        ):
            # Tornado logs a 5xx at ERROR, where alerting listens. A request that
            # the toolkit cancelled on purpose (a deadline, a shutdown) is expected:
            # the same line, at WARNING.
            access_log.warning(
                "%d %s %.2fms",
                reason.status,
                self._request_summary(),
                1000.0 * self.request.request_time(),
            )
            return
        super()._log()

    def finish(self, chunk: Any = None) -> asyncio.Future[None]:
        try:
            return super().finish(chunk)
        finally:
            if self._finished:
                self._release_request_work()

    # -- machinery -------------------------------------------------------------

    def _on_client_left(self) -> None:
        # Release first, so disconnect hooks already see a quiet request; then the
        # hooks and callbacks; then the cancellation, delivered at the next await.
        self._release_request_work()
        super()._on_client_left()
        self.cancel_request(CLIENT_LEFT)

    def _verb_function(self) -> Any:
        """The function that serves this request's method; it may carry a mark."""
        return getattr(type(self), (self.request.method or "").lower(), None)

    def _is_cancellable(self) -> bool:
        mark = getattr(self._verb_function(), _CANCEL_MARK, None)
        if mark is not None:
            return bool(mark)
        policy = self.cancel_policy
        return policy == "all" or (policy == "safe" and self.request.method in SAFE_METHODS)

    def _deliver_cancel(self) -> None:
        """Cancel the request's task, if it runs, may be cancelled and is not shielded."""
        task = self._request_task
        if task is None or self._shield_depth or not self._is_cancellable():
            return  # not started (``_execute`` checks), shielded, or opted out
        self._cancel_task(task, now=task is not asyncio.current_task())

    def _cancel_task(self, task: asyncio.Task[Any], *, now: bool) -> bool:
        if self._cancel_in_flight or task.done():
            return False
        if not now:
            # Detected from inside the task (a failed flush, say): a cancel() now
            # would also cancel the task if it returned without another await, and
            # Tornado 6.4/6.5 would log that. Deliver it once the task is suspended.
            task.get_loop().call_soon(self._deliver_cancel)
            return False
        self._cancel_in_flight = True
        task.cancel()
        return True

    def _absorb_own_cancel(self, task: Optional[asyncio.Task[Any]]) -> bool:
        """Take back our cancellation; True if no one else also cancelled the task."""
        if not self._cancel_in_flight:
            return False
        self._cancel_in_flight = False
        uncancel = getattr(task, "uncancel", None)
        return uncancel is None or uncancel() == 0

    def _finish_cancelled(self) -> None:
        """End a cancelled request with its reason's outcome."""
        reason = self._cancel_reason
        if self._finished or reason is None:
            return
        if reason is CLIENT_LEFT or self._client_gone:
            self._finish_as_disconnected()
            return
        if self._headers_written:
            # Part of the response is out: an error cannot follow, a cut can.
            self.set_status(reason.status)
            abort_response(self)
        elif type(self).write_error is _tornado_write_error:
            # No error rendering of the application's: the toolkit's JSON shape.
            self.clear()
            self.set_status(reason.status)
            self.set_header("Content-Type", JSON_CONTENT_TYPE)
            self.finish(encode({"errcode": reason.errcode, "error": reason.message}))
        else:
            error = ServletError(reason.status, reason.message, reason.errcode)
            self.send_error(reason.status, exc_info=(type(error), error, None))

    def _deadline_seconds(self) -> Optional[float]:
        """This request's deadline in seconds from now, or None."""
        settings = self.settings
        if self._deadline_from_class:
            seconds = self.request_deadline
        else:
            seconds = settings.get("request_deadline")
            if seconds is not None and not _valid_deadline(seconds):
                # Tornado offers no hook at Application creation; say it once, loudly,
                # and serve without a deadline rather than fail every request.
                if id(settings) not in _reported_bad_settings:
                    _reported_bad_settings.add(id(settings))
                    app_log.error(
                        "Ignoring the request_deadline setting %r: it must be None or a "
                        "positive number of seconds",
                        seconds,
                    )
                seconds = None
        if settings.get("accept_deadline_header"):
            name = settings.get("deadline_header") or context.DEFAULT_DEADLINE_HEADER
            theirs = _header_deadline(self.request.headers.get(name))
            if theirs is not None:
                seconds = theirs if seconds is None else min(seconds, theirs)
        return seconds

    def _start_deadline(self, seconds: float) -> None:
        # The context is the request task's own copy: everything the request
        # starts from here (child tasks, threads, outbound calls) sees it.
        self._deadline_at = context.loop_time() + seconds
        context.request_deadline.set(self._deadline_at)
        header = self.settings.get("deadline_header")
        if header:
            context.deadline_header.set(header)
        self.call_later(seconds, self.cancel_request, DEADLINE_EXCEEDED)

    def _owned_work(self) -> set[Union[asyncio.TimerHandle, asyncio.Task[Any]]]:
        if self._owned is None:
            self._owned = set()
        return self._owned

    def _release_request_work(self) -> None:
        """Cancel the timers and child tasks that exist only for this request."""
        owned, self._owned = self._owned, None
        for work in owned or ():
            work.cancel()
