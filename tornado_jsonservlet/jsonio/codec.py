"""JSON encoding and decoding: fast, strict about what goes on the wire, clear when it fails.

Encoding
--------
The encoder is orjson when it is installed (``pip install tornado-jsonservlet[orjson]``),
otherwise ujson; :func:`active_backend` says which. Output is compact UTF-8 with
non-ASCII characters and ``/`` left as they are.

The backend never changes the outcome. A value is either written the same way by both
or refused by both, with the same exception and message:

* NaN and infinity have no JSON form: ``ValueError``. (orjson alone would write them as
  ``null``, silently turning a number into nothing; its output is therefore checked.)
* Strings with lone surrogates: ``ValueError``.
* Common Python values are written the same way by both: ``datetime``, ``date`` and
  ``time`` as ISO 8601 strings (UTC as ``Z``, as msgspec writes them), dataclasses
  as objects, msgspec Structs and pydantic models as what they dump to in JSON mode.
  ``encode(obj, default=fn)`` (the
  ``json_default`` application setting for ``write_json`` and servlets) handles
  other types: ``fn(value)`` returns something JSON can hold, or raises ``TypeError``.
* Anything else (``set``, ``bytes``, arbitrary objects):
  ``TypeError: Object of type X is not JSON serializable``, raised before a byte is sent.
* ``uuid.UUID`` is written as its string and an ``enum.Enum`` member as its value, by
  both (orjson does so natively, ujson is taught to).
* Integers of any size and nesting up to 1024 levels are written (orjson's narrower
  limits hand the value to ujson).
* ``decimal.Decimal`` is written exactly: as a string by default (``"19.99"``: no
  reader rounds it), or with ``decimals="number"`` (the ``json_decimal`` application
  setting) as a JSON number with the same digits, where NaN and infinity are refused.
  orjson hands a ``Decimal`` to the codec at no cost. ujson would write it as a double
  itself, so with ujson a document whose output has a fraction or an exponent (any
  float will do) is searched for ``Decimal`` values at C speed, which costs about half
  an encode (see :func:`encode`); only a document that holds one is encoded again.
* What only ujson knows is handled by ujson with either backend: non-string keys
  become strings, objects with ``toDict()``/``__json__()`` use them.

*Canonical* output (:func:`encode` with ``canonical=True``) is always produced by
ujson with sorted keys, so it is byte-for-byte stable across machines and
reproducible slice by slice (see :mod:`~tornado_jsonservlet.json_handlers`).

Decoding
--------
:func:`decode` accepts RFC 8259 JSON and nothing else: no ``NaN``/``Infinity``, no lax
numbers (``-``, ``01``, ``1.``, ``.5``, ``+1``), no raw control characters in strings,
no lone surrogates (raw or ``\\ud800``-escaped), and no number that would not come back
the same when written out again -- a float that overflows to infinity is refused
whatever its spelling (``1e400``, or ``1`` followed by 400 zeros and ``.0``). Integers
keep their exact value (up to 4300 digits). Documents nested up to 512 levels are always
read; deeper ones up to 1024 levels only as far as the interpreter's recursion limit
allows (from about 900 levels), and never beyond what the encoder can write back.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import pickle
import re
import sys
import threading
import uuid
from typing import Any, Callable, Optional, Union

import ujson

__all__ = ["DECIMAL_FORMATS", "JSON_CONTENT_TYPE", "active_backend", "decode", "encode"]

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
#: How :func:`encode` writes ``decimal.Decimal``: ``"string"`` (the default) or ``"number"``.
DECIMAL_FORMATS = ("string", "number")

try:  # pragma: no cover - which branch runs depends on the environment
    import orjson

    # Datetimes and dataclasses are passed through, i.e. refused: ujson cannot write
    # them, and the backend must not decide whether a response succeeds. Non-string
    # keys are refused too and left to ujson, which converts them the way it always
    # has, so they come out the same with either backend.
    _ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
    _fast_dumps: Optional[Callable[[Any], bytes]] = lambda obj: orjson.dumps(  # noqa: E731
        obj, default=_ujson_default, option=_ORJSON_OPTIONS
    )
    _hooked_dumps: Callable[[Any, Callable[[Any], Any]], bytes] = (  # noqa: E731
        lambda obj, hook: orjson.dumps(obj, default=hook, option=_ORJSON_OPTIONS)
    )
    _BACKEND = "orjson"
except ImportError:  # pragma: no cover
    _fast_dumps = None
    _BACKEND = "ujson"

#: Deepest nesting written (ujson's limit) and, roughly, read.
MAX_DEPTH = 1024
# Python's own limit on integer literals (int_max_str_digits), applied on every version:
# converting a longer run of digits is quadratic where the limit does not exist.
_MAX_INT_DIGITS = 4300
# A document with at most this many "[" and "{" cannot be nested deeper than that, so
# it never needs the depth check (see _stdlib_depth_is_bounded).
_SHALLOW_BRACKETS = 512

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def active_backend() -> str:
    """``"orjson"`` or ``"ujson"``: the encoder used for non-canonical output.

    .. versionadded:: 0.1
    """
    return _BACKEND


# -- encoding ------------------------------------------------------------------------


def _extended(value: Any, hook: Optional[Callable[[Any], Any]]) -> Any:
    """A JSON-ready form of a value neither backend writes the same way by itself.

    Called by both backends for the values they do not know, so the output does not
    depend on the backend. Only values outside JSON's types get here: the fast
    path for plain dicts and lists is untouched.
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        # orjson's way here ("number" never takes orjson); Decimal's own spelling.
        return decimal.Decimal.__str__(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime.datetime):
        # RFC 3339's "Z" for UTC, as msgspec writes typed returns: one spelling.
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    msgspec = sys.modules.get("msgspec")
    if msgspec is not None and isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value, builtin_types=(decimal.Decimal,), enc_hook=hook)
    dump = getattr(value, "model_dump", None)
    if dump is not None and callable(dump) and hasattr(type(value), "model_fields"):
        return dump(mode="json")  # a pydantic v2 model
    if hook is not None:
        return hook(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _ujson_default(value: Any) -> Any:
    return _extended(value, None)


class _RawJson:
    """Already-encoded JSON that ujson inserts as it is (through ``__json__``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __json__(self) -> str:
        return self.text


def _canonical_default(hook: Optional[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """ujson with ``sort_keys`` writes a dict returned by ``default`` as ``{}``: such
    values are encoded on their own, sorted, and inserted as raw JSON."""

    def default(value: Any) -> Any:
        converted = _extended(value, hook)
        if isinstance(converted, (dict, list)):
            return _RawJson(_ujson_dumps(converted, True, hook).decode("utf-8"))
        return converted

    return default


def _ujson_dumps(
    obj: Any,
    canonical: bool,
    default: Optional[Callable[[Any], Any]] = None,
    decimals: str = "string",
) -> bytes:
    try:
        data = _ujson_bytes(obj, canonical, default)
    except (TypeError, ValueError, OverflowError, RecursionError) as error:
        # UnicodeEncodeError (a lone surrogate) is a ValueError. ujson also refuses
        # a NaN or infinite Decimal, which a string represents well enough.
        if _holds_decimal(obj, default):
            return _ujson_bytes(_decimals_written(obj, default, decimals), canonical, default)
        raise _explain(obj, error, default) from None
    if _may_hold_decimal(data) and _holds_decimal(obj, default):
        return _ujson_bytes(_decimals_written(obj, default, decimals), canonical, default)
    return data


def _ujson_bytes(obj: Any, canonical: bool, default: Optional[Callable[[Any], Any]]) -> bytes:
    try:
        text: str = ujson.dumps(
            obj,
            ensure_ascii=False,
            escape_forward_slashes=False,
            allow_nan=False,
            sort_keys=canonical,
            default=(
                _canonical_default(default)
                if canonical
                else _ujson_default
                if default is None
                else _hooked(default)
            ),
        )
        return text.encode("utf-8")
    except (TypeError, ValueError, OverflowError, RecursionError) as error:
        raise _explain(obj, error, default) from None


def _may_hold_decimal(data: bytes) -> bool:
    """Whether ujson's output can hold a ``Decimal``, which it writes as a double: always
    with a ``.`` or an exponent (``1.0``, ``1e+30``). Strings hold these too, so a
    True only means "look"; a False is certain, and costs a few ``memchr`` calls."""
    # A one-byte search runs at memchr speed; a two-byte one stops at every "e".
    return b"." in data or (b"+" in data and b"e+" in data) or b"e-" in data


class _DecimalFound(Exception):
    """Raised by :class:`_DecimalProbe` at the first ``Decimal``."""


class _Discarded:
    """Where the probe's pickle goes."""

    __slots__ = ()

    def write(self, data: bytes) -> int:
        return len(data)


def _unpickled(*parts: Any) -> None:
    """The probe's stand-in reconstructor (its output is never loaded)."""


class _DecimalProbe(pickle.Pickler):
    """Looks for a ``Decimal`` where the encoders would look, at C speed.

    The pickler walks containers in C and asks :meth:`reducer_override` only about
    objects that are not plain ``dict``/``list``/``tuple``/``str``/numbers. Those are
    answered with what the encoders write for them (a dataclass's fields, a Struct's
    builtins...), never with the object's own ``__reduce__``: nothing of the
    application's runs but what encoding runs anyway. Fast mode: no memo, so about
    half the cost of a ujson encode of the same document.
    """

    def __init__(self, hook: Optional[Callable[[Any], Any]]) -> None:
        super().__init__(_Discarded(), protocol=pickle.HIGHEST_PROTOCOL)
        self.fast = True
        self._hook = hook

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, decimal.Decimal):
            raise _DecimalFound
        if obj is _unpickled:
            return NotImplemented  # pickled by name, as a function is
        if isinstance(obj, dict):
            return _unpickled, (dict(obj),)
        if isinstance(obj, (list, tuple)):
            return _unpickled, (list(obj),)
        if isinstance(obj, (str, int, float, bytes)):
            return _unpickled, ()
        try:
            return _unpickled, (_what_ujson_writes(obj, self._hook),)
        except Exception:  # the encoder reports it in its own words
            return _unpickled, ()


