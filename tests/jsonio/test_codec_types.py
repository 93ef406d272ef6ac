"""The codec writes common Python values, the same way with either backend, plus a hook."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import uuid
from typing import Any

import msgspec
import pytest
import tornado.web

from tornado_jsonservlet import JsonErrorMixin, JsonResponseMixin, JsonServlet, ServletRegistry
from tornado_jsonservlet.jsonio.codec import encode


class Level(enum.Enum):
    LOW = "low"


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.date


class Item(msgspec.Struct):
    name: str
    at: datetime.datetime
    tags: list[str] = []


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents


def money(value: Any) -> Any:
    if isinstance(value, Money):
        return f"{value.cents / 100:.2f}"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


UTC = datetime.timezone.utc
COMMON = {
    "dt": datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
    "naive": datetime.datetime(2024, 1, 2, 3, 4, 5),
    "d": datetime.date(2024, 1, 2),
    "t": datetime.time(3, 4, 5),
    "u": uuid.UUID("12345678-1234-1234-1234-123456789abc"),
    "e": Level.LOW,
    "dc": Point(1, datetime.date(2024, 1, 2)),
    "struct": Item("é", datetime.datetime(2024, 1, 2, tzinfo=UTC), ["a"]),
}
EXPECTED = {
    "dt": "2024-01-02T03:04:05.006000Z",
    "naive": "2024-01-02T03:04:05",
    "d": "2024-01-02",
    "t": "03:04:05",
    "u": "12345678-1234-1234-1234-123456789abc",
    "e": "low",
    "dc": {"x": 1, "when": "2024-01-02"},
    "struct": {"name": "é", "at": "2024-01-02T00:00:00Z", "tags": ["a"]},
}


def test_common_values_are_written_alike_by_both_backends(backend: str) -> None:
    assert json.loads(encode(COMMON)) == EXPECTED
    assert json.loads(encode(COMMON, canonical=True)) == EXPECTED


def test_a_hook_writes_other_types(backend: str) -> None:
    assert encode({"price": Money(1050)}, default=money) == b'{"price":"10.50"}'
    assert encode({"big": 2**70, "price": [Money(1)]}, default=money) == (
        b'{"big":1180591620717411303424,"price":["0.01"]}'
    )
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        encode({"price": Money(1), "other": {1}}, default=money)


@pytest.mark.parametrize("value", [{1}, object(), b"raw", Money(1)])
def test_other_values_are_still_refused(backend: str, value: Any) -> None:
    with pytest.raises(TypeError, match="is not JSON serializable"):
        encode({"x": [value]})


def test_nan_inside_a_struct_is_refused(backend: str) -> None:
    class Reading(msgspec.Struct):
        value: float

    with pytest.raises(ValueError, match="NaN, infinity"):
        encode([Reading(float("nan"))])


# -- write_json and servlet returns, end to end ------------------------------------------


class Reading(msgspec.Struct):
    value: float
    at: datetime.datetime


class Handler(JsonErrorMixin, JsonResponseMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        kind = self.get_argument("kind")
        if kind == "common":
            await self.write_json(COMMON)
        elif kind == "money":
            await self.write_json({"price": Money(250)})
        elif kind == "bad":
            self.set_header("X-Before", "1")
            await self.write_json({"ok": 1, "bad": {1, 2}})


class Readings(JsonServlet):
    PATTERNS = ("/readings/{n:int}",)

    def on_GET(self, n: int) -> list[Reading]:
        at = datetime.datetime(2024, 1, 1, tzinfo=UTC)
        return [Reading(float(i) if n >= 0 else float("nan"), at) for i in range(abs(n))]


class Untyped(JsonServlet):
    PATTERNS = ("/untyped",)

    def on_GET(self) -> Any:
        return 201, {"item": COMMON["struct"], "when": COMMON["d"]}


@pytest.fixture
def app() -> tornado.web.Application:
    registry = ServletRegistry()
    registry.register(Readings)
    registry.register(Untyped)
    return tornado.web.Application([(r"/write", Handler), *registry.urlspecs()], json_default=money)


async def get(http_client: Any, base_url: str, path: str) -> Any:
    return await http_client.fetch(base_url + path, raise_error=False)


@pytest.mark.gen_test
async def test_write_json_encodes_common_values_and_the_hook(
    http_client: Any, base_url: str
) -> None:
    response = await get(http_client, base_url, "/write?kind=common")
    assert (response.code, json.loads(response.body)) == (200, EXPECTED)
    response = await get(http_client, base_url, "/write?kind=money")
    assert json.loads(response.body) == {"price": "2.50"}


@pytest.mark.gen_test
@pytest.mark.allow_error_log("Uncaught exception|500 GET")
async def test_an_unencodable_value_is_a_clean_500(http_client: Any, base_url: str) -> None:
    response = await get(http_client, base_url, "/write?kind=bad")
    assert response.code == 500
    assert json.loads(response.body) == {"errcode": "UNKNOWN", "error": "Internal server error"}


@pytest.mark.gen_test
async def test_typed_returns_are_encoded_by_msgspec(http_client: Any, base_url: str) -> None:
    response = await get(http_client, base_url, "/readings/2")
    assert response.code == 200
    assert json.loads(response.body) == [
        {"value": 0.0, "at": "2024-01-01T00:00:00Z"},
        {"value": 1.0, "at": "2024-01-01T00:00:00Z"},
    ]
    head = await http_client.fetch(base_url + "/readings/200", method="HEAD", raise_error=False)
    assert (head.code, head.body) == (200, b"")
    response = await get(http_client, base_url, "/untyped")
    assert response.code == 201
    assert json.loads(response.body)["item"]["name"] == "é"


@pytest.mark.gen_test
@pytest.mark.allow_error_log("Uncaught exception|500 GET")
async def test_nan_in_a_typed_return_is_a_clean_500(http_client: Any, base_url: str) -> None:
    response = await get(http_client, base_url, "/readings/-1")
    assert response.code == 500
    assert json.loads(response.body)["errcode"] == "UNKNOWN"
