"""Suite-wide guard: any unexpected ERROR record fails the test.

That covers Tornado's "Uncaught exception", asyncio's "Task was destroyed but it
is pending!" and "exception was never retrieved" (both are logged at ERROR by the
loop's exception handler). A test that expects an error record says so with
``@pytest.mark.allow_error_log(r"regex")`` and asserts on it through ``caplog``.
"""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import Iterator

import pytest
import tornado.ioloop

from tests.support import Probe
from tornado_jsonservlet.testing.pytest_plugin import fresh_io_loop


class _ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def fail_on_error_logs(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Fail the test on any ERROR record it did not declare with ``allow_error_log``."""
    caplog.set_level(logging.INFO)
    allowed = [
        re.compile(pattern)
        for marker in request.node.iter_markers("allow_error_log")
        for pattern in marker.args
    ]
    collector = _ErrorCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield
    finally:
        # Pending tasks and unretrieved exceptions are reported when collected.
        gc.collect()
        root.removeHandler(collector)
    unexpected = [
        record
        for record in collector.records
        if not any(pattern.search(record.getMessage()) for pattern in allowed)
    ]
    if unexpected:
        lines = "\n".join(f"{r.name} {r.levelname}: {r.getMessage()}" for r in unexpected)
        pytest.fail(f"unexpected ERROR log records:\n{lines}", pytrace=False)


@pytest.fixture
def io_loop() -> Iterator[tornado.ioloop.IOLoop]:
    """The loop a ``gen_test`` test runs on, replacing pytest-tornado's fixture.

    pytest-tornado's own ``io_loop`` uses calls that Tornado deprecates and that
    fail on Python 3.12+ ("There is no current event loop"); ``fresh_io_loop``
    does the same job with supported calls, so nothing needs filtering and any
    new warning still fails the run.
    """
    with fresh_io_loop() as loop:
        yield loop


@pytest.fixture
def probe() -> Probe:
    """A fresh probe for the handlers of one test's app."""
    return Probe()


@pytest.fixture
def port(http_server: object, http_port: int) -> int:
    """The port of pytest-tornado's running test server."""
    return http_port
