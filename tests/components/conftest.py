"""One fixture per real component: nginx, PostgreSQL, Redis, Chromium.

Each starts its component on loopback from a temporary directory and stops it
afterwards. A missing component skips the test with the reason locally and fails
it under ``CI=true`` (``tests.servers.component_missing``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_server import postgres_server
from tests.servers import Chromium, NginxLauncher, NginxServer, RedisServer, component_missing


@pytest.fixture
def nginx_launcher(tmp_path: Path) -> Iterator[NginxLauncher]:
    """``nginx_launcher(upstream_port, **options)``: a started :class:`NginxServer`.

    The options are those of ``NginxServer`` (``location``, ``server``, ``site``,
    ``port``, ``master_process``, ``graceful_stop``). Every nginx it started is
    stopped after the test.
    """
    started: list[NginxServer] = []

    def launch(upstream_port: int, **options: Any) -> NginxServer:
        server = NginxServer(tmp_path / f"nginx-{len(started)}", upstream_port, **options)
        started.append(server)
        return server.start()

    yield launch
    for server in reversed(started):
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` without persistence; ``.url``, ``.port``, ``.kill()``,
    ``.start()`` again, ``.freeze()`` (SIGSTOP) and ``.thaw()``."""
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    """The DSN of a throwaway PostgreSQL server (one per module), used with asyncpg."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        component_missing("asyncpg is not installed (pip install 'tornado-jsonservlet[test]')")
    with postgres_server() as url:
        yield url


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    """Headless Chromium with its DevTools endpoint on loopback."""
    with Chromium(tmp_path) as browser:
        yield browser
