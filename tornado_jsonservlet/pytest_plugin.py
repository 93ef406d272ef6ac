"""pytest fixtures for testing handlers against real disconnects (loaded automatically).

They work beside pytest-tornado's fixtures: your ``app`` fixture provides the
application, pytest-tornado serves it, and these fixtures talk to that server.

* ``disconnecting_client``: ``conn = await disconnecting_client()`` opens a
  :class:`~tornado_jsonservlet.testing.RawHTTPConnection` to the test server.
* ``disconnect_harness``: ``report = await disconnect_harness("GET", "/path")`` runs
  :func:`~tornado_jsonservlet.testing.disconnect_at_every_await` against it.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

import pytest

from .testing import DisconnectReport, RawHTTPConnection, disconnect_at_every_await


@pytest.fixture
def disconnecting_client(
    http_server: Any, http_port: int
) -> Callable[[], Coroutine[Any, Any, RawHTTPConnection]]:
    async def connect() -> RawHTTPConnection:
        return await RawHTTPConnection.open(http_port)

    return connect


@pytest.fixture
def disconnect_harness(
    http_server: Any, http_port: int
) -> Callable[..., Coroutine[Any, Any, DisconnectReport]]:
    async def run(method: str = "GET", path: str = "/", **options: Any) -> DisconnectReport:
        return await disconnect_at_every_await(http_port, method, path, **options)

    return run
