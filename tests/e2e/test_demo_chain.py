"""demo_server.py's /chain: a client leaving cancels both hops; the inner work never runs."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient

import demo_server
from tests.support import (
    access_lines,
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
def cancellable_client() -> Iterator[None]:
    """AsyncHTTPClient configured the way demo_server.main() does, for this test only."""
    saved = AsyncHTTPClient._save_configuration()  # type: ignore[attr-defined]
    AsyncHTTPClient.configure("tornado_jsonservlet.outbound.CancellableHTTPClient")
    yield
    AsyncHTTPClient._restore_configuration(saved)  # type: ignore[attr-defined]


@pytest.fixture
def app(http_port: int, cancellable_client: None) -> tornado.web.Application:
    return demo_server.make_app(chain_upstream=f"http://127.0.0.1:{http_port}")


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_client_leaving_chain_cancels_both_hops(
    http_server, http_port, caplog, how, demo_work_started
):
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("GET", "/chain?delay=3")
    await wait_until(
        lambda: any(line.startswith("chain: fetching") for line in messages(caplog)),
        what="the chain fetching its inner request",
    )
    await wait_until(lambda: demo_work_started == ["/?delay=3"], what="the inner request served")
    conn.close(how)
    await wait_until(lambda: len(access_lines(caplog)) == 2, what="both hops logged")
    await nothing_happens_within(0.1, what="a third access line or the inner work running")
    lines = access_lines(caplog)
    assert sorted(line.split(" (")[0] for line in lines) == [
        "499 GET /?delay=3",
        "499 GET /chain?delay=3",
    ]
    assert WORK not in messages(caplog)
    assert messages(caplog).count(CLEANUP) == 1  # the inner handler's on_finish


async def test_connected_client_gets_the_inner_answer(http_client, http_server, http_port, caplog):
    response = await http_client.fetch(f"http://127.0.0.1:{http_port}/chain?delay=0.05")
    assert response.body == b"chain: ok!\n"
    assert messages(caplog).count(WORK) == 1
    assert sorted(line.split(" (")[0] for line in access_lines(caplog)) == [
        "200 GET /?delay=0.05",
        "200 GET /chain?delay=0.05",
    ]


HOSTILE_DELAYS = [
    *("abc", "-1", "nan", "1e999", "99999999999999999999999"),  # junk, overflow
    *("%0d%0aX-Injected:%201", "%C3%A9", "9" * 60_000),  # CR/LF, non-ASCII, 60 KB
]


@pytest.mark.parametrize("delay", HOSTILE_DELAYS)
async def test_bad_delay_is_a_json_400(http_client, http_server, http_port, caplog, delay):
    response = await http_client.fetch(
        f"http://127.0.0.1:{http_port}/chain?delay={delay}", raise_error=False
    )
    assert response.code == 400
    body = json.loads(response.body)
    assert body["errcode"] == "INVALID_PARAM"
    assert body["param"] == "delay"
    assert "X-Injected" not in response.headers
    assert not [m for m in messages(caplog) if m.startswith("chain: fetching")]


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_command_line_demo_chain(how):
    """``demo_server.py`` as the README runs it, a client leaving ``/chain``."""
    log = demo_log_after_client_leaves(
        "/chain?delay=3",
        0.7,
        how,
        until=(r" 499 GET /chain\?delay=3 ", r" 499 GET /\?delay=3 ", re.escape(CLEANUP)),
    )
    assert re.search(r"\[W [^\]]*\] 499 GET /chain\?delay=3 \(127\.0\.0\.1\)", log), log
    assert re.search(r"\[W [^\]]*\] 499 GET /\?delay=3 \(127\.0\.0\.1\)", log), log
    assert log.count(CLEANUP) == 1, log
    assert WORK not in log
    assert "[E " not in log, log
    assert "Traceback" not in log, log


async def test_chain_deadline_answers_504_and_stops_the_inner_hop(http_server, http_port, caplog):
    client = AsyncHTTPClient()
    started = time.monotonic()
    response = await client.fetch(
        f"http://127.0.0.1:{http_port}/chain/deadline?delay=3", raise_error=False
    )
    assert response.code == 504
    assert json.loads(response.body)["errcode"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 2.5
    await wait_until(lambda: len(access_lines(caplog)) == 2, what="both hops logged")
    await nothing_happens_within(0.1, what="a third access line or the inner work running")
    statuses = sorted(int(line.split()[0]) for line in access_lines(caplog))
    assert statuses[-1] == 504, statuses
    assert statuses[0] in (499, 504), statuses
    assert WORK not in messages(caplog)
    assert not [r for r in caplog.records if r.levelno >= 40]
