"""Make the toolkit's cancellations visible to a tracer, when there is one.

A request the toolkit cancels ends with the status the client got (499 when it
left, 504 for a deadline), which tracers record from ``get_status()``. Why it ended
is worth more than the status: the request's current span gets an event named
``tornado_jsonservlet.cancelled`` with the reason's ``errcode`` and status. It is
added just before the request finishes, inside the request's task, where
OpenTelemetry's Tornado instrumentation keeps the server span current. Without
OpenTelemetry installed this costs one failed import, once.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

__all__ = ["CANCELLED_EVENT", "note_cancellation"]

#: The span event recording a cancellation.
CANCELLED_EVENT = "tornado_jsonservlet.cancelled"


@functools.cache
def _opentelemetry_trace() -> Optional[Any]:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


def note_cancellation(errcode: str, status: int) -> None:
    """Add the cancellation event to the current span, if one is recording."""
    trace = _opentelemetry_trace()
    if trace is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            CANCELLED_EVENT,
            {"tornado_jsonservlet.errcode": errcode, "http.response.status_code": status},
        )
