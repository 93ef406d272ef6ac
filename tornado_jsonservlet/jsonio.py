"""JSON encoding and decoding: fast, strict about what goes on the wire, clear when it fails.

The encoder is orjson when it is installed (``pip install tornado-jsonservlet[orjson]``),
otherwise ujson; :func:`active_backend` says which. Decoding uses ujson. Output is
compact UTF-8 with non-ASCII characters and ``/`` left as they are.

*Canonical* output (:func:`encode` with ``canonical=True``) is always produced by
ujson with sorted keys, whatever backend is active, so it is byte-for-byte stable
across machines and reproducible slice by slice (see
:mod:`~tornado_jsonservlet.json_handlers`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Optional, Union

import ujson

__all__ = ["JSON_CONTENT_TYPE", "active_backend", "decode", "encode"]

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"

try:  # pragma: no cover - which branch runs depends on the environment
    import orjson

    _ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS
    _fast_dumps: Optional[Callable[[Any], bytes]] = lambda obj: orjson.dumps(  # noqa: E731
        obj, option=_ORJSON_OPTIONS
    )
    _BACKEND = "orjson"
except ImportError:  # pragma: no cover
    _fast_dumps = None
    _BACKEND = "ujson"

# Decoding always uses ujson: it caps nesting at 1024 levels, where orjson accepts
# any depth. A body nested deeper than its encoders can write back would turn a
# client's bad input into a server error.
_loads: Callable[[str], Any] = ujson.loads

# Tokens that ujson accepts but JSON does not (NaN, Infinity) or that overflow a
# double (1e999). A body containing one of them takes the strict stdlib path.
_SUSPICIOUS = re.compile(rb"NaN|Infinity|[eE][+-]?\d{3}")


def active_backend() -> str:
    """``"orjson"`` or ``"ujson"``: the encoder used for non-canonical output."""
    return _BACKEND


def _ujson_dumps(obj: Any, canonical: bool) -> bytes:
    text: str = ujson.dumps(
        obj,
        ensure_ascii=False,
        escape_forward_slashes=False,
        allow_nan=False,
        sort_keys=canonical,
    )
    return text.encode("utf-8")


def encode(obj: Any, *, canonical: bool = False) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON.

    :raises TypeError: a value JSON cannot represent; the message names its type.
    :raises ValueError: NaN or infinity (with ujson, and always in canonical mode),
        or an integer outside the backend's range.
    """
    try:
        if canonical or _fast_dumps is None:
            return _ujson_dumps(obj, canonical)
        try:
            return _fast_dumps(obj)
        except TypeError:
            # orjson's limits are narrower than ujson's (255 levels, 64-bit integers);
            # ujson either manages or reports the problem below.
            return _ujson_dumps(obj, canonical)
    except OverflowError as error:
        raise ValueError(
            f"cannot encode as JSON: {error} (NaN, infinity or huge integer)"
        ) from None
    except TypeError as error:
        culprit = _first_unencodable(obj)
        if culprit is None:
            raise ValueError(f"cannot encode as JSON: {error}") from None
        raise TypeError(
            f"Object of type {type(culprit).__name__} is not JSON serializable"
        ) from None


_JSON_SCALARS = (str, int, float, bool, type(None))


def _first_unencodable(obj: Any) -> Any:
    """The first value JSON cannot represent, found on the (rare) error path only."""
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, _JSON_SCALARS):
                    return key
                stack.append(item)
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif not isinstance(value, _JSON_SCALARS):
            return value
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]} is out of range")
    return number


def decode(data: Union[bytes, str]) -> Any:
    """Decode one JSON document. Strict: UTF-8 only, no NaN/Infinity, finite numbers.

    :raises ValueError: with a message about the input (safe to show the client).
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"invalid UTF-8 at byte {error.start}") from None
        raw = data
    else:
        text = data
        raw = data.encode("utf-8", "surrogatepass")
    if _SUSPICIOUS.search(raw):
        try:
            return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        except json.JSONDecodeError as error:
            raise ValueError(error.msg + f" at position {error.pos}") from None
    try:
        return _loads(text)
    except ValueError as error:
        raise ValueError(str(error)) from None
