"""Servlets for streamed responses, to register with a ``ServletRegistry``.

Kept out of :mod:`~tornado_jsonservlet.streaming` so that the streaming mixins do
not depend on the servlet layer: this module sits above both.
"""

from __future__ import annotations

from typing import Any

from tornado_jsonservlet.routing.servlets import JsonServlet
from tornado_jsonservlet.streams.mixins import EventStreamMixin

__all__ = ["EventStreamServlet"]


class EventStreamServlet(EventStreamMixin, JsonServlet):
    """A servlet whose ``on_GET`` streams server-sent events with
    :meth:`~tornado_jsonservlet.EventStreamMixin.send_event`.

    ::

        class TickerServlet(EventStreamServlet):
            PATTERNS = ["/tickers/{symbol}/events"]

            async def on_GET(self, symbol):
                async with broadcaster.subscribe(f"ticker:{symbol}") as prices:
                    async for price in prices:
                        await self.send_event(price)

    Errors raised before the first event are rendered as JSON like any servlet's
    (a bad ``Last-Event-ID`` is a 400 ``INVALID_HEADER``). ``on_GET`` returns
    ``None`` once it has streamed; before that, it may return ``(status, body)``
    as any servlet does, for instance ``204, None``, which tells an
    ``EventSource`` to stop reconnecting.

    .. versionadded:: 0.1
    """

    async def send_body(self, status: int, body: Any) -> None:
        """Send a return value given before the stream started, like any servlet
        (``204, None`` sends no body).

        :raises TypeError: ``on_GET`` streamed events and then returned a body.
        """
        if self.stream_started:
            raise TypeError(
                f"{self.servlet_name}.on_GET streamed events; it must return None, "
                f"not {type(body).__name__}"
            )
        if body is None and (status == 204 or status == 304):
            self.set_status(status)  # a bodiless status: no "null" body
            await self.finish()
            return
        await super().send_body(status, body)
