"""One object per request: everything the toolkit knows about it.

Users mix the toolkit into handlers they already have, often into their base
class, so the toolkit must not take names in the handler's namespace: an
application whose ``initialize()`` sets ``self._writer`` or ``self._owned`` must
keep working. Every piece of per-request state therefore lives in one
:class:`RequestScope`, and the handler carries a single attribute for it, named
:data:`SCOPE_ATTRIBUTE`, which no application would pick.

The scope is also the single source of truth for the two questions every part of
the toolkit asks: *has the client left?* (:attr:`RequestScope.client_gone`) and
*is this request being cancelled, and why?* (:attr:`RequestScope.reason`). Two
mixins with two flags disagree exactly when it matters; one scope cannot.

Cancellation, as a concept, follows Trio's cancel scopes: a request is cancelled
once, for the first :class:`~tornado_jsonservlet.core.cancellation.CancelReason`
given; the work the request owns (timers, child tasks) is cancelled at that
moment; the request's own task is cancelled at most once (delivery is
edge-triggered), and not while it is shielded.

Families above the core keep their own small state objects in the scope's family
slots (``servlet``, ``json_body``, ``stream``...): the core declares the slot, the
family defines what goes in it, and the core never looks inside.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

if TYPE_CHECKING:
    import tornado.web

__all__ = ["SCOPE_ATTRIBUTE", "SCOPE_DEFAULT", "OwnedWork", "RequestScope", "scope_of"]

#: The one attribute the toolkit sets on a handler.
SCOPE_ATTRIBUTE = "_tornado_jsonservlet_scope"
#: Its value on the toolkit's mixin classes (``_tornado_jsonservlet_scope = None``
#: in their bodies): a handler has no scope until :func:`scope_of` makes one.
SCOPE_DEFAULT = None

OwnedWork = Union[asyncio.TimerHandle, "asyncio.Task[Any]"]


class RequestScope:
    """Everything the toolkit knows about one request.

    Created on first use by :func:`scope_of`; it lives as long as its handler.
    Fields are plain attributes for the toolkit's own modules; users read the
    handler's public views (``client_disconnected``, ``cancel_reason``...).
    """

    __slots__ = (  # noqa: RUF023  (grouped by owner, not sorted)
        # -- the client (core.connection) --
        "client_gone",  # the client left before the response was finished
        "closed_by_server",  # the server closed the stream itself (with client_gone: a stall)
        "disconnect_callbacks",  # add_disconnect_callback() registrations
        "disconnect_waiter",  # wait_for_disconnect()'s shared future
        # -- output (core.safe_output) --
        "write_watch",  # the progress watch of a pending write (write_timeout)
        # -- cancellation (core.cancellation) --
        "task",  # the request's task while Tornado runs it
        "reason",  # the first CancelReason; set once
        "delivered",  # our task.cancel() is in flight, not yet absorbed
        "shield_depth",  # nesting of shielded() blocks
        "owned",  # timers and child tasks that exist for this request only
        "deadline_at",  # loop time of the deadline, or None
        "ended_early",  # the toolkit ended the request while its task still ran
        # -- families above the core: each stores its own object --
        "request_id",  # production.request_id
        "pending_log",  # errors.rendering: an exception whose logging waits for its outcome
        "error_outcome",  # errors.rendering: what an error handler did, run once
        "servlet",  # routing.servlets: route, body and XSRF state
        "json_body",  # jsonio.responses: the request body as it arrives and decoded
        "json_response",  # jsonio.responses: the response is a write_json document
        "stream",  # streams.mixins: the streamed response's state
    )

    def __init__(self) -> None:
        self.client_gone = False
        self.closed_by_server = False
        self.disconnect_callbacks: Optional[list[tuple[Callable[..., object], tuple[Any, ...]]]] = (
            None
        )
        self.disconnect_waiter: Optional[asyncio.Future[None]] = None
        self.write_watch: Any = None
        self.task: Optional[asyncio.Task[Any]] = None
        self.reason: Any = None  # Optional[CancelReason]; typed where it is read
        self.delivered = False
        self.shield_depth = 0
        self.owned: Optional[set[OwnedWork]] = None
        self.deadline_at: Optional[float] = None
        self.ended_early = False
        self.request_id: Optional[str] = None
        self.pending_log: Optional[BaseException] = None
        self.error_outcome: Any = None
        self.servlet: Any = None
        self.json_body: Any = None
        self.json_response = False
        self.stream: Any = None

    # -- owned work ------------------------------------------------------------

    def own(self, work: OwnedWork) -> None:
        """Record a timer or child task to cancel when the request ends or is cancelled."""
        if self.owned is None:
            self.owned = set()
        self.owned.add(work)

    def disown(self, work: OwnedWork) -> None:
        if self.owned is not None:
            self.owned.discard(work)

    def release_owned(self) -> None:
        """Cancel the timers and child tasks that exist only for this request."""
        owned, self.owned = self.owned, None
        for work in owned or ():
            work.cancel()

    # -- the task --------------------------------------------------------------

    def cancel_task(self) -> bool:
        """Cancel the request's task once (edge-triggered); True if this call did.

        Not while shielded, not twice before the first is absorbed, not a task
        that is done.
        """
        task = self.task
        if task is None or self.shield_depth or self.delivered or task.done():
            return False
        self.delivered = True
        task.cancel()
        return True

    def absorb(self) -> bool:
        """Take back our cancellation; True if no one else also cancelled the task.

        On Python 3.9/3.10, which lack ``Task.uncancel()``, a foreign cancellation
        that coincides with ours counts as ours.
        """
        if not self.delivered:
            return False
        self.delivered = False
        uncancel = getattr(self.task, "uncancel", None)
        return uncancel is None or uncancel() == 0


def scope_of(handler: tornado.web.RequestHandler) -> RequestScope:
    """The handler's scope, created on first use.

    Any toolkit mixin may be used alone, so none can count on another having
    created the scope: whichever asks first creates it. The steps every request
    takes read it as ``self._tornado_jsonservlet_scope or scope_of(self)``: their
    classes declare the attribute, so the read never reaches an application's
    ``__getattr__``, and it costs far less than this call. (An application's
    ``__getattribute__`` sees that read, as it sees Tornado's own ``_finished``.)
    """
    # A generic attribute read, not handler.__dict__: asking an instance for its
    # __dict__ makes CPython 3.11+ build one, after which every attribute access on
    # the handler (the application's too) is a dict look-up instead of a slot of
    # the instance's inline values. object.__getattribute__ never reaches an
    # application's __getattribute__ or __getattr__. The toolkit's mixins declare
    # the attribute as None on the class (SCOPE_DEFAULT), so the read finds it;
    # a plain handler given to a helper (abort_response) raises here once.
    try:
        scope: Optional[RequestScope] = _generic_getattr(handler, SCOPE_ATTRIBUTE)
    except AttributeError:
        scope = None
    if scope is None:
        scope = RequestScope()
        # Past an application's __setattr__, as the scope is none of its business.
        _generic_setattr(handler, SCOPE_ATTRIBUTE, scope)
    return scope


_generic_getattr = object.__getattribute__
_generic_setattr = object.__setattr__
