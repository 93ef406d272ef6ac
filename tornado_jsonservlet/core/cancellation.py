"""Request cancellation: stop a handler's work the moment nobody wants its answer.

Cancellation, the concept
-------------------------
A request is *cancelled* for a :class:`CancelReason`: its client left
(:data:`CLIENT_LEFT`, the common case), its deadline passed, or the server is
shutting down. Whatever the reason, the same things happen:

1. if the request is cancellable, the timers (``call_later``) and child tasks
   (``spawn``) it owns are cancelled: they exist for this response only. An
   uncancellable request keeps them until it finishes: cancelling the child it
   awaits would cut it in half as surely as cancelling the request;
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

For an *uncancellable* request (a POST that did not opt in, say), a deadline
means what a disconnect means: the request runs to completion, its children
included, and the client gets its normal answer; ``cancel_reason`` says the
deadline passed. Its work is not told about the deadline either (the context's
``deadline_remaining()`` is None there, outbound calls are not capped and carry
no deadline header), since it would not be kept. Not a 504 after the fact: the
work was done, and a client told "deadline exceeded" would retry a mutation that
succeeded.

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
import json
from collections.abc import Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, ClassVar, Literal, Optional, TypeVar

import tornado.web
from tornado.log import access_log, app_log

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core import context, threads, tracing
from tornado_jsonservlet.core.connection import CLIENT_CLOSED_REQUEST, abort_response
from tornado_jsonservlet.core.error_shape import error_document
from tornado_jsonservlet.core.headers import header_or_none
from tornado_jsonservlet.core.safe_output import SafeWriteMixin, positive_seconds
from tornado_jsonservlet.core.scope import RequestScope, scope_of

__all__ = [
    "CLIENT_LEFT",
    "DEADLINE_EXCEEDED",
    "SAFE_METHODS",
    "WRITE_STALLED",
    "CancelOnDisconnectMixin",
    "CancelPolicy",
    "CancelReason",
    "RequestCancelled",
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

    Once the headers went out, the status the client got stays in the access log,
    and the response is cut, so that a truncated body never passes for a whole
    one; with ``ends_streams_cleanly``, a streamed response (SSE, JSON lines) is
    ended normally instead, as its client can resume (a shutdown).

    .. versionadded:: 0.1
    """

    status: int
    errcode: str
    message: str
    ends_streams_cleanly: bool = False


#: The client disconnected: logged as 499, nothing sent.
CLIENT_LEFT = CancelReason(CLIENT_CLOSED_REQUEST, "CLIENT_CLOSED_REQUEST", "Client closed request")

#: The request's deadline passed (gRPC's name for it): 504 to a client still there.
DEADLINE_EXCEEDED = CancelReason(
    504, "DEADLINE_EXCEEDED", "The request took longer than its deadline"
)

#: The client stopped reading: no byte of a pending write went out for
#: ``write_timeout`` seconds. Ended like a departure: nothing more sent, 499.
WRITE_STALLED = CancelReason(
    CLIENT_CLOSED_REQUEST, "WRITE_STALLED", "The client stopped reading the response"
)

