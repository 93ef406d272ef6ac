"""The seed scenario, end to end: demo_server.py with clients that leave mid-request."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tornado.web

import demo_server
from tests.support import (
    access_statuses,
    demo_log_after_client_leaves,
    messages,
    nothing_happens_within,
    wait_until,
)
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

ROOT = Path(demo_server.__file__).resolve().parent
WORK = "doing application stuff..."
CLEANUP = "doing some application clean up..."


@pytest.fixture
def app() -> tornado.web.Application:
    return demo_server.make_app()


@pytest.mark.parametrize(
    ("query", "how"),
    [
        ("delay=3", "fin"),
        ("delay=3&error=yes", "fin"),
        ("delay=3", "rst"),
        ("delay=3&error=yes", "rst"),
    ],
)
async def test_client_killed_mid_request(
    http_server, http_port, caplog, query, how, demo_work_started
):
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("GET", f"/?{query}")
    await wait_until(lambda: demo_work_started == [f"/?{query}"], what="the handler started")
    conn.close(how)
    await wait_until(lambda: CLEANUP in messages(caplog), what="the clean-up logged")
    await nothing_happens_within(0.05, what="a second clean-up")
    assert messages(caplog).count(CLEANUP) == 1
    assert WORK not in messages(caplog)
    assert access_statuses(caplog) == [499]


@pytest.mark.parametrize(
    ("query", "code", "body"), [("delay=0.05", 200, b"ok!\n"), ("delay=0.05&error=yes", 400, None)]
)
async def test_connected_client_gets_the_work(http_client, base_url, caplog, query, code, body):
    response = await http_client.fetch(f"{base_url}/?{query}", raise_error=False)
    assert response.code == code
    if body is not None:
        assert response.body == body
    assert messages(caplog).count(WORK) == 1
    assert messages(caplog).count(CLEANUP) == 1
    assert access_statuses(caplog) == [code]


@pytest.mark.parametrize("delay", ["abc", "-1", "nan", "1e9", "inf", ""])
async def test_bad_delay_is_a_clear_400(http_client, base_url, caplog, delay):
    response = await http_client.fetch(f"{base_url}/?delay={delay}", raise_error=False)
    assert response.code == 400
    assert b"delay must be a number of seconds" in response.body
    assert WORK not in messages(caplog)
    assert messages(caplog).count(CLEANUP) == 1


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_command_line_demo_reproduces_the_seed_scenario(how):
    """Run it exactly as the README says and kill a client mid-request."""
    log = demo_log_after_client_leaves(
        "/?delay=3", 0.5, how, until=(r" 499 GET /\?delay=3 ", re.escape(CLEANUP))
    )
    assert log.count(CLEANUP) == 1, log
    assert WORK not in log
    assert re.search(r"\[W [^\]]*\] 499 GET /\?delay=3 \(127\.0\.0\.1\)", log), log
    assert "[E " not in log, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize(
    ("path", "accept", "content_type"),
    [
        ("/errors/json", "text/html", "application/json"),
        ("/errors/html", "application/json", "text/html"),
        ("/errors/negotiated", "application/json", "application/json"),
        ("/errors/negotiated", "text/html", "text/html"),
    ],
)
async def test_error_showcase_routes(http_client, base_url, path, accept, content_type):
    response = await http_client.fetch(
        f"{base_url}{path}?kind=echo&msg=%3Cscript%3E",
        headers={"Accept": accept},
        raise_error=False,
    )
    assert response.code == 400
    assert response.headers["Content-Type"].startswith(content_type)
    if content_type == "text/html":
        assert b"<script>" not in response.body
        assert b"You said: &lt;script&gt;" in response.body
    else:  # served as JSON with nosniff: the text is data, not markup
        assert json.loads(response.body) == {
            "errcode": "BAD_REQUEST",
            "error": "You said: <script>",
        }


@pytest.mark.allow_error_log(r"Uncaught exception GET /errors/json", r"^500 GET /errors/json")
async def test_error_showcase_bug_leaks_nothing(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/errors/json?kind=bug", raise_error=False)
    assert response.code == 500
    assert json.loads(response.body) == {"errcode": "UNKNOWN", "error": "Internal server error"}
