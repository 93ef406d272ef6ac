"""A real browser: headless Chromium opens the demo's EventSource page, the server
ends each stream after a few events, and the browser resumes with Last-Event-ID
without a gap or a duplicate. Driven through the DevTools protocol."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from typing import Any

import pytest
import tornado.web
from tornado.websocket import WebSocketClientConnection, websocket_connect

import demo_server
from tests.support import access_lines, messages, wait_until

pytestmark = pytest.mark.gen_test(timeout=90)

EVENTS_WANTED = 12
DROP_AFTER = 3


class DevTools:
    """The smallest DevTools-protocol client: send a command, wait for its answer."""

    def __init__(self, connection: WebSocketClientConnection) -> None:
        self.connection = connection
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.connection.write_message(
            json.dumps({"id": ident, "method": method, "params": params})
        )
        while True:
            raw = await asyncio.wait_for(self.connection.read_message(), 20)
            if raw is None:
                raise ConnectionError("DevTools connection closed")
            reply = json.loads(raw)
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


@pytest.fixture
def app() -> tornado.web.Application:
    return demo_server.make_app()


async def test_browser_resumes_with_last_event_id_without_gap_or_duplicate(chromium, port, caplog):
    connection = await websocket_connect(chromium.page_websocket_url(), max_message_size=2**24)
    devtools = DevTools(connection)
    try:
        await devtools.call("Runtime.enable")
        page = f"http://127.0.0.1:{port}/events?every=0.05&drop_after={DROP_AFTER}&retry=100"
        await devtools.call("Page.navigate", url=page)
        ids: list[str] = []

        async def received_enough() -> bool:
            nonlocal ids
            ids = await devtools.evaluate("window.receivedIds || []") or []
            return len(ids) >= EVENTS_WANTED

        await wait_until(
            received_enough, what=f"{EVENTS_WANTED} events in the page", timeout=45, interval=0.1
        )
        opened = await devtools.evaluate("window.openCount")
        shown = await devtools.evaluate("document.getElementById('last').textContent")
        await devtools.call("Page.navigate", url="about:blank")  # closes the EventSource
    finally:
        connection.close()

    received = [int(i) for i in ids]
    assert received == list(range(1, len(received) + 1)), received  # no gap, no duplicate
    assert opened >= EVENTS_WANTED // DROP_AFTER
    assert re.fullmatch(r"\d+ at \d{4}-\d\d-\d\dT[\d:.]+\+00:00", shown)

    def stream_starts() -> list[str]:
        return [m for m in messages(caplog) if m.startswith("counter: stream starts")]

    def streams() -> list[str]:
        return [line for line in access_lines(caplog) if "/api/v1/events/counter" in line]

    # Every stream is logged once: wait for the last one, which the navigation closed.
    await wait_until(
        lambda: len(streams()) >= len(stream_starts()), what="every stream logged", timeout=10
    )
    # The server ended every stream after 3 events and saw each reconnection
    # carry the last id the browser had received.
    starts = stream_starts()
    assert starts[0] == "counter: stream starts after n=0 (Last-Event-ID None)"
    for index, line in enumerate(starts[1 : EVENTS_WANTED // DROP_AFTER], start=1):
        n = index * DROP_AFTER
        assert line == f"counter: stream starts after n={n} (Last-Event-ID '{n}')"

    statuses = [int(line.split()[0]) for line in streams()]
    assert len(statuses) >= EVENTS_WANTED // DROP_AFTER
    assert set(statuses[:-1]) == {200}  # the server ended them
    assert statuses[-1] in (200, 499)  # 499 if the navigation closed it mid-stream
