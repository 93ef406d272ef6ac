"""Errors are logged where Tornado logs them, whatever the application overrides.

Applications override ``write_error`` (to render their own error pages) and
``log_exception`` (to feed their alerting); the error mixins must neither lose a
traceback nor invent a false alarm in either case.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from tornado_jsonservlet import CancelOnDisconnectMixin, JsonErrorMixin, NotFound

pytestmark = pytest.mark.gen_test


class AppWriteErrorHandler(JsonErrorMixin, tornado.web.RequestHandler):
    """An application that renders its own errors, as jupyter_server does."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"app_error": status_code})

    async def get(self, kind: str) -> None:
        if kind == "bug":
            raise RuntimeError("application bug")
        if kind == "notfound":
            raise NotFound("No such thing")
        if kind == "finished-then-raise":
            self.set_status(404)
            self.finish({"done": True})
            raise tornado.web.HTTPError(404)


class AppBase(tornado.web.RequestHandler):
    """An application's base handler with its own ``log_exception`` (lower in the MRO)."""

    seen: list[str] = []

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        AppBase.seen.append(type(value).__name__)
        super().log_exception(typ, value, tb)


class AppLogHandler(CancelOnDisconnectMixin, JsonErrorMixin, AppBase):
    async def get(self, kind: str) -> None:
        if kind == "bug":
            raise RuntimeError("application bug")
        raise NotFound("No such thing")


@pytest.fixture
def app() -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/app-write-error/(\w[\w-]*)", AppWriteErrorHandler),
            (r"/app-log/(\w+)", AppLogHandler),
        ]
    )


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name != "tornado.access"]


def lines_about(caplog: pytest.LogCaptureFixture, path: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name != "tornado.access" and path in r.getMessage()]


@pytest.mark.allow_error_log(r"Uncaught exception GET /app-write-error/bug", r"^500 GET")
async def test_uncaught_exception_is_logged_once_with_write_error_overridden(port, caplog):
    client = AsyncHTTPClient()
    url = f"http://127.0.0.1:{port}/app-write-error/bug"
    response = await client.fetch(url, raise_error=False)
    assert response.code == 500
    assert json.loads(response.body) == {"app_error": 500}
    errors = error_records(caplog)
    assert len(errors) == 1
    assert errors[0].name == "tornado.application"
    assert errors[0].exc_info is not None
    assert "application bug" in str(errors[0].exc_info[1])


async def test_4xx_is_one_line_with_write_error_overridden(port, caplog):
    client = AsyncHTTPClient()
    url = f"http://127.0.0.1:{port}/app-write-error/notfound"
    response = await client.fetch(url, raise_error=False)
    assert response.code == 404
    lines = lines_about(caplog, "/app-write-error/notfound")
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert "NOT_FOUND" in lines[0].getMessage()
    assert not error_records(caplog)


async def test_finished_response_then_raise_is_not_called_aborted(port, caplog):
    client = AsyncHTTPClient()
    url = f"http://127.0.0.1:{port}/app-write-error/finished-then-raise"
    response = await client.fetch(url, raise_error=False)
    assert response.code == 404
    assert json.loads(response.body) == {"done": True}
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "abort" in m]
    assert len(lines_about(caplog, "finished-then-raise")) <= 1
    assert not error_records(caplog)


@pytest.mark.allow_error_log(r"Uncaught exception GET /app-log/bug", r"^500 GET")
async def test_application_log_exception_lower_in_the_mro_still_runs(port, caplog):
    AppBase.seen.clear()
    client = AsyncHTTPClient()
    bug = await client.fetch(f"http://127.0.0.1:{port}/app-log/bug", raise_error=False)
    missing = await client.fetch(f"http://127.0.0.1:{port}/app-log/x", raise_error=False)
    assert (bug.code, missing.code) == (500, 404)
    assert AppBase.seen == ["RuntimeError", "NotFound"]
    errors = error_records(caplog)
    assert len(errors) == 1
    assert errors[0].name == "tornado.application"
