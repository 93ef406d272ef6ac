"""The JSON codec and the sliced encoder, including hypothesis proofs of wire equivalence."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tornado_jsonservlet.jsonio.codec import active_backend, decode, encode
from tornado_jsonservlet.jsonio.responses import _big_list, _estimated_size, encode_in_slices

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


def test_active_backend_is_reported():
    assert active_backend() in ("orjson", "ujson")


def test_output_is_utf8_without_needless_escaping(backend):
    assert encode({"path": "/a/b", "name": "Zoë ✓"}) == '{"path":"/a/b","name":"Zoë ✓"}'.encode()


def test_canonical_mode_sorts_keys_and_is_compact():
    assert (
        encode({"b": 1, "a": {"d": [1, 2], "c": None}}, canonical=True)
        == b'{"a":{"c":null,"d":[1,2]},"b":1}'
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_canonical_mode_rejects_nan_and_infinity(value):
    with pytest.raises(ValueError, match=r"\(NaN, infinity\)"):
        encode({"x": [value]}, canonical=True)


@pytest.mark.parametrize(
    ("value", "name"), [({1, 2}, "set"), (object(), "object"), (b"raw", "bytes")]
)
def test_unencodable_values_name_their_type(backend, value, name):
    with pytest.raises(TypeError, match=f"Object of type {name} is not JSON serializable"):
        encode({"ok": [1, {"nested": value}]})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "invalid UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "invalid UTF-8"),
        (b"NaN", "NaN is not valid JSON"),
        (b'{"a": -Infinity}', "Infinity is not valid JSON"),
        (b"[1e999]", "out of range"),
        (b'{"a":1} trailing', None),
        (b"[1,]", None),
        (b"", None),
        (b"[" * 5000 + b"]" * 5000, None),
    ],
    ids=[
        "bad-utf8",
        "surrogate",
        "nan",
        "infinity",
        "overflow",
        "trailing",
        "comma",
        "empty",
        "deep",
    ],
)
def test_decode_is_strict(backend, data, message):
    with pytest.raises(ValueError, match=message):
        decode(data)


def test_deep_but_accepted_documents_can_be_written_back(backend):
    deep = decode(b"[" * 512 + b"]" * 512)
    assert encode(deep) == b"[" * 512 + b"]" * 512


def test_integers_beyond_64_bits_are_encoded(backend):
    assert (
        encode({"n": 2**70, "m": -(2**65)})
        == b'{"n":1180591620717411303424,"m":-36893488147419103232}'
    )


def test_decode_accepts_numbers_with_exponents():
    assert decode(b'{"a": 1e300, "b": 2E-5, "s": "NaN and Infinity in a string"}') == {
        "a": 1e300,
        "b": 2e-5,
        "s": "NaN and Infinity in a string",
    }


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_encode_decode_round_trip(value):
    assert decode(encode(value)) == value
    assert json.loads(encode(value, canonical=True)) == value


def _run(coro: Any) -> Any:
    """Run on a private loop, never installed as the current one (pytest-tornado owns that)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def _sliced(obj: Any, canonical: bool) -> bytes:
    # The big list is named explicitly: _big_list() ignores short lists on purpose,
    # and what is proven here is the slicing itself, at any length.
    found = (None, obj) if isinstance(obj, list) else ("items", obj["items"])
    _, per_item = _estimated_size(found[1], canonical)

    return b"".join(_run(encode_in_slices(obj, found, per_item, canonical=canonical)))


big_documents = st.one_of(
    st.lists(json_values, min_size=0, max_size=60),
    st.builds(
        lambda before, items, after: {**before, "items": items, **after},
        st.dictionaries(st.text(max_size=6), json_values, max_size=4),
        st.lists(json_values, max_size=60),
        st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(big_documents)
def test_sliced_encoding_is_byte_identical_in_canonical_mode(document):
    assert _sliced(document, canonical=True) == encode(document, canonical=True)
    assert decode(_sliced(document, canonical=False)) == document


def test_only_long_lists_are_candidates_for_slicing():
    assert _big_list({"tags": ["a", "b"], "n": 1}) is None
    assert _big_list(list(range(10))) is None
    long = list(range(500))
    assert _big_list(long) == (None, long)
    assert _big_list({"a": long[:200], "b": long, 3: long}) == ("b", long)


def test_slices_really_are_slices():
    document = {"meta": {"n": 1}, "items": [{"id": i, "name": f"item {i}"} for i in range(60_000)]}
    found = _big_list(document)
    assert found is not None
    _, per_item = _estimated_size(found[1], True)
    chunks = _run(encode_in_slices(document, found, per_item, canonical=True))
    pieces = [c for c in chunks if len(c) > 1000]
    assert len(pieces) >= 8
    assert max(len(p) for p in pieces) < 400_000
    assert b"".join(chunks) == encode(document, canonical=True)
