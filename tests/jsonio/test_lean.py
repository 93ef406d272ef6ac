"""LeanResponseMixin skips Tornado's If-None-Match parsing only where its answer is fixed.

Every case is answered by a lean handler and by the same handler without the mixin;
status, body and headers (but the per-second Date) must be identical.
"""

from __future__ import annotations

import pytest
import tornado.web

from tests.support import access_lines
from tornado_jsonservlet import JsonResponseMixin, LeanResponseMixin

pytestmark = pytest.mark.gen_test

DOC = {"id": 1, "name": "widget"}


class Text(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("hello")  # Tornado computes a SHA-1 ETag


class NoEtag(tornado.web.RequestHandler):
    def compute_etag(self) -> None:
        return None

    def get(self) -> None:
        self.write("hello")


class Json(JsonResponseMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.write_json(DOC)


class JsonWithEtag(Json):
    json_etag = True


PAIRS = {
    "text": Text,
    "noetag": NoEtag,
    "json": Json,
    "jsonetag": JsonWithEtag,
}


@pytest.fixture
def app() -> tornado.web.Application:
    rules = []
    for name, handler in PAIRS.items():
        lean = type(f"Lean{handler.__name__}", (LeanResponseMixin, handler), {})
        rules += [(f"/plain/{name}", handler), (f"/lean/{name}", lean)]
    return tornado.web.Application(rules)


async def both(http_client, base_url, name, headers):
    responses = []
    for flavour in ("plain", "lean"):
        response = await http_client.fetch(
            f"{base_url}/{flavour}/{name}", headers=headers, raise_error=False
        )
        responses.append(
            (
                response.code,
                response.body,
                sorted((k, v) for k, v in response.headers.get_all() if k != "Date"),
            )
        )
    return responses


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize(
    "if_none_match", [None, "*", '"nope"', 'W/"x", "y"', "garbage", "x" * 60_000, "é"]
)
async def test_same_answer_with_and_without_the_mixin(http_client, base_url, name, if_none_match):
    headers = {} if if_none_match is None else {"If-None-Match": if_none_match}
    plain, lean = await both(http_client, base_url, name, headers)
    assert lean == plain


@pytest.mark.parametrize("name", ["text", "jsonetag"])
async def test_a_matching_etag_still_gives_304(http_client, base_url, name, caplog):
    first = await http_client.fetch(f"{base_url}/lean/{name}")
    etag = first.headers["Etag"]
    plain, lean = await both(http_client, base_url, name, {"If-None-Match": etag})
    assert lean == plain
    assert lean[0] == 304
    assert [line.split()[0] for line in access_lines(caplog)] == ["200", "304", "304"]
