"""write_json against a real server; test_bodies uses the same handlers for json_body."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import tornado.web

from tests.support import (
    Probe,
    access_statuses,
    nothing_happens_within,
    settle,
    wait_until,
)
from tornado_jsonservlet import (
    CancelOnDisconnectMixin,
    JsonBodyMixin,
    JsonErrorMixin,
    JsonResponseMixin,
    require,
)
from tornado_jsonservlet.jsonio import lane as lowpriority
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

BIG = {"meta": {"count": 20_000}, "items": [{"id": i, "tags": ["a/b", "é"]} for i in range(20_000)]}


class Api(
    CancelOnDisconnectMixin,
    JsonErrorMixin,
    JsonResponseMixin,
    JsonBodyMixin,
    tornado.web.RequestHandler,
):
    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    def on_finish(self) -> None:
        self.probe.hit("on_finish")
        self.probe.finished.set()


class Small(Api):
    async def get(self) -> None:
        await self.write_json({"hello": "world", "n": [1, 2, 3]}, status=201)

    head = get


class Big(Api):
    async def get(self) -> None:
        kind = self.get_argument("kind", "dict")
        document: Any = BIG if kind == "dict" else BIG["items"]
        await self.write_json(document, canonical=self.get_argument("canonical", "") == "1")

    head = get


class Unencodable(Api):
    async def get(self) -> None:
        items: list[Any] = [{"id": i} for i in range(20_000)]
        if self.get_argument("where", "big") == "big":
            items.append({"bad": {1, 2}})
            await self.write_json({"items": items})
        else:
            await self.write_json({"bad": object()})


class Slow(Api):
    async def get(self) -> None:
        self.probe.suspended.set()
        await self.write_json([{"blob": "x" * 1000, "i": i} for i in range(40_000)])
        self.probe.hit("sent")


class Echo(Api):
    async def post(self) -> None:
        body = self.json_body
        name = require(body, "name", str)
        count = require(body, "count", int) if "count" in body else 0
        await self.write_json({"name": name, "count": count})


@tornado.web.stream_request_body
class StreamedEcho(Echo):
    json_body_limit = 1000


class AnyJson(Api):
    json_require_content_type = False

    async def post(self) -> None:
        await self.write_json({"got": self.get_json_body(object_required=False, required=False)})


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    routes = {
        "/small": Small,
        "/big": Big,
        "/unencodable": Unencodable,
        "/slow": Slow,
        "/echo": Echo,
        "/streamed": StreamedEcho,
        "/any": AnyJson,
    }
    return tornado.web.Application([(p, h, {"probe": probe}) for p, h in routes.items()])


async def fetch(http_client: Any, url: str, **kwargs: Any) -> Any:
    return await http_client.fetch(url, raise_error=False, **kwargs)


# -- responses ----------------------------------------------------------------------


async def test_small_json_response(http_client, base_url):
    response = await fetch(http_client, base_url + "/small")
    assert response.code == 201
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert response.headers["Content-Length"] == str(len(response.body))
    assert "Etag" not in response.headers
    assert json.loads(response.body) == {"hello": "world", "n": [1, 2, 3]}


@pytest.mark.parametrize("kind", ["dict", "list"])
@pytest.mark.parametrize("canonical", ["0", "1"])
async def test_big_response_is_valid_json_with_content_length(
    http_client, base_url, kind, canonical
):
    response = await fetch(http_client, f"{base_url}/big?kind={kind}&canonical={canonical}")
    assert response.code == 200
    expected = BIG if kind == "dict" else BIG["items"]
    assert json.loads(response.body) == expected
    assert response.headers["Content-Length"] == str(len(response.body))
    assert "Etag" not in response.headers
    if canonical == "1":
        assert (
            response.body
            == json.dumps(
                expected, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
        )


async def test_head_has_get_headers_and_no_body(http_client, base_url):
    for path in ("/big", "/small"):
        get = await fetch(http_client, base_url + path)
        head = await fetch(http_client, base_url + path, method="HEAD")
        assert head.body == b""
        assert head.code == get.code
        assert head.headers["Content-Type"] == get.headers["Content-Type"]
        # HEAD does not encode the document, so its length is left out, not guessed.
        assert "Content-Length" in get.headers
        assert "Content-Length" not in head.headers


@pytest.mark.parametrize("where", ["big", "small"])
@pytest.mark.allow_error_log(r"Uncaught exception GET /unencodable", r"^500 GET /unencodable")
async def test_unencodable_value_is_a_clean_500(http_client, base_url, caplog, where):
    response = await fetch(http_client, f"{base_url}/unencodable?where={where}")
    assert response.code == 500
    assert json.loads(response.body) == {"errcode": "UNKNOWN", "error": "Internal server error"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(errors) == 1
    assert "is not JSON serializable" in str(errors[0].exc_info[1])


async def test_slow_reader_gets_backpressure_and_the_whole_body(http_server, http_port, probe):
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("GET", "/slow", headers={"Connection": "close"})
    await probe.wait_suspended()
    await nothing_happens_within(0.5, what="the client reading the response")
    # Not reading: the handler must be held at a flush, not finished with everything buffered.
    assert probe.count("sent") == 0
    raw = await conn.read_until_close(timeout=10)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"200 OK" in head
    assert len(json.loads(body)) == 40_000
    await probe.wait_finished()
    assert probe.count("sent") == 1


async def test_disconnect_during_big_response_stops_work(
    http_server, http_port, probe, caplog, monkeypatch
):
    runs = 0
    original = lowpriority.LowPriorityLane.run

    async def counting_run(self: Any, work: Any) -> Any:
        nonlocal runs
        runs += 1
        return await original(self, work)

    monkeypatch.setattr(lowpriority.LowPriorityLane, "run", counting_run)
    conn = await RawHTTPConnection.open(http_port)
    await conn.send_request("GET", "/slow")
    await probe.wait_suspended()
    await wait_until(lambda: runs >= 1, what="the lane encoding the first piece")
    conn.close("rst")
    await probe.wait_finished()
    await settle()
    runs_at_finish = runs
    await nothing_happens_within(0.2, what="the lane running a piece for a finished request")
    assert runs == runs_at_finish
    assert probe.count("sent") == 0
    assert access_statuses(caplog) == [499]
