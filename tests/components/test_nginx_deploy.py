"""A real nginx, configured with ``deploy/nginx.conf``, in front of two worker processes.

nginx comes from the OS packages (``apt-get install -y nginx``; ``.ci/apt-packages.txt``
lists it). Without it the tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.proc_support import ROOT, AppProcess, Reply, request
from tests.servers import NginxLauncher, NginxServer, free_port
from tests.support import wait_until_sync


def deploy_site() -> str:
    """deploy/nginx.conf with loopback ports and the access log in nginx's directory."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    for old, new in (
        ("listen 80;", "listen 127.0.0.1:$PORT;"),
        ("server 127.0.0.1:8888;", "server 127.0.0.1:$UPSTREAM_PORT;"),
        ("/var/log/nginx/tornado.access.log", "$ROOT/access.log"),
    ):
        assert site.count(old) == 1, f"deploy/nginx.conf no longer has {old!r}"
        site = site.replace(old, new)
    return site


@pytest.fixture
def stack(
    nginx_launcher: NginxLauncher, tmp_path: Path
) -> Iterator[tuple[NginxServer, AppProcess]]:
    app = AppProcess(
        tmp_path / "app.log",
        free_port(),
        "--processes=2",
        "--grace=1",
        "--abandon-after=3",
        "--xheaders",
    )
    nginx = None
    try:
        app.worker_pids(2)
        nginx = nginx_launcher(
            app.port, site=deploy_site(), master_process=True, graceful_stop=True
        )
        yield nginx, app
    finally:
        if nginx is not None:
            nginx.stop()
        app.stop()


def test_requests_are_spread_across_both_workers(stack):
    nginx, app = stack
    pids = app.worker_pids(2)
    seen: set[int] = set()
    # Which worker accepts a connection is the kernel's choice: on a busy machine the
    # one that is running can take a whole burst. Bursts go on until both have
    # answered, bounded in count and time.
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(16) as pool:
        for _ in range(40):
            replies = list(
                pool.map(lambda _: request(nginx.port, "GET", "/slow?delay=0.1"), range(32))
            )
            assert [reply.status for reply in replies] == [200] * 32
            seen |= {reply.json()["pid"] for reply in replies}  # type: ignore[index]
            if seen == pids or time.monotonic() > deadline:
                break
    assert seen == pids
    app.assert_clean_log()


def test_request_id_and_forwarded_for_pass_through(stack):
    nginx, app = stack
    given = request(
        nginx.port,
        "GET",
        "/headers",
        headers={"X-Request-ID": "client-id-1", "X-Forwarded-For": "203.0.113.7"},
    )
    body = given.json()
    assert body["request_id"] == body["x-request-id"] == "client-id-1"  # type: ignore[index]
    assert given.headers["x-request-id"] == "client-id-1"
    assert body["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"  # type: ignore[index]
    created = request(nginx.port, "GET", "/headers", headers={"X-Request-ID": "bad id\t"})
    request_id = created.json()["request_id"]  # type: ignore[index]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # nginx's own $request_id
    # Both log the request just after its answer went out: wait for the lines.
    wait_until_sync(
        lambda: any(f"rid={request_id} " in line for line in nginx.access_log),
        what=f"nginx logging rid={request_id}",
    )
    app.wait_for(rf"rid={request_id} tornado\.access 200 GET /headers")  # one ID in both logs


def test_a_client_abort_through_nginx_cancels_the_handler(stack):
    nginx, app = stack
    client = socket.create_connection(("127.0.0.1", nginx.port), timeout=5)
    client.sendall(b"GET /slow?delay=20&tag=abort HTTP/1.1\r\nHost: x\r\n\r\n")
    app.wait_for("started abort")
    client.close()
    app.wait_for(r"cancelled abort$")
    app.wait_for(r"cleanup abort$")
    app.wait_for(r"tornado\.access 499 GET /slow\?delay=20&tag=abort ")
    assert "finished abort" not in app.log
    app.assert_clean_log()


def test_sigterm_during_load_loses_no_request_nginx_had_sent(stack):
    """Load through nginx, SIGTERM to the workers' parent, load goes on.

    Every request is classified from the client's reply and nginx's log:
    completed (200), cancelled (503 SHUTTING_DOWN after the grace period),
    refused (502 with nothing sent upstream: the workers had stopped listening),
    or lost: anything else, which includes a 502 for a request nginx had sent.
    """
    nginx, app = stack
    stop = threading.Event()
    replies: dict[str, Reply] = {}
    lock = threading.Lock()
    counter = iter(range(10_000))

    def client(index: int) -> None:
        deadline = time.monotonic() + 8  # bounded in time and count
        while not stop.is_set() and time.monotonic() < deadline:
            with lock:
                n = next(counter)
            # Mostly quick requests; every fifth outlives the 1 s grace period.
            delay = 3 if n % 5 == 0 else 0.05
            rid = f"load-{n}"
            reply = request(
                nginx.port, "GET", f"/slow?delay={delay}&tag={rid}", headers={"X-Request-ID": rid}
            )
            with lock:
                replies[rid] = reply
            if reply.status == 502:
                time.sleep(0.02)  # nobody listens any more: do not spin

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        os.kill(app.proc.pid, signal.SIGTERM)
        time.sleep(1.5)  # load continues through the drain
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert app.proc.wait(timeout=20) == 0

    def nginx_lines_by_rid() -> dict[str, str]:
        return {
            match.group(1): line
            for line in nginx.access_log
            if (match := re.search(r"rid=(load-\d+) ", line))
        }

    # nginx logs each request just after its answer went out.
    wait_until_sync(
        lambda: set(replies) <= set(nginx_lines_by_rid()),
        what="nginx logging every request of the load",
        timeout=10,
        interval=0.05,
    )
    nginx_lines = nginx_lines_by_rid()
    figures = {"sent": len(replies), "completed": 0, "cancelled_503": 0, "refused": 0, "lost": 0}
    lost = []
    for rid, reply in replies.items():
        line = nginx_lines.get(rid, "")
        sent_upstream = [int(n) for n in re.findall(r"\d+", line.split("usent=")[-1].split()[0])]
        if reply.status == 200:
            figures["completed"] += 1
        elif reply.status == 503 and reply.json()["errcode"] == "SHUTTING_DOWN":  # type: ignore[index]
            figures["cancelled_503"] += 1
        elif reply.status == 502 and line and not any(sent_upstream):
            figures["refused"] += 1
        else:
            figures["lost"] += 1
            lost.append((rid, reply, line))
    print("nginx + SIGTERM during load:", figures)
    started = set(re.findall(r"rid=(load-\d+) production_app started", app.log))
    assert started, app.log
    for rid in started:  # every request that reached a worker got the worker's answer
        assert replies[rid].status in (200, 503), (rid, replies[rid], nginx_lines.get(rid))
    assert lost == [], lost
    assert figures["cancelled_503"] >= 1
    assert figures["completed"] >= 20
    app.assert_clean_log()
