"""json_body and require against a real server (with the handlers of test_responses)."""

from __future__ import annotations

import json

import pytest
import tornado.web

from tests.jsonio.test_responses import app, fetch  # noqa: F401  (the shared server)
from tornado_jsonservlet import require
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("path", ["/echo", "/streamed"])
@pytest.mark.parametrize(
    ("body", "headers", "status", "errcode"),
    [
        (b'{"name": "ada", "count": 3}', JSON, 200, None),
        (b'{"name": "ada"', JSON, 400, "BAD_JSON"),
        (b"[1, 2]", JSON, 400, "BAD_JSON"),
        (b'{"name": "\xff"}', JSON, 400, "BAD_JSON"),
        (b"", JSON, 400, "NOT_JSON"),
        (b"   ", JSON, 400, "NOT_JSON"),
        (b'{"name": "ada"}', {"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b'{"name": "ada"}', {}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (
            b'{"name": "ada"}',
            {"Content-Type": "application/vnd.api+json; charset=utf-8"},
            200,
            None,
        ),
        (b'{"count": 1}', JSON, 400, "MISSING_PARAM"),
        (b'{"name": 5}', JSON, 400, "INVALID_PARAM"),
        (b'{"name": "a", "count": true}', JSON, 400, "INVALID_PARAM"),
        (b'{"name": "a", "x": NaN}', JSON, 400, "BAD_JSON"),
    ],
)
async def test_request_body_errors(http_client, base_url, path, body, headers, status, errcode):
    response = await fetch(http_client, base_url + path, method="POST", body=body, headers=headers)
    assert response.code == status, response.body
    if errcode is not None:
        payload = json.loads(response.body)
        assert payload["errcode"] == errcode
        if errcode in ("MISSING_PARAM", "INVALID_PARAM"):
            assert payload["param"] in ("name", "count")
            assert payload["param"] in payload["error"]


async def test_body_over_limit_is_413(http_client, base_url):
    response = await fetch(
        http_client,
        base_url + "/streamed",
        method="POST",
        body=b'{"name": "' + b"x" * 2000 + b'"}',
        headers=JSON,
    )
    assert response.code == 413
    assert json.loads(response.body)["errcode"] == "TOO_LARGE"


async def test_content_length_over_limit_is_rejected_before_reading(http_server, http_port):
    conn = await RawHTTPConnection.open(http_port)
    # Announce 10 MB but send nothing: the answer must not wait for the body.
    await conn.send_request("POST", "/streamed", headers=JSON, content_length=10_000_000)
    raw = await conn.read_until_close(timeout=5)
    assert raw.startswith(b"HTTP/1.1 413")
    assert b'"errcode":"TOO_LARGE"' in raw


async def test_chunked_body_over_limit_is_413(http_server, http_port):
    conn = await RawHTTPConnection.open(http_port)
    head = (
        b"POST /streamed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 600
    await conn.send_raw(head + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3)
    raw = await conn.read_until_close(timeout=5)
    assert raw.startswith(b"HTTP/1.1 413")
    assert b'"errcode":"TOO_LARGE"' in raw


async def test_optional_non_object_body(http_client, base_url):
    empty = await fetch(http_client, base_url + "/any", method="POST", body=b"")
    assert json.loads(empty.body) == {"got": None}
    listed = await fetch(http_client, base_url + "/any", method="POST", body=b"[1,2]")
    assert json.loads(listed.body) == {"got": [1, 2]}


def test_require_helper_rules():
    assert require({"n": 1}, "n", float) == 1
    with pytest.raises(tornado.web.HTTPError):
        require({"n": True}, "n", int)
    with pytest.raises(tornado.web.HTTPError):
        require([], "n", int)  # type: ignore[arg-type]