# An inbound deadline header carries whole milliseconds; more than ten digits
# (about 115 days) is not a deadline anyone means.
_MAX_DEADLINE_DIGITS = 10


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

    .. versionadded:: 0.1
    """
    setattr(method, _CANCEL_MARK, True)
    return method


def uncancellable(method: _F) -> _F:
    """Mark an HTTP-verb method to run to completion after its client leaves.

    The disconnect is still detected (``client_disconnected``, callbacks, hooks)
    and output is still dropped safely; only the cancellation is skipped. Returns
    the method itself: nothing is wrapped.

    .. versionadded:: 0.1
    """
    setattr(method, _CANCEL_MARK, False)
    return method


# -- in-flight registry (read by graceful shutdown) -------------------------------
# Every toolkit request whose task is running, so that a shutdown can cancel what
# is left after its grace period. A plain set (a weak one costs two weak references
# per request): a request is added when its task starts and removed when the task
# ends, in the task's ``finally``, which also runs for a task collected unfinished.
_running: set[CancelOnDisconnectMixin] = set()


def running_requests() -> list[CancelOnDisconnectMixin]:
    """The toolkit requests running on the current event loop (handler started, not ended)."""
    loop = asyncio.get_running_loop()
    running = []
    for handler in list(_running):
        task = scope_of(handler).task
        if task is not None and task.get_loop() is loop:
            running.append(handler)
    return running


class RequestCancelled(tornado.web.HTTPError):
    """The error a request the toolkit cancelled answers with (a deadline's 504, say).

    An ``HTTPError`` passed to ``send_error`` as ``exc_info``, so that an
    application's ``write_error`` sees the status it knows how to render, and the
    toolkit's error mixins render :attr:`cancel_reason`'s ``errcode`` and message in
    the shape of every other error.
    """

    def __init__(self, reason: CancelReason) -> None:
        super().__init__(reason.status)
        self.cancel_reason = reason


def _await_chain(task: asyncio.Future[Any]) -> list[asyncio.Future[Any]]:
    """The futures ``task`` waits on, outermost first (a task awaiting a task...)."""
    chain: list[asyncio.Future[Any]] = []
    waiter = tornado_internals.awaited_future(task)
    while waiter is not None and len(chain) < 16:
        chain.append(waiter)
        waiter = tornado_internals.awaited_future(waiter)
    return chain


def _awaited_by_another_request(
    handler: CancelOnDisconnectMixin,
) -> Optional[asyncio.Future[Any]]:
    """A future that ``handler``'s task awaits and another running request awaits too.

    Cancelling a task cancels the future it awaits; when that future is work
    shared between requests (request coalescing, a cache of pending lookups), the
    other requests would see a ``CancelledError`` for a client that is not theirs.
    """
    task = scope_of(handler).task
    if task is None:
        return None
    ours = _await_chain(task)
    if not ours:
        return None
    for other in list(_running):
        other_scope = scope_of(other)
        if other is handler or other_scope.task is None or other_scope.reason is not None:
            continue
        theirs = _await_chain(other_scope.task)
        for future in ours:
            if future in theirs:
                return future
    return None


class _Shield:
    """``async with handler.shielded():`` -- see :meth:`CancelOnDisconnectMixin.shielded`."""

    __slots__ = ("_handler", "_scope")

    def __init__(self, handler: CancelOnDisconnectMixin) -> None:
        self._handler = handler
        self._scope = scope_of(handler)

    async def __aenter__(self) -> None:
        self._scope.shield_depth += 1

    async def __aexit__(
        self,
        typ: Optional[type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        scope = self._scope
        scope.shield_depth -= 1
        if scope.shield_depth or scope.reason is None:
            return
        if typ is None and scope.task is not None and scope.task is asyncio.current_task():
            # Leaving the shield inside the request's own task: land the
            # cancellation right here, so nothing after the block runs.
            if self._handler._jsonservlet_may_cancel_task() and scope.cancel_task():
                await asyncio.sleep(0)
        else:
            self._handler._jsonservlet_deliver()


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

    .. versionadded:: 0.1
    """

    #: Which requests a disconnect cancels: ``"safe"`` (GET/HEAD/OPTIONS), ``"all"``
    #: or ``"none"``. ``@cancellable``/``@uncancellable`` on a verb method win.
    cancel_policy: ClassVar[CancelPolicy] = "safe"

    #: Seconds each request may take before it is cancelled with a 504; None: no
    #: deadline. Set here, it wins over the application setting of the same name.
    request_deadline: ClassVar[Optional[float]] = None
    #: Whether a class below this one sets ``request_deadline`` (it then wins over
    #: the application setting).
    _jsonservlet_sets_deadline: ClassVar[bool] = False

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
        if "request_deadline" in cls.__dict__ and not positive_seconds(cls.request_deadline):
            raise ValueError(
                f"{cls.__name__}.request_deadline must be None or a positive number "
                f"of seconds, not {cls.request_deadline!r}"
            )
        # Decided once per class, read on every request (a set of classes costs a
        # weak reference per look-up).
        cls._jsonservlet_sets_deadline = any(
            "request_deadline" in klass.__dict__
            for klass in cls.__mro__[:-1]
            if klass is not CancelOnDisconnectMixin
        )
        prepare = cls.__dict__.get("prepare")
        if prepare is not None and hasattr(prepare, _CANCEL_MARK):
            raise TypeError(
                f"{cls.__name__}.prepare: @cancellable/@uncancellable apply to HTTP-verb "
                "methods (the verb decides for the whole request); protect steps of "
                "prepare() with 'async with self.shielded():'"
            )

    # -- public API ------------------------------------------------------------

    @property
    def cancel_reason(self) -> Optional[CancelReason]:
        """Why this request is being cancelled, or None while it is not.

        Set once, by the first reason (:data:`CLIENT_LEFT`, :data:`DEADLINE_EXCEEDED`,
        a shutdown's); it stays set after the request ends. It is set for a request
        that opted out of cancellation too: the reason is known even when the task
        is left to run.
        """
        reason: Optional[CancelReason] = scope_of(self).reason
        return reason

    def shielded(self) -> _Shield:
        """Defer this request's cancellation until the ``async with`` block ends.

        What is deferred: the toolkit's own cancellations of the request's task (a
        disconnect, a deadline, a shutdown), and only those; a ``task.cancel()``
        from anyone else is not the toolkit's to hold back and arrives at once. A
        cancellation that happens inside the block is recorded at once (callbacks
        and hooks run, owned timers and children are cancelled) and delivered
        once, when the outermost block exits, so the code after the block does
        not run. Delivery is edge-triggered: one ``CancelledError`` per request,
        never a second one at a later ``await``.
        """
        return _Shield(self)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        """Schedule ``callback(*args)`` after ``delay`` seconds, for this request only.

        The timer is cancelled if the request is cancelled (its client left, say)
        or finishes first; an uncancellable request keeps it until it finishes.
        The returned handle can be cancelled earlier as usual.
        """
        loop = asyncio.get_running_loop()
        scope = scope_of(self)
        if self._jsonservlet_work_is_over(scope):
            handle = loop.call_later(delay, callback, *args)
            handle.cancel()
            return handle

        def fire() -> None:
            scope.disown(handle)
            callback(*args)

        handle = loop.call_later(delay, fire)
        scope.own(handle)
        return handle

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run ``coro`` as a child task owned by this request.

        The child follows the request's policy: it is cancelled when the request
        is cancelled (a cancellable one; an uncancellable request keeps its
        children running, since they are part of its work) or finishes. Await the
        returned task to use its result or handle its exception. An exception
        nobody retrieves is reported by asyncio, once, when the task is garbage
        collected ("Task exception was never retrieved"); one that the handler
        awaited, or got through ``task.exception()``, is not reported.
        """
        task = asyncio.ensure_future(coro)
        scope = scope_of(self)
        if self._jsonservlet_work_is_over(scope):
            task.cancel()
        else:
            scope.own(task)
            task.add_done_callback(scope.disown)
        return task

    def deadline_remaining(self) -> Optional[float]:
        """Seconds left before this request's deadline (never negative), or None."""
        deadline_at = scope_of(self).deadline_at
        if deadline_at is None:
            return None
        return max(0.0, deadline_at - context.loop_time())

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
        scope = scope_of(self)
        if scope.reason is not None or tornado_internals.is_finished(self):
            return
        scope.reason = reason
        if self._jsonservlet_may_cancel_task():
            # The children go with the request. An uncancellable request keeps
            # them: cancelling the child it awaits would cut it in half just the
            # same (and answer 500); they end with the request, at finish.
            scope.release_owned()
        self._jsonservlet_deliver()

    # -- Tornado hooks (through the adapter) --------------------------------------

    def _jsonservlet_enter(self, transforms: list[tornado.web.OutputTransform]) -> bool:
        # Tornado runs the whole request (prepare, body, verb) in this task; its
        # cancellation is absorbed in one place, _jsonservlet_absorb.
        scope: RequestScope = self._tornado_jsonservlet_scope or scope_of(self)
        scope.task = asyncio.current_task()
        deadline = self._jsonservlet_deadline_seconds()
        if deadline is not None:
            self._jsonservlet_start_deadline(scope, deadline)
        _running.add(self)
        if scope.reason is not None and self._jsonservlet_may_cancel_task():
            # Cancelled before the handler started (a client that sent its
            # request and reset at once): do not start the work at all.
            tornado_internals.adopt_transforms(self, transforms)
            self._jsonservlet_end_cancelled()
            tornado_internals.release_prepare_waiters(self)
            return False
        return super()._jsonservlet_enter(transforms)

    def _jsonservlet_absorb(self) -> bool:
        # The one absorption point: our own cancellation ends here, as the
        # reason's outcome; anyone else's goes on.
        if not scope_of(self).absorb():
            return super()._jsonservlet_absorb()
        self._jsonservlet_end_cancelled()
        return True

    def _jsonservlet_exit(self) -> None:
        scope: RequestScope = self._tornado_jsonservlet_scope or scope_of(self)
        _running.discard(self)
        if scope.delivered:
            # The handler swallowed our CancelledError: take back our request so
            # asyncio.timeout/TaskGroup logic around the task is not confused.
            scope.absorb()
        scope.task = None
        super()._jsonservlet_exit()

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """Tornado's ``send_error``, except for the toolkit's own cancellation.

        Tornado 6.6 answers a cancelled handler task with a plain 500. When the
        cancellation was the toolkit's (a disconnect, a deadline, a shutdown), the request
        ends with that reason's outcome instead: a 499 in the access log, or the reason's
        status and ``errcode`` for a client that is still there.
        """
        scope = scope_of(self)
        if scope.delivered and "exc_info" not in kwargs and asyncio.current_task() is scope.task:
            # Tornado 6.6 answers its task's cancellation with a plain 500. When
            # the cancellation is ours, the request ends with our outcome instead.
            self._jsonservlet_end_cancelled()
            return
        super().send_error(status_code, **kwargs)

    def _jsonservlet_log(self, write_access_line: Callable[[], None]) -> None:
        scope: RequestScope = self._tornado_jsonservlet_scope or scope_of(self)
        reason: Optional[CancelReason] = scope.reason
        if (
            reason is not None
            and reason.status >= 500
            # its error response, or a response it cut after the headers (whose
            # line keeps the status the client got)
            and (self.get_status() == reason.status or scope.closed_by_server)
            and "log_function" not in self.settings
            and type(self.application).log_request is tornado.web.Application.log_request
        ):
            # Tornado logs a 5xx at ERROR, where alerting listens. A request that
            # the toolkit cancelled on purpose (a deadline, a shutdown) is expected:
            # the same line, at WARNING.
            access_log.warning(
                "%d %s %.2fms",
                self.get_status(),
                tornado_internals.request_summary(self),
                1000.0 * self.request.request_time(),
            )
            return
        super()._jsonservlet_log(write_access_line)

    @tornado_internals.covered_by_one_write
    def finish(self, chunk: Any = None) -> asyncio.Future[None]:
        """Tornado's ``finish``; once the request is finished, its timers and child tasks
        (``call_later``, ``spawn``) are cancelled, so nothing the request owns outlives it.
        """
        reason: Optional[CancelReason] = scope_of(self).reason
        if reason is not None and not tornado_internals.is_finished(self):
            # Before Tornado's finish ends the tracer's span (in on_finish).
            tracing.note_cancellation(reason.errcode, reason.status)
        try:
            return super().finish(chunk)
        finally:
            if tornado_internals.is_finished(self):
                scope_of(self).release_owned()

    # -- machinery (prefixed: the handler's namespace is the application's) -------

    def _jsonservlet_on_client_left(self, scope: RequestScope) -> None:
        # Release first, so disconnect hooks already see a quiet request; then the
        # hooks and callbacks; then the cancellation, delivered at the next await.
        # An uncancellable request keeps its children: they are part of its work.
        if self._jsonservlet_may_cancel_task():
            scope.release_owned()
        super()._jsonservlet_on_client_left(scope)
        self.cancel_request(CLIENT_LEFT)

    def _jsonservlet_write_stalled(self, idle: float) -> None:
        # The reason first (the first one wins), so the departure recorded next
        # by the safe-output layer is cancelled as a stall, not as CLIENT_LEFT.
        self.cancel_request(WRITE_STALLED)
        super()._jsonservlet_write_stalled(idle)

    def _jsonservlet_work_is_over(self, scope: RequestScope) -> bool:
        """Whether new child work would be cancelled at once: the request finished,
        or it is being cancelled and its policy lets its work be cancelled."""
        if tornado_internals.is_finished(self):
            return True
        return scope.reason is not None and self._jsonservlet_may_cancel_task()

    def _jsonservlet_verb_function(self) -> Any:
        """The function that serves this request's method; it may carry a mark."""
        return getattr(type(self), (self.request.method or "").lower(), None)

    def _jsonservlet_may_cancel_task(self) -> bool:
        """The policy: whether this request's task may be cancelled."""
        mark = getattr(self._jsonservlet_verb_function(), _CANCEL_MARK, None)
        if mark is not None:
            return bool(mark)
        policy = self.cancel_policy
        return policy == "all" or (policy == "safe" and self.request.method in SAFE_METHODS)

    def _jsonservlet_deliver(self) -> None:
        """Cancel the request's task, if it runs, may be cancelled and is not shielded."""
        scope = scope_of(self)
        task = scope.task
        if task is None or scope.shield_depth or scope.delivered or task.done():
            return  # not started (the execute hook checks), shielded, or delivered
        if not self._jsonservlet_may_cancel_task():
            return
        if task is asyncio.current_task():
            # Detected from inside the task (a failed flush, say): a cancel() now
            # would also cancel the task if it returned without another await, and
            # Tornado 6.4/6.5 would log that. Deliver it once the task is suspended.
            task.get_loop().call_soon(self._jsonservlet_deliver)
            return
        shared = _awaited_by_another_request(self)
        if shared is not None:
            # Cancelling our task would cancel work another request still awaits:
            # end this request now, and cancel its task once that work is done.
            self._jsonservlet_end_cancelled()
            shared.add_done_callback(lambda _: self._jsonservlet_deliver())
            return
        scope.cancel_task()

    def _jsonservlet_end_cancelled(self) -> None:
        """The one place that decides how a cancelled request ends.

        * its client left, or stopped reading (:data:`WRITE_STALLED`): nothing
          is sent, 499 in the access log;
        * part of the response is out: the connection is cut (an error cannot
          follow a body, and a clean end would pass a truncated body as whole);
        * otherwise: the reason's error response (504 for a deadline, 503 for a
          shutdown), rendered by the application's ``write_error`` or the
          toolkit's error mixins, in the shape of every other error.

        Every path goes through the handler's own ``finish()``, so every override
        of ``finish``, ``on_finish`` and ``log_exception`` runs exactly once.
        """
        scope = scope_of(self)
        reason: Optional[CancelReason] = scope.reason
        if reason is None or tornado_internals.is_finished(self):
            return
        task = scope.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            scope.ended_early = True  # the task goes on for a while: keep it quiet
        if reason is CLIENT_LEFT or reason is WRITE_STALLED or scope.client_gone:
            # A stalled client is a departure the server decided: nothing more
            # can reach it, so it ends like one (nothing sent, 499).
            self.finish()
        elif tornado_internals.headers_sent(self):
            # The status already went out: the access log keeps the one sent.
            stream_started = getattr(scope.stream, "stream_started", False)
            if reason.ends_streams_cleanly and stream_started:
                self.finish()
            else:
                abort_response(self)
        elif type(self).write_error is _tornado_write_error:
            # No error rendering of the application's: the toolkit's JSON shape.
            self.clear()
            self.set_status(reason.status)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            document = error_document(reason.errcode, reason.message, scope.request_id)
            self.finish(json.dumps(document, separators=(",", ":")))
        else:
            error = RequestCancelled(reason)
            self.send_error(reason.status, exc_info=(type(error), error, None))

    def _jsonservlet_deadline_seconds(self) -> Optional[float]:
        """This request's deadline in seconds from now, or None."""
        settings = self.settings
        if self._jsonservlet_sets_deadline:
            seconds = self.request_deadline
        else:
            seconds = settings.get("request_deadline")
            if seconds is not None and not positive_seconds(seconds):
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
            theirs = _header_deadline(header_or_none(self.request.headers, name))
            if theirs is not None:
                seconds = theirs if seconds is None else min(seconds, theirs)
        return seconds

    def _jsonservlet_start_deadline(self, scope: RequestScope, seconds: float) -> None:
        # The context is the request task's own copy: everything the request
        # starts from here (child tasks, threads, outbound calls) sees it.
        scope.deadline_at = context.loop_time() + seconds
        if self._jsonservlet_may_cancel_task():
            # Only work that the deadline will cancel is told about it. An
            # uncancellable request runs to completion: capping its outbound
            # calls (or telling upstreams to give up) would cut it in half all
            # the same. Its handler still sees deadline_remaining().
            context.request_deadline.set(scope.deadline_at)
        header = self.settings.get("deadline_header")
        if header:
            context.deadline_header.set(header)
        self.call_later(seconds, self.cancel_request, DEADLINE_EXCEEDED)
