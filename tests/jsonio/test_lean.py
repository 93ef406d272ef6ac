"""LeanResponseMixin skips Tornado's If-None-Match parsing only where its answer is fixed.

Every case is answered by a lean handler and by the same handler without the mixin;
status, body and headers (but the per-second Date) must be identical.
"""

from __future__ import annotations

import pytest
import tornado.httputil
import tornado.web

from tests.support import access_lines
from tornado_jsonservlet import JsonResponseMixin, LeanResponseMixin
from tornado_jsonservlet import tornado_adapter as tornado_internals

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
@pytest.mark.gen_test
async def test_same_answer_with_and_without_the_mixin(http_client, base_url, name, if_none_match):
    headers = {} if if_none_match is None else {"If-None-Match": if_none_match}
    plain, lean = await both(http_client, base_url, name, headers)
    assert lean == plain


@pytest.mark.parametrize("name", ["text", "jsonetag"])
@pytest.mark.gen_test
async def test_a_matching_etag_still_gives_304(http_client, base_url, name, caplog):
    first = await http_client.fetch(f"{base_url}/lean/{name}")
    etag = first.headers["Etag"]
    plain, lean = await both(http_client, base_url, name, {"If-None-Match": etag})
    assert lean == plain
    assert lean[0] == 304
    assert [line.split()[0] for line in access_lines(caplog)] == ["200", "304", "304"]


# -- the default headers, filled without HTTPHeaders' constructor ---------------------

DEFAULTS = ("TornadoServer/6", "text/html; charset=UTF-8", "Sat, 05 Dec 2026 06:00:00 GMT")


def _constructed() -> tornado.httputil.HTTPHeaders:
    server, content_type, date = DEFAULTS
    return tornado.httputil.HTTPHeaders(
        {"Server": server, "Content-Type": content_type, "Date": date}
    )


def _used_the_same_way(headers: tornado.httputil.HTTPHeaders) -> list[object]:
    """What a handler does with its headers, recorded: every answer must match."""
    seen: list[object] = [vars(headers), dict(headers), sorted(headers.get_all())]
    headers["Content-Type"] = "application/json; charset=UTF-8"
    headers.add("Vary", "Origin")
    headers.add("Vary", "Accept")
    headers.add("Set-Cookie", "a=1")
    del headers["Server"]
    seen += [vars(headers), headers["Vary"], headers.get_list("Vary"), "Server" in headers]
    seen += [sorted(headers.get_all()), sorted(headers.copy().get_all())]
    return seen


def test_default_headers_are_what_tornado_builds() -> None:
    filled = tornado_internals.default_headers(*DEFAULTS)
    assert type(filled) is tornado.httputil.HTTPHeaders
    # On every supported Tornado the fast filler applies (6.4/6.5 or 6.6 layout).
    assert tornado_internals.default_headers is not tornado_internals._build_headers
    assert _used_the_same_way(filled) == _used_the_same_way(_constructed())


def test_default_headers_are_not_shared_between_responses() -> None:
    first = tornado_internals.default_headers(*DEFAULTS)
    second = tornado_internals.default_headers(*DEFAULTS)
    first.add("Vary", "Origin")
    first["Date"] = "later"
    assert "Vary" not in second
    assert second["Date"] == DEFAULTS[2]


def test_an_unknown_headers_layout_falls_back_to_the_constructor(monkeypatch) -> None:
    class OtherLayout(tornado.httputil.HTTPHeaders):
        """A future Tornado that keeps its fields differently."""

        def __init__(self, *args: object, **kwargs: str) -> None:
            super().__init__(*args, **kwargs)
            self._fields_in_order = list(self.get_all())

    monkeypatch.setattr(tornado_internals, "_HTTPHeaders", OtherLayout)
    monkeypatch.setattr(tornado_internals, "_blank_headers", OtherLayout.__new__)
    assert tornado_internals._choose_headers_filler() is tornado_internals._build_headers
    assert isinstance(tornado_internals._build_headers(*DEFAULTS), OtherLayout)
