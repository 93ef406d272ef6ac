"""Several worker processes, real signals: ``serve(processes=N)`` and graceful shutdown.

Each test runs ``tests/production_app.py`` as a real process tree (a parent and its
forked workers) and sends real signals with ``os.kill``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tornado.web

from tests.proc_support import AppProcess, Reply, request
from tests.servers import free_port
from tests.support import nothing_happens_within_sync, wait_until_sync
from tornado_jsonservlet import serve

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


@pytest.fixture
def start(tmp_path: Path):
    started: list[AppProcess] = []

    def run(*args: str, env: dict[str, str] | None = None) -> AppProcess:
        app = AppProcess(tmp_path / f"app{len(started)}.log", free_port(), *args, env=env)
        started.append(app)
        return app

    yield run
    for app in started:
        app.stop()


def test_requests_are_served_by_every_worker(start):
    app = start("--processes=2")
    pids = app.worker_pids(2)
    assert len(pids) == 2
    seen: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        # Concurrent, slow-ish requests on separate connections: both workers accept some.
        for _ in range(3):
            replies = list(
                pool.map(lambda _: request(app.port, "GET", "/slow?delay=0.1"), range(16))
            )
            assert all(reply.status == 200 for reply in replies), replies
            seen |= {reply.json()["pid"] for reply in replies}  # type: ignore[index]
            if seen == pids:
                break
    assert seen == pids
    assert app.stop() == 0
    app.assert_clean_log()


def test_reuse_port_workers_bind_their_own_sockets(start):
    app = start("--processes=2", "--reuse-port")
    pids = app.worker_pids(2)
    seen: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            replies = list(pool.map(lambda i: request(app.port, "GET", "/plain"), range(16)))
            assert all(reply.status == 200 for reply in replies), replies
            seen |= {reply.json()["pid"] for reply in replies}  # type: ignore[index]
            if seen == pids:
                break
    assert seen == pids
    assert app.stop() == 0
    app.assert_clean_log()


def _load_then_signal(app: AppProcess, kill) -> dict[str, list[Reply]]:
    """In-flight requests of every kind, then the signal(s), then late requests."""
    kinds = {
        # tag prefix: (method, path, expected status)
        "quick": ("GET", "/slow?delay=0.4", 200),  # finishes within the grace period
        "long": ("GET", "/slow?delay=30", 503),  # cancelled when the grace period ends
        "post": ("POST", "/work?delay=1.6", 201),  # not cancellable: runs on, completes
        "plain": ("GET", "/plain?delay=0.4", 200),  # not a toolkit handler: waited for
    }
    counts = {"quick": 8, "long": 6, "post": 4, "plain": 2}
    jobs = [
        (kind, f"{path}&tag={kind}{i}", method)
        for kind, (method, path, _) in kinds.items()
        for i in range(counts[kind])
    ]
    with ThreadPoolExecutor(len(jobs) + 4) as pool:
        futures = {
            kind + str(i): pool.submit(request, app.port, method, path)
            for i, (kind, path, method) in enumerate(jobs)
        }
        app.wait_for(r"production_app started (quick|long|post)", 18)
        app.wait_for(r"production_app plain handler started", 2)
        kill()
        app.wait_for(r"Shutting down: stopped accepting", 2)  # both workers
        late = [pool.submit(request, app.port, "GET", "/slow?tag=late") for _ in range(4)]
        results: dict[str, list[Reply]] = {kind: [] for kind in kinds}
        for key, future in futures.items():
            results[re.sub(r"\d+$", "", key)].append(future.result(timeout=30))
        results["late"] = [future.result(timeout=30) for future in late]
    for kind, (_, _, status) in kinds.items():
        assert [reply.status for reply in results[kind]] == [status] * counts[kind], (
            kind,
            results[kind],
            app.log,
        )
    return results


def _figures(results: dict[str, list[Reply]]) -> dict[str, int]:
    answered = [r for kind, replies in results.items() if kind != "late" for r in replies]
    return {
        "sent": len(answered),
        "completed": sum(1 for r in answered if r.status in (200, 201)),
        "cancelled_503": sum(
            1
            for r in answered
            if r.status == 503 and json.loads(r.body)["errcode"] == "SHUTTING_DOWN"
        ),
        "lost": sum(1 for r in answered if r.status not in (200, 201, 503)),
        "refused_after_signal": sum(1 for r in results["late"] if r.status == 0),
    }


def test_sigterm_to_the_parent_drains_every_worker(start):
    app = start("--processes=2", "--grace=1", "--abandon-after=4")
    pids = app.worker_pids(2)
    results = _load_then_signal(app, lambda: os.kill(app.proc.pid, signal.SIGTERM))
    figures = _figures(results)
    print("graceful shutdown (SIGTERM to the parent):", figures)
    assert figures == {
        "sent": 20,
        "completed": 14,
        "cancelled_503": 6,
        "lost": 0,
        "refused_after_signal": 4,  # the listening socket is gone: refused, never parked
    }
    for reply in results["long"]:
        body = reply.json()
        assert body["request_id"] == reply.headers["x-request-id"]  # type: ignore[index]
        assert reply.headers["connection"] == "close"
    assert app.proc.wait(timeout=20) == 0
    log = app.log
    for i in range(6):
        assert f"cancelled long{i}\n" in log
        assert f"cleanup long{i}\n" in log
    for i in range(4):
        assert f"finished post{i}\n" in log
        assert f"cleanup post{i}\n" in log
    assert len(re.findall(r"WARNING .* tornado\.access 503 GET /slow\?delay=30", log)) == 6
    assert len(re.findall(r"Shutdown complete in", log)) == 2
    assert "All workers stopped" in log
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
    app.assert_clean_log()


def test_sigterm_to_every_process_at_once_is_the_same(start):
    # systemd's default: the whole group gets SIGTERM. Each worker also gets the
    # parent's forwarded copy, which must not cut the grace period short.
    app = start("--processes=2", "--grace=1", "--abandon-after=4")
    pids = app.worker_pids(2)

    def kill_all() -> None:
        for pid in (app.proc.pid, *pids):
            os.kill(pid, signal.SIGTERM)

    results = _load_then_signal(app, kill_all)
    figures = _figures(results)
    print("graceful shutdown (SIGTERM to every process):", figures)
    assert figures["lost"] == 0
    assert (figures["completed"], figures["cancelled_503"]) == (14, 6)
    assert app.proc.wait(timeout=20) == 0
    app.assert_clean_log()


def test_sigint_stops_a_single_process_server(start):
    app = start("--grace=2")
    app.wait_for(r"process \(pid \d+\) serving")
    with ThreadPoolExecutor(2) as pool:
        reply = pool.submit(request, app.port, "GET", "/slow?delay=0.5&tag=one")
        app.wait_for("started one")
        os.kill(app.proc.pid, signal.SIGINT)  # Ctrl-C
        assert reply.result(timeout=10).status == 200
    assert app.proc.wait(timeout=10) == 0
    assert "KeyboardInterrupt" not in app.log
    app.assert_clean_log()


def test_abandoned_requests_end_with_the_process_and_no_error(start):
    app = start("--grace=0.2", "--abandon-after=0.3")
    app.wait_for(r"process \(pid \d+\) serving")
    with ThreadPoolExecutor(2) as pool:
        post = pool.submit(request, app.port, "POST", "/work?delay=20&tag=post")
        plain = pool.submit(request, app.port, "GET", "/plain?delay=20")
        app.wait_for("started post")
        app.wait_for("plain handler started")
        os.kill(app.proc.pid, signal.SIGTERM)
        assert app.proc.wait(timeout=10) == 0
        assert post.result(timeout=10).status == 0  # cut: no answer
        assert plain.result(timeout=10).status == 0
    log = app.log
    assert "Shutdown: abandoning POST /work?delay=20&tag=post (Work, running" in log
    assert "Shutdown: abandoning GET /plain?delay=20 (not a toolkit handler)" in log
    assert "2 abandoned" in log
    assert "finished post" not in log
    app.assert_clean_log()


# -- every way a stop signal can arrive ---------------------------------------------


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


def _signal_idle(app: AppProcess, pids: set[int], how: str) -> None:
    group = (app.proc.pid, *pids)
    if how == "group":  # systemd's default KillMode=control-group
        for pid in group:
            os.kill(pid, signal.SIGTERM)
    elif how == "parent":  # docker stop, Kubernetes
        os.kill(app.proc.pid, signal.SIGTERM)
    elif how == "parent-twice":
        os.kill(app.proc.pid, signal.SIGTERM)
        os.kill(app.proc.pid, signal.SIGTERM)
    elif how == "group-twice":
        for _ in range(2):
            for pid in group:
                os.kill(pid, signal.SIGTERM)
    elif how == "group-then-again":  # a second stop once the workers drained
        for pid in group:
            os.kill(pid, signal.SIGTERM)
        app.wait_for(r"Shutdown complete in", 2)
        for pid in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.mark.parametrize(
    "how", ["group", "parent", "parent-twice", "group-twice", "group-then-again"]
)
def test_idle_workers_exit_0_however_the_stop_signal_arrives(start, how):
    statuses = []
    for attempt in range(3):  # the races are between processes: give them a few chances
        app = start("--processes=2", "--grace=1", "--abandon-after=1")
        pids = app.worker_pids(2)
        assert request(app.port, "GET", "/plain").status == 200
        _signal_idle(app, pids, how)
        statuses.append(app.proc.wait(timeout=20))
        assert not [pid for pid in pids if _alive(pid)], f"orphaned workers ({how}, {attempt})"
        app.assert_clean_log()
    print(f"exit status under SIGTERM ({how}), 3 runs:", statuses)
    assert statuses == [0, 0, 0], statuses


@pytest.mark.parametrize("how", ["once", "twice"])
def test_a_single_process_server_exits_0_on_sigterm(start, how):
    app = start("--grace=1")
    app.wait_for(r"process \(pid \d+\) serving")
    os.kill(app.proc.pid, signal.SIGTERM)
    if how == "twice":
        app.wait_for(r"Shutdown complete in")
        with contextlib.suppress(ProcessLookupError):
            os.kill(app.proc.pid, signal.SIGTERM)
    assert app.proc.wait(timeout=20) == 0
    app.assert_clean_log()


# -- supervision ----------------------------------------------------------------------


def test_a_crash_looping_worker_backs_off_and_giving_up_leaves_no_orphans(start, tmp_path):
    crash_file = tmp_path / "crash"
    app = start(
        "--processes=2",
        "--grace=1",
        "--abandon-after=1",
        "--max-restarts=4",
        env={"PRODUCTION_APP_CRASH_FILE": str(crash_file)},
    )
    pids = app.worker_pids(2)
    crash_file.touch()  # from now on, every new worker dies while starting
    began = time.monotonic()
    assert request(app.port, "GET", "/crash").status == 0  # one worker dies
    status = app.proc.wait(timeout=30)
    took = time.monotonic() - began
    log = app.log
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+)s", log)]
    print(f"crash loop: restarts after {delays}, gave up after {took:.2f}s, exit {status}")
    # The crash, then three restarts that crashed too, each later than the last;
    # the fourth restart's crash exceeds max_restarts.
    assert delays == [0.1, 0.2, 0.4, 0.8]
    assert took >= sum(delays)
    assert "not restarted" in log
    assert "max_restarts=4" in log
    assert status == 1
    assert not [pid for pid in pids if _alive(pid)], "a healthy worker was left running"
    assert "All workers stopped" in log


def test_a_worker_that_cannot_start_is_reported_once(start):
    app = start("--processes=2", env={"PRODUCTION_APP_FAIL_START": "1"})
    assert app.proc.wait(timeout=30) == 1
    log = app.log
    print(log)
    # Each worker says why, once, with its traceback; the parent says what it does.
    assert 1 <= log.count("cannot start:") <= 2
    assert log.count("RuntimeError: database unreachable") == log.count("cannot start:")
    assert log.count("not retrying") == 1
    assert "restarting in" not in log
    assert not re.findall(r"worker \d+ \(pid \d+\) serving", log)


def test_an_async_factory_and_lifecycle_hooks_run_in_each_worker(start):
    app = start("--processes=2", "--grace=1", "--hooks")
    pids = app.worker_pids(2)
    assert request(app.port, "GET", "/plain").status == 200
    os.kill(app.proc.pid, signal.SIGTERM)
    assert app.proc.wait(timeout=20) == 0
    log = app.log
    for what in ("factory ran", "startup hook", "shutdown hook", "async shutdown hook"):
        ran_in = {int(pid) for pid in re.findall(rf"{what} in pid (\d+)", log)}
        assert ran_in == pids, (what, log)
    for pid in pids:
        # Startup before serving; shutdown hooks after the drain, in reverse order.
        lines = [line for line in log.splitlines() if f"pid={pid} " in line]
        order = [
            next(i for i, line in enumerate(lines) if marker in line)
            for marker in (
                "startup hook",
                "serving on",
                "Shutdown complete",
                "production_app async shutdown hook",
                "production_app shutdown hook",
            )
        ]
        assert order[:3] == sorted(order[:3]), lines
        assert order[3] < order[4], lines
    app.assert_clean_log()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_stop_when_the_parent_is_killed(start):
    # SIGKILL gives the parent no chance to stop them; the kernel tells them instead.
    app = start("--processes=2", "--grace=1", "--abandon-after=1")
    pids = app.worker_pids(2)
    os.kill(app.proc.pid, signal.SIGKILL)
    app.proc.wait(timeout=10)
    wait_until_sync(
        lambda: not [pid for pid in pids if _alive(pid)], what="the orphaned workers exiting"
    )
    assert len(re.findall(r"Shutdown complete in", app.log)) == 2


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"on_startup": "not callable"}, TypeError),
        ({"on_shutdown": [print, 3]}, TypeError),
        ({"max_restarts": -1}, ValueError),
        ({"max_restarts": True}, ValueError),
        ({"processes": 2.0}, ValueError),
    ],
)
def test_serve_refuses_bad_arguments_before_binding(options, error):
    port = free_port()
    with pytest.raises(error):
        serve(lambda: tornado.web.Application(), port, **options)
    with socket.create_server(("127.0.0.1", port)):  # nothing was left bound
        pass


def test_a_worker_that_cannot_start_after_a_crash_is_retried_and_reported_once(start, tmp_path):
    fail_file = tmp_path / "database-down"
    app = start(
        "--processes=2",
        "--grace=1",
        "--abandon-after=1",
        env={"PRODUCTION_APP_FAIL_START_FILE": str(fail_file)},
    )
    app.worker_pids(2)
    fail_file.touch()  # the database goes away: new workers cannot start
    assert request(app.port, "GET", "/crash").status == 0
    app.wait_for(r"could not start: exit status 3 after [\d.]+s; restarting in", timeout=10)
    nothing_happens_within_sync(1.5, what="a second report of the same start failure")
    fail_file.unlink()  # the database is back
    app.wait_for(r"Worker \d started again \(pid \d+\)", timeout=10)
    assert request(app.port, "GET", "/plain").status == 200
    log = app.log
    assert log.count("cannot start:") == 1, log  # the worker's ERROR, with its traceback
    assert log.count("could not start:") == 1, log  # the parent's WARNING
    assert app.stop() == 0


def test_lifecycle_hooks_run_in_a_single_process_server(start):
    app = start("--grace=1", "--hooks")
    app.wait_for(r"process \(pid \d+\) serving")
    assert request(app.port, "GET", "/plain").status == 200
    os.kill(app.proc.pid, signal.SIGTERM)
    assert app.proc.wait(timeout=20) == 0
    log = app.log
    pid = app.proc.pid
    for what in ("factory ran", "startup hook", "shutdown hook", "async shutdown hook"):
        assert f"{what} in pid {pid}" in log, log
    assert log.index("startup hook") < log.index("serving on") < log.index("Shutdown complete")
    assert log.index("Shutdown complete") < log.index("async shutdown hook")
    app.assert_clean_log()
