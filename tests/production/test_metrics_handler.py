"""``/metrics`` for Prometheus: one process, and two worker processes adding up."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

import tornado.web  # noqa: E402

from tests.proc_support import AppProcess, request  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.support import wait_until_sync  # noqa: E402
from tornado_jsonservlet import JsonServlet, PrometheusMetrics, ServletRegistry  # noqa: E402
from tornado_jsonservlet.production.metrics_handler import MULTIPROC_DIR_ENV, metrics_urlspec  # noqa: E402


class Hello(JsonServlet):
    PATTERNS = ("/hello",)

    def on_GET(self) -> dict[str, str]:
        return {"hello": "world"}


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    found = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            found += float(match.group(2))
    return found


class TestOneProcess:
    pytestmark = pytest.mark.gen_test

    @pytest.fixture
    def app(self, monkeypatch) -> tornado.web.Application:
        monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
        self.registry = prometheus_client.CollectorRegistry()
        servlets = ServletRegistry(metrics=PrometheusMetrics(registry=self.registry))
        servlets.register(Hello)
        return tornado.web.Application(
            [metrics_urlspec(registry=self.registry), *servlets.urlspecs("/api")]
        )

    async def test_counts_are_served_in_the_text_format(self, http_client, base_url):
        for _ in range(7):
            await http_client.fetch(f"{base_url}/api/hello")
        response = await http_client.fetch(f"{base_url}/metrics")
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert response.headers["Cache-Control"] == "no-store"
        text = response.body.decode()
        labels = {"servlet": "Hello", "method": "GET", "status": "200"}
        assert total(text, "servlet_requests_total", **labels) == 7
        assert total(text, "servlet_request_duration_seconds_count", servlet="Hello") == 7

    async def test_openmetrics_when_asked_for(self, http_client, base_url):
        await http_client.fetch(f"{base_url}/api/hello")
        response = await http_client.fetch(
            f"{base_url}/metrics", headers={"Accept": "application/openmetrics-text"}
        )
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.body.rstrip().endswith(b"# EOF")

    @pytest.mark.parametrize(
        "accept",
        [
            "application/openmetrics-text; version=abc",  # prometheus-client: TypeError
            "application/openmetrics-text; version=1.0.0; escaping=bogus",
            "application/openmetrics-text; version=",
            "application/openmetrics-text; version=99999999999999999999",
            "text/plain; version=x; escaping=",
            "*/*;q=nope",
            "application/openmetrics-text; " + "version=1;" * 6000,  # 60 KB
            "t\u00e9xt/pl\u00e4in; v\u00e9rsion=\u00e9",
        ],
    )
    async def test_any_accept_header_gets_an_answer(self, http_client, base_url, accept):
        # Never a 500: an Accept that prometheus-client cannot handle gets the text format.
        response = await http_client.fetch(
            f"{base_url}/metrics", headers={"Accept": accept}, raise_error=False
        )
        assert response.code == 200, response.body
        assert response.headers["Content-Type"].startswith(
            ("text/plain", "application/openmetrics-text")
        )


def test_a_multiprocess_dir_that_is_not_a_directory_fails_at_startup(monkeypatch, tmp_path):
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is not a directory"):
        metrics_urlspec()


def test_two_workers_add_up(tmp_path: Path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    app = AppProcess(
        tmp_path / "app.log",
        free_port(),
        "--processes=2",
        env={MULTIPROC_DIR_ENV: str(metrics_dir), "PRODUCTION_APP_METRICS": "1"},
    )
    try:
        pids = app.worker_pids(2)
        sent = 40
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: request(app.port, "GET", "/api/hello"), range(sent)))
        assert [reply.status for reply in replies] == [200] * sent
        served_by = {reply.json()["pid"] for reply in replies}  # type: ignore[index]
        for _ in range(10):
            if served_by == pids:
                break  # both workers counted some: the sum below spans processes
            more = [request(app.port, "GET", "/api/hello") for _ in range(4)]
            sent += len(more)
            served_by |= {reply.json()["pid"] for reply in more}  # type: ignore[index]
        assert served_by == pids
        # A worker counts a request right after its last byte went out, so a scrape
        # sent the moment the client has its answer may be a few microseconds early.
        wait_until_sync(
            lambda: (
                total(request(app.port, "GET", "/metrics").body.decode(), "servlet_requests_total")
                >= sent
            ),
            what="the workers' counts adding up to the requests sent",
            interval=0.05,
        )
        scrapes = [request(app.port, "GET", "/metrics") for _ in range(6)]
        for scrape in scrapes:  # whichever worker answers, it reports the sum
            text = scrape.body.decode()
            assert total(text, "servlet_requests_total", servlet="HelloServlet") == sent
            assert total(text, "servlet_request_duration_seconds_count") == sent
            assert "pid=" not in text  # no per-process series: cardinality does not grow
        assert len(list(metrics_dir.glob("*.db"))) >= 2  # one file set per worker
        assert app.stop() == 0
    finally:
        app.stop()
    app.assert_clean_log()
