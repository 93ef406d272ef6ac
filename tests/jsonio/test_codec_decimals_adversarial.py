"""Adversarial checks of exact ``Decimal`` output: where the probe and the rewrite must
follow the encoders (``toDict()``, cycles, deep nesting, subclasses), what they must
never call, and the sliced path of ``write_json``.

Each test runs with both backends (the ujson one forced), since the search for
``Decimal`` values only runs on ujson's output.
"""

from __future__ import annotations

import collections
import decimal
import json
from typing import Any

import pytest
import tornado.web

from tornado_jsonservlet import JsonServlet, ServletRegistry
from tornado_jsonservlet.jsonio.codec import encode

D = decimal.Decimal


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


# -- what the encoders write, the search must see -----------------------------------


class Priced:
    """ujson writes an object with ``toDict()`` as what it returns (the codec's docs:
    "objects with toDict()/__json__() use them")."""

    def toDict(self) -> dict[str, Any]:
        return {"price": D("1.10")}


def test_a_decimal_returned_by_to_dict_is_exact(backend: str) -> None:
    doc = {"item": Priced(), "score": 1.5}
    assert json.loads(encode(doc)) == {"item": {"price": "1.10"}, "score": 1.5}
    assert encode(doc, decimals="number") == b'{"item":{"price":1.10},"score":1.5}'


def test_a_cycle_holding_a_decimal_is_refused_like_any_cycle(backend: str) -> None:
    plain: list[Any] = [1.5]
    plain.append(plain)
    with pytest.raises(ValueError, match="cannot encode as JSON") as without:
        encode(plain)
    holding: list[Any] = [D("1.10")]
    holding.append(holding)
    with pytest.raises(ValueError, match="cannot encode as JSON") as with_decimal:
        encode(holding)
    assert str(with_decimal.value) == str(without.value)


@pytest.mark.parametrize("depth", [600, 990, 1020])
def test_deep_nesting_holding_a_decimal_is_written(backend: str, depth: int) -> None:
    # Up to 1024 levels are written (codec docs); a Decimal at the bottom must
    # not make the document unwritable (3.12+: RecursionError from the rewrite),
    # nor be written as a double (before 3.12 the C pickler counts against the
    # Python recursion limit: the search gives up from ~500 levels and says "no
    # Decimal here").
    assert encode(nested(depth, [1.5])) == b"[" * (depth + 1) + b"1.5" + b"]" * (depth + 1)
    data = encode(nested(depth, [D("0.10"), 1.5]))
    assert data == b"[" * (depth + 1) + b'"0.10",1.5' + b"]" * (depth + 1)


class Money(D):
    """A Decimal subclass that prints itself for people."""

    def __str__(self) -> str:
        return f"${D.__str__(self)}"


def test_a_decimal_subclass_as_a_number_is_still_json(backend: str) -> None:
    data = encode({"m": Money("1.10"), "f": 1.5}, decimals="number")
    assert json.loads(data, parse_float=D) == {"m": D("1.10"), "f": D("1.5")}


# -- what the search must not do, and where it holds --------------------------------


class Touchy:
    """Pickling it would have side effects: the search must not pickle it."""

    calls: list[str] = []

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> Any:
        Touchy.calls.append("__reduce_ex__")
        raise RuntimeError("pickled!")

    def __reduce__(self) -> Any:
        Touchy.calls.append("__reduce__")
        raise RuntimeError("pickled!")

    def __getstate__(self) -> Any:
        Touchy.calls.append("__getstate__")
        raise RuntimeError("pickled!")


def touchy_hook(value: Any) -> Any:
    if isinstance(value, Touchy):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def test_the_search_never_pickles_application_objects(backend: str) -> None:
    Touchy.calls.clear()
    doc = {
        "t": Touchy({"inner": Touchy(D("2.50"))}),
        "s": {D("0.1"), D("0.2")},
        "fs": frozenset([D("3")]),
        "pair": collections.namedtuple("Pair", "a b")(D("1E+2"), 0.5),
        "od": collections.OrderedDict(k=D("-0")),
        D("7.00"): "decimal key",
        "f": 0.25,
    }
    assert json.loads(encode(doc, default=touchy_hook)) == {
        "t": {"inner": "2.50"},
        "s": ["0.1", "0.2"],
        "fs": ["3"],
        "pair": ["1E+2", 0.5],
        "od": {"k": "-0"},
        "7.00": "decimal key",
        "f": 0.25,
    }
    assert Touchy.calls == []
    # Without a hook, the usual error, and still nothing pickled.
    with pytest.raises(TypeError, match="Touchy"):
        encode({"t": Touchy(D("1")), "f": 0.5})
    assert Touchy.calls == []


def test_a_hook_that_raises_or_returns_a_decimal(backend: str) -> None:
    class Cents:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    def hook(value: Any) -> Any:
        if isinstance(value, Cents):
            if value.cents < 0:
                raise TypeError("negative cents")
            return D(value.cents).scaleb(-2)
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    assert encode([Cents(1999), 0.5], default=hook) == b'["19.99",0.5]'
    assert encode([Cents(1999), 0.5], default=hook, decimals="number") == b"[19.99,0.5]"
    with pytest.raises(TypeError, match="negative cents"):
        encode([Cents(-1), D("1.5"), 0.5], default=hook)


# -- the sliced path of write_json -------------------------------------------------


ROWS = [{"price": D(f"{i}.{i % 100:02d}"), "ratio": i / 7, "n": i} for i in range(6000)]


class Rows(JsonServlet):
    PATTERNS = ("/rows",)

    def on_GET(self) -> Any:
        return {"total": D("12345.6700"), "rows": ROWS}


@pytest.fixture(params=[{}, {"json_decimal": "number"}], ids=["string", "number"])
def app(request: pytest.FixtureRequest) -> tornado.web.Application:
    registry = ServletRegistry()
    registry.register(Rows)
    return tornado.web.Application(registry.urlspecs(settings=request.param), **request.param)


@pytest.mark.gen_test
async def test_a_sliced_response_holds_exact_decimals(
    backend: str, app: tornado.web.Application, http_client: Any, base_url: str
) -> None:
    decimals = app.settings.get("json_decimal", "string")
    expected = encode({"total": D("12345.6700"), "rows": ROWS}, decimals=decimals)
    assert len(expected) > Rows.json_slice_threshold  # the sliced path
    response = await http_client.fetch(base_url + "/rows")
    assert response.body == expected
    parsed = json.loads(response.body, parse_float=D)
    assert parsed["rows"][4321]["price"] in ("4321.21", D("4321.21"))
    head = await http_client.fetch(base_url + "/rows", method="HEAD")
    assert head.code == 200
