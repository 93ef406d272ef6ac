"""The pytest plugin: every fixture documented, none tied to pytest-tornado's server."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tornado_jsonservlet.testing import pytest_plugin

PLUGIN_FIXTURES = ("app_server", "disconnecting_client", "disconnect_harness")
SUITE_FIXTURES = ("fail_on_error_logs", "io_loop", "probe", "port")


def fixture_listing(directory: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def documented(listing: str, name: str) -> bool:
    """``pytest --fixtures`` prints the name, then the docstring indented below it."""
    match = re.search(rf"^{name}\b.*\n((?:    .*\n)+)", listing, re.MULTILINE)
    return bool(match) and "no docstring available" not in match.group(1)


def test_plugin_fixtures_have_docstrings(tmp_path: Path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    listing = fixture_listing(tmp_path)
    for name in PLUGIN_FIXTURES:
        assert documented(listing, name), f"{name} is not documented:\n{listing}"


def test_suite_fixtures_have_docstrings():
    root = Path(__file__).resolve().parents[2]
    listing = fixture_listing(root, "tests/package/test_conventions.py")
    for name in SUITE_FIXTURES:
        assert documented(listing, name), f"{name} is not documented"


def test_plugin_does_not_require_pytest_tornado():
    source = Path(pytest_plugin.__file__).read_text()
    signatures = re.findall(r"^def (\w+)\(([^)]*)\)", source, re.MULTILINE)
    fixtures = {name: params for name, params in signatures if name in PLUGIN_FIXTURES}
    assert set(fixtures) == set(PLUGIN_FIXTURES)
    for name, params in fixtures.items():
        assert "http_server" not in params, name
        assert "http_port" not in params, name


ASYNCIO_ONLY = textwrap.dedent(
    """
    import asyncio

    import pytest
    import tornado.web

    from tornado_jsonservlet import CancelOnDisconnectMixin


    class Slow(CancelOnDisconnectMixin, tornado.web.RequestHandler):
        async def get(self):
            await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)
            self.write("done")


    @pytest.fixture
    def app():
        return tornado.web.Application([(r"/slow", Slow)])


    @pytest.mark.asyncio
    async def test_port_and_harness(app_server, disconnect_harness):
        port = await app_server.port()
        assert port == await app_server.port()
        report = await disconnect_harness("GET", "/slow")
        assert report.covered == 2


    @pytest.mark.asyncio
    async def test_raw_client_reads_the_answer(disconnecting_client):
        conn = await disconnecting_client()
        await conn.send_request("GET", "/slow", headers={"Connection": "close"})
        assert (await conn.read_until_close()).endswith(b"done")
    """
)


@pytest.mark.parametrize("runner", ["pytest-asyncio without pytest-tornado", "both installed"])
def test_fixtures_under_pytest_asyncio(tmp_path: Path, runner: str):
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings =\n    error\n"
        "    ignore:The hookimpl pytest_\\w+ uses old-style:pytest.PytestDeprecationWarning\n"
        "    ignore:pkg_resources is deprecated as an API\n"
    )
    (tmp_path / "test_asyncio_only.py").write_text(ASYNCIO_ONLY)
    disable = ["-p", "no:tornado"] if runner.startswith("pytest-asyncio") else []
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *disable],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