# One probe per thread (encodes also run in worker threads), reused: making a
# pickler costs more than probing a small document.
_probes = threading.local()


def _holds_decimal(obj: Any, hook: Optional[Callable[[Any], Any]]) -> bool:
    # Taken while in use: a hook that encodes (a nested call) gets a probe of its own.
    probe: Optional[_DecimalProbe] = getattr(_probes, "probe", None)
    _probes.probe = None
    if probe is None:
        probe = _DecimalProbe(None)
    probe._hook = hook
    try:
        probe.dump(obj)
    except _DecimalFound:
        return True  # the probe stopped half-way: a new one next time
    except Exception:
        # Unsure (a cycle; nesting deeper than the pickler goes, about 500 levels
        # on Python < 3.12): the rewrite decides, and refuses a cycle as ujson does.
        return True
    _probes.probe = probe
    probe._hook = None  # hold no application object between calls
    return False


def _decimal_written(value: decimal.Decimal, decimals: str) -> Any:
    # Decimal's own spelling: a subclass's __str__ may be for people ("$1.10").
    text = decimal.Decimal.__str__(value)
    if decimals == "string":
        return text
    if not (value.is_finite() and math.isfinite(float(value))):
        # NaN, infinity, or beyond a double's range, which decode() refuses too.
        raise ValueError(
            f"cannot encode as JSON: Decimal({_shown(value)}) is not a number JSON "
            "can represent (NaN, infinity)"
        )
    return _RawJson(text)  # the same digits, as a JSON number


