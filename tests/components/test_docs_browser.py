"""A real browser loads the demo's API docs page offline and shows the operations.

Headless Chromium opens ``/api/v1/docs``; Swagger UI (served by the application
from the ``swagger-ui-py`` package) fetches ``openapi.json`` and renders one block
per operation. Every resource the page loaded came from the test server: no CDN.
The screenshot is kept in the test's directory (``docs.png``).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import tornado.web
from tornado.websocket import websocket_connect

import demo_server
from tests.components.test_browser import DevTools
from tests.support import wait_until

pytestmark = pytest.mark.gen_test(timeout=90)


@pytest.fixture
def app() -> tornado.web.Application:
    return demo_server.make_app()


async def test_docs_page_renders_the_operations_offline(chromium, port, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    connection = await websocket_connect(chromium.page_websocket_url(), max_message_size=2**26)
    devtools = DevTools(connection)
    try:
        await devtools.call("Runtime.enable")
        await devtools.call("Page.navigate", url=f"http://127.0.0.1:{port}/api/v1/docs")
        count = 0

        async def operations_shown() -> bool:
            nonlocal count
            count = await devtools.evaluate("document.querySelectorAll('.opblock').length") or 0
            return count >= 12

        await wait_until(operations_shown, what="Swagger UI's operation blocks", timeout=45)
        paths = await devtools.evaluate(
            "[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)"
        )
        loaded = await devtools.evaluate(
            "performance.getEntriesByType('resource').map(e => e.name)"
        )
        shot = await devtools.call("Page.captureScreenshot", format="png")
        (tmp_path / "docs.png").write_bytes(base64.b64decode(shot["data"]))
        await devtools.call("Page.navigate", url="about:blank")
    finally:
        connection.close()
    assert any("/api/v1/users/{user_id}" in path.replace("\u200b", "") for path in paths), paths
    origin = f"http://127.0.0.1:{port}/"
    assert loaded, "the page loaded nothing"
    assert all(url.startswith(origin) for url in loaded), loaded
    assert (tmp_path / "docs.png").stat().st_size > 10_000
