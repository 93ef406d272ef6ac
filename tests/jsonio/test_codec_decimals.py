"""``Decimal`` is written exactly: a string by default, or a number with the same digits.

With either backend alike. ujson would write a ``Decimal`` as a double by itself, so
the codec looks for one (at C speed) in any output with a fraction or an exponent:
these tests put ``Decimal`` values where the encoders find them (nested, in
dataclasses, Structs, enums, dict subclasses, tuples) beside floats and strings that
look like numbers, and check every one came out exact.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import decimal
import enum
import json
from typing import Any

import msgspec
import pytest
import tornado.web
from hypothesis import given, settings
from hypothesis import strategies as st

from tornado_jsonservlet import JsonServlet, ServletRegistry
from tornado_jsonservlet.jsonio import codec
from tornado_jsonservlet.jsonio.codec import decode, encode

D = decimal.Decimal


@dataclasses.dataclass
class Line:
    price: D
    quantity: int


class Total(msgspec.Struct):
    amount: D
    lines: list[Line]


class Rate(enum.Enum):
    VAT = D("0.20")


def document() -> dict[str, Any]:
    return {
        "price": D("19.99"),
        "float": 19.99,
        "looks": "1.5e+3 and 2.0",
        "nested": [{"deep": (D("1E+2"), D("-0"))}],
        "line": Line(D("0.10"), 3),
        "total": Total(D("30.00"), [Line(D("10.000"), 1)]),
        "rate": Rate.VAT,
        "ordered": collections.OrderedDict(a=D("7")),
        "int": 7,
    }


STRINGS = {
    "price": "19.99",
    "float": 19.99,
    "looks": "1.5e+3 and 2.0",
    "nested": [{"deep": ["1E+2", "-0"]}],
    "line": {"price": "0.10", "quantity": 3},
    "total": {"amount": "30.00", "lines": [{"price": "10.000", "quantity": 1}]},
    "rate": "0.20",
    "ordered": {"a": "7"},
    "int": 7,
}


def test_a_decimal_is_a_string_by_default(backend: str) -> None:
    assert json.loads(encode(document())) == STRINGS
    assert json.loads(encode(document(), canonical=True)) == STRINGS


def test_as_a_number_it_keeps_its_digits(backend: str) -> None:
    data = encode(document(), decimals="number")
    assert b'"price":19.99,' in data
    assert b'"deep":[1E+2,-0]' in data
    assert b'"amount":30.00' in data
    assert b'"price":10.000' in data
    parsed = json.loads(data, parse_float=D, parse_int=D)
    assert parsed["price"] == D("19.99")
    assert parsed["total"]["lines"][0]["price"] == D("10.000")
    assert encode(document(), decimals="number", canonical=True) == encode(
        json.loads(data, parse_float=D, parse_int=D), decimals="number", canonical=True
    )


@pytest.mark.parametrize("special", ["NaN", "-Infinity", "sNaN", "1E+400", "-1E+999999"])
def test_what_no_number_can_hold_is_a_string_or_refused(backend: str, special: str) -> None:
    assert encode([D(special)]) == f'["{D(special)}"]'.encode()
    with pytest.raises(ValueError, match=r"Decimal\(.*\) is not a number JSON can represent"):
        encode([1.5, D(special)], decimals="number")


def test_hostile_values(backend: str) -> None:
    # 60 KB of digits: exact as a string; as a number, exact while a double can
    # hold its magnitude, else refused with a message that does not repeat it all.
    long = D("9" * 60_000 + "." + "1" * 10)
    assert json.loads(encode({"v": long})) == {"v": str(long)}
    with pytest.raises(ValueError, match=r"^.{0,160}$"):
        encode({"v": long}, decimals="number")
    fine = D("0." + "7" * 60_000)
    assert encode({"v": fine}, decimals="number") == b'{"v":' + str(fine).encode() + b"}"
    # An exponent beyond any double: a string, or refused as a number.
    assert encode([D("1E-999999")]) == b'["1E-999999"]'
    with pytest.raises(ValueError, match="decimals must be"):
        encode([D(1)], decimals="float")
    with pytest.raises(ValueError, match="decimals must be"):
        encode([D(1)], decimals="string\r\n")


def test_documents_without_decimals_are_unchanged(backend: str) -> None:
    plain = {"a": 1.5, "b": "x.y e+1", "c": [1e300, -0.0, 2], "d": None}
    assert encode(plain) == b'{"a":1.5,"b":"x.y e+1","c":[1e+300,-0.0,2],"d":null}'
    assert encode(plain) == encode(plain, decimals="number")


@settings(max_examples=300, deadline=None)
@given(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_any_decimal_round_trips_exactly(value: D, beside: float) -> None:
    for fast in (codec._fast_dumps, None):
        saved, codec._fast_dumps = codec._fast_dumps, fast
        try:
            assert decode(encode({"d": value, "f": beside}))["d"] == str(value)
            if value.is_finite() and abs(float(value)) != float("inf"):
                text = encode([value], decimals="number")
                assert text == f"[{value}]".encode()
                assert json.loads(text, parse_float=D, parse_int=D)[0] == value
        finally:
            codec._fast_dumps = saved


# -- through write_json and servlets, with the json_decimal setting ---------------------


class Untyped(JsonServlet):
    PATTERNS = ("/untyped",)

    def on_GET(self) -> Any:
        return {"price": D("19.99"), "score": 1.5}


class Typed(JsonServlet):
    PATTERNS = ("/typed",)

    def on_GET(self) -> Total:
        return Total(D("30.00"), [Line(D("10.000"), 1)])


def make_app(**settings: Any) -> tornado.web.Application:
    registry = ServletRegistry()
    registry.register(Untyped)
    registry.register(Typed)
    return tornado.web.Application(registry.urlspecs(settings=settings), **settings)


@pytest.fixture(params=[{}, {"json_decimal": "number"}], ids=["default", "number"])
def app(request: pytest.FixtureRequest) -> tornado.web.Application:
    return make_app(**request.param)


@pytest.mark.gen_test
async def test_responses_follow_the_setting(app: Any, http_client: Any, base_url: str) -> None:
    as_number = app.settings.get("json_decimal") == "number"
    untyped = await http_client.fetch(base_url + "/untyped")
    typed = await http_client.fetch(base_url + "/typed")
    if as_number:
        assert untyped.body == b'{"price":19.99,"score":1.5}'
        assert typed.body == b'{"amount":30.00,"lines":[{"price":10.000,"quantity":1}]}'
    else:
        assert untyped.body == b'{"price":"19.99","score":1.5}'
        assert typed.body == b'{"amount":"30.00","lines":[{"price":"10.000","quantity":1}]}'


def test_a_wrong_setting_fails_when_the_url_table_is_built() -> None:
    with pytest.raises(ValueError, match="json_decimal setting must be 'string' or 'number'"):
        make_app(json_decimal="float")


def test_a_hook_that_encodes_and_threads_get_their_own_search(backend: str) -> None:
    # The search is reused between calls; a hook encoding while it runs (a nested
    # call), and other threads, must not share it half-way through.
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    def hook(value: Any) -> Any:
        if isinstance(value, Money):
            inner = encode({"amount": D(value.cents) / 100, "f": 0.5})
            return json.loads(inner)
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    doc = {"m": Money(1999), "d": D("1.10"), "f": 2.5}
    expected = {"m": {"amount": "19.99", "f": 0.5}, "d": "1.10", "f": 2.5}
    assert json.loads(encode(doc, default=hook)) == expected
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: encode(doc, default=hook), range(200)))
    assert all(json.loads(result) == expected for result in results)