def _shown(value: decimal.Decimal) -> str:
    text = str(value)
    return repr(text) if len(text) <= 40 else repr(f"{text[:40]}...")


def _what_ujson_writes(value: Any, hook: Optional[Callable[[Any], Any]]) -> Any:
    """What ujson encodes in place of an object it does not know, in ujson's order:
    ``toDict()`` first, then the codec's ``default``."""
    to_dict = getattr(value, "toDict", None)
    if callable(to_dict):
        return to_dict()
    return _extended(value, hook)


def _decimals_written(value: Any, hook: Optional[Callable[[Any], Any]], decimals: str) -> Any:
    """A copy of ``value`` with each ``Decimal`` as it is written (rarely needed: only
    for a document that holds one, with ujson).

    Iterative, so that nesting is bounded by :data:`MAX_DEPTH` as ujson bounds it,
    not by the interpreter's recursion limit; a cycle is refused the same way.
    """
    root = [value]
    pending: list[tuple[Any, Any, Any, int]] = [(root, 0, value, 0)]
    while pending:
        holder, key, item, depth = pending.pop()
        if item is None or type(item) in _SCALARS:
            continue
        if isinstance(item, decimal.Decimal):
            holder[key] = _decimal_written(item, decimals)
            continue
        if depth >= MAX_DEPTH:
            raise ValueError(f"cannot encode as JSON: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            copied: Any = dict(item)
            pending.extend((copied, name, child, depth + 1) for name, child in copied.items())
        elif isinstance(item, (list, tuple)):
            copied = list(item)
            pending.extend((copied, index, child, depth + 1) for index, child in enumerate(copied))
        elif isinstance(item, (str, int, float, bytes)) or hasattr(item, "__json__"):
            continue  # written as it is (__json__: raw JSON text)
        else:
            try:
                copied = _what_ujson_writes(item, hook)
            except TypeError:
                continue  # ujson refuses it with the usual error
            pending.append((holder, key, copied, depth + 1))
            continue
        holder[key] = copied
    return root[0]


_SCALARS = frozenset({str, int, float, bool})


def _hooked(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: _extended(value, hook)


def encode(
    obj: Any,
    *,
    canonical: bool = False,
    default: Optional[Callable[[Any], Any]] = None,
    decimals: str = "string",
) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON.

    ``decimals`` says how ``decimal.Decimal`` values are written: ``"string"``
    (``"19.99"``) or ``"number"`` (``19.99``, the same digits).

    :raises TypeError: a value JSON cannot represent; the message names its type.
    :raises ValueError: NaN or infinity, a lone surrogate, or nesting beyond 1024
        levels; an unknown ``decimals``. The same exception and message with either
        backend.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``Decimal`` is written exactly, as a string unless ``decimals="number"``.
    """
    if decimals not in DECIMAL_FORMATS:
        raise ValueError(f"decimals must be 'string' or 'number', not {decimals!r}")
    if canonical or _fast_dumps is None or decimals == "number":
        return _ujson_dumps(obj, canonical, default, decimals)
    try:
        data = _fast_dumps(obj) if default is None else _hooked_dumps(obj, _hooked(default))
    except TypeError:
        # Beyond orjson's limits (64-bit integers, 255 levels, non-string keys,
        # surrogates) or not JSON at all: ujson writes it or explains why not.
        return _ujson_dumps(obj, False, default, decimals)
    if b"null" in data:
        # orjson writes NaN and infinity as null. A document holding a null is
        # re-encoded by ujson, which refuses them, rather than walked in Python.
        return _ujson_dumps(obj, False, default, decimals)
    return data


_NATIVE_EXTRAS = (uuid.UUID,)


def _explain(
    obj: Any, error: BaseException, hook: Optional[Callable[[Any], Any]] = None
) -> Exception:
    """The exception for a value that cannot be encoded, naming the first culprit.

    Runs on the (rare) error path only. It depends on ``obj`` alone, never on which
    backend failed, so both backends raise the same error for the same value.
    """
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return ValueError("cannot encode as JSON: a string contains a lone surrogate")
        elif isinstance(value, float):
            if not math.isfinite(value):
                return ValueError(
                    f"cannot encode as JSON: {value!r} is not a number JSON can represent "
                    "(NaN, infinity)"
                )
        elif value is None or isinstance(value, (bool, int)):
            continue
        elif isinstance(value, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                return ValueError(f"cannot encode as JSON: nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(key, str) and _SURROGATE.search(key):
                        return ValueError("cannot encode as JSON: a key contains a lone surrogate")
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, enum.Enum):
            stack.append((value.value, depth))
        elif isinstance(value, decimal.Decimal):
            if not (value.is_finite() and math.isfinite(float(value))):
                return ValueError(
                    f"cannot encode as JSON: Decimal({_shown(value)}) is not a number JSON "
                    "can represent (NaN, infinity)"
                )
        elif (
            isinstance(value, _NATIVE_EXTRAS)
            or hasattr(value, "toDict")
            or hasattr(value, "__json__")
        ):
            continue  # ujson writes these itself
        else:
            try:
                stack.append((_extended(value, hook), depth + 1))
            except TypeError as refused:
                return refused
            except Exception as failed:  # a hook that failed in its own way
                return TypeError(
                    f"Object of type {type(value).__name__} is not JSON serializable: {failed}"
                )
    return ValueError(f"cannot encode as JSON: {error}")


# -- decoding ------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(
    text: str,
    _float: Callable[[str], float] = float,
    _isfinite: Callable[[float], bool] = math.isfinite,
) -> float:
    # Called for every float of every body: locals, not globals, on the hot path.
    number = _float(text)
    if _isfinite(number):
        return number
    shown = text if len(text) <= 20 else f"{text[:20]}..."
    raise ValueError(f"number {shown} is out of range")


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS + 1:
        raise ValueError(f"integer with more than {_MAX_INT_DIGITS} digits")
    return int(text)


# Interpreters with int_max_str_digits (3.9.14+, 3.10.7+, 3.11+) refuse long integers in
# the parser itself, at C speed; a Python hook for every integer would double the cost
# of decoding a document full of numbers.
_PARSE_INT: Optional[Callable[[str], int]] = (
    None if hasattr(sys, "get_int_max_str_digits") else _bounded_int
)


def _stdlib_depth_is_bounded() -> bool:
    """Whether the stdlib parser itself stops before :data:`MAX_DEPTH` levels.

    Up to Python 3.11 its nesting counts against the recursion limit (1000 by
    default). From 3.12 it has a separate, higher C limit (3.13 reads 20 times
    deeper), and an application may raise the recursion limit on any version.
    """
    return sys.version_info < (3, 12) and sys.getrecursionlimit() <= MAX_DEPTH


# Built once: json.loads() with hooks would build a decoder and its scanner per call.
_DECODER = json.JSONDecoder(
    parse_float=_finite_float, parse_int=_PARSE_INT, parse_constant=_reject_constant
)


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def decode(data: Union[bytes, str]) -> Any:
    """Decode one RFC 8259 JSON document (see the module documentation).

    :raises ValueError: with a message about the input (safe to show the client).

    .. versionadded:: 0.1
    """
    if isinstance(data, str):
        text = data
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"lone surrogate at position {error.start}") from None
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"invalid UTF-8 at byte {error.start}") from None
    if text.count("[") + text.count("{") > _SHALLOW_BRACKETS and not _stdlib_depth_is_bounded():
        # Deeper than the encoders can write back would turn bad input into a 500
        # when the value is echoed: ujson enforces its fixed limit first.
        try:
            ujson.loads(text)
        except ValueError as error:
            raise ValueError(str(error)) from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as error:
        if str(error).startswith("Exceeds the limit"):  # the interpreter's int_max_str_digits
            raise ValueError(f"integer with more than {_MAX_INT_DIGITS} digits") from None
        raise
    except json.JSONDecodeError as error:
        message = error.msg[:-3] if error.msg.endswith(" at") else error.msg
        raise ValueError(f"{message} at position {error.pos}") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise ValueError("a string contains an escaped lone surrogate")
    return value
