"""Path patterns: ``{name:converter}`` templates compiled to linear-time matchers.

Pattern rules
-------------
* ``{name}`` or ``{name:str}`` matches one path segment; ``{name:int}`` (a signed
  64-bit integer), ``{name:float}`` (a finite number written ``-12.5``, no exponent)
  and ``{name:uuid}`` match and convert; ``{name:path}`` matches the rest of the path,
  slashes included.
* Values are percent-decoded before conversion, and a value that would not convert
  to a valid value of its type gives a 404, like any path that does not match:

  - ``str``: never contains ``/`` (an encoded ``a%2Fb`` does not match: use ``path``),
    is never ``.`` or ``..``, never contains a control character (Unicode category
    Cc: C0, DEL and the C1 controls U+0080-U+009F);
  - ``path``: a relative path without ``.`` or ``..`` segments, not starting with
    ``/``, without control characters;
  - ``int`` beyond 64 bits, ``float`` that overflows to infinity: 404.
* Literal text matches what clients send: non-ASCII characters and characters such
  as spaces match their UTF-8 percent-encoding (``/café`` matches ``/caf%C3%A9``,
  hex digits in either case); ``:@!$&'()*+,;=`` match written as they are or encoded.
  ``?``, ``#``, ``%`` and control characters are refused when the pattern is registered.
* Two parameters may share a segment only when literal text separates them, as in
  ``{name}.{ext}`` or ``{w:int}x{h:int}``. A ``str`` parameter stops at the first
  occurrence of the character after it (``a.tar.gz`` gives ``name="a"``,
  ``ext="tar.gz"``); the separator after a ``str`` must be one of ``-._~`` or a letter
  from ``g`` to ``z``. A ``path`` parameter has its segment to itself, and a
  pattern has at most one.
* A pattern with a named group (``(?P<name>...)``) or starting with ``^`` is a raw
  regular expression and is used as it is (named groups only; values stay strings,
  and a value with a control character is refused with a 404 as for a template).
  **Its running time is the application's responsibility**: the toolkit's own
  patterns never backtrack more than linearly, a hand-written regex may.
* Every pattern is anchored at both ends.

Those rules keep matching linear in the length of the path: no converter regex has
nested or overlapping quantifiers, and no two parameters can trade characters, so a
60 KB path that almost matches costs one pass, not billions of backtracking steps.

Reverse URLs
------------
``Application.reverse_url(name, *values)`` percent-encodes each value for its
converter: a ``str`` value has its ``/`` (and every other reserved character)
encoded, a ``path`` value keeps its ``/``; ``int``, ``float`` and ``uuid`` values are
written canonically. A value the route would not match back raises ``ValueError``:
a ``str`` of ``.`` or ``..``, a ``path`` with a ``..`` segment, an ``int`` beyond 64
bits, a non-finite ``float``. So a reversed URL never gains a segment, never contains
a dot segment a browser would resolve, and always leads back to the same route.
"""

from __future__ import annotations

import decimal
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union
from urllib.parse import quote

from tornado.routing import URLSpec

from tornado_jsonservlet import tornado_adapter as tornado_internals

__all__ = [
    "CONVERTERS",
    "CompiledPattern",
    "Converter",
    "TemplateMatches",
    "TemplateURLSpec",
    "compile_pattern",
    "contains_control",
    "literal_regex",
]

_INT64 = 2**63

# Unicode category Cc: the C0 controls, DEL and the C1 controls (U+0080-U+009F,
# two UTF-8 bytes each, so a filter of ASCII controls misses them: U+0085 is a
# line break to many log viewers, U+009B starts a terminal escape sequence).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def contains_control(text: str) -> bool:
    """Whether ``text`` holds a Unicode control character (category Cc, C1 included)."""
    return _CONTROL.search(text) is not None


_INT_TEXT = re.compile(r"-?[0-9]+")
_FLOAT_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _to_int(text: str) -> int:
    if len(text) > 20:  # no int() on thousands of digits (quadratic before Python 3.11)
        raise ValueError("integer out of range")
    value = int(text)
    if not -_INT64 <= value < _INT64:
        raise ValueError("integer out of range")
    return value


def _int_to_url(value: Any) -> str:
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        value = _to_int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    if not -_INT64 <= value < _INT64:
        raise ValueError(f"{value} is beyond 64 bits")
    return str(value)


def _to_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _float_to_url(value: Any) -> str:
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value):
        value = _to_float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    # Positional notation: the converter's regex has no exponent.
    return format(decimal.Decimal(repr(number)), "f")


def _uuid_to_url(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return str(uuid.UUID(value))
    raise ValueError(f"{value!r} is not a UUID")


def _to_segment(text: str) -> str:
    if "/" in text or text in (".", "..") or not text or _CONTROL.search(text):
        raise ValueError("not a path segment")
    return text


def _to_relative_path(text: str) -> str:
    if not text or text.startswith("/") or _CONTROL.search(text):
        raise ValueError("not a relative path")
    if any(segment in (".", "..") for segment in text.split("/")):
        raise ValueError("dot segment")
    return text


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if value is None or isinstance(value, bool):
        raise ValueError(f"{value!r} is not text")
    return value if isinstance(value, str) else str(value)


def _segment_to_url(value: Any) -> str:
    return quote(_to_segment(_text(value)), safe="", errors="strict")


def _path_to_url(value: Any) -> str:
    return quote(_to_relative_path(_text(value)), safe="/", errors="strict")


@dataclass(frozen=True)
class Converter:
    """How one kind of path parameter is matched, converted and written back.

    ``regex`` has no groups and no nested or overlapping quantifiers, so matching it
    is linear. ``to_python`` gets the percent-decoded text and raises ``ValueError``
    for anything that is not a valid value (a 404). ``to_url`` returns the
    percent-encoded text of a value, or raises ``ValueError``.
    """

    name: str
    regex: str
    to_python: Callable[[str], Any]
    to_url: Callable[[Any], str]
    #: Characters the value may contain after its first one; None for "any".
    #: Decides which separators can follow it in a segment (see ``_regex_before``).
    inner_chars: Optional[frozenset[str]] = None
    #: A fixed-length regex can be followed by anything.
    fixed_length: bool = False
    spans_segments: bool = False


_DIGITS = frozenset("0123456789")

#: The converters, by name.
CONVERTERS: dict[str, Converter] = {
    converter.name: converter
    for converter in (
        Converter("str", r"[^/]+", _to_segment, _segment_to_url),
        Converter("int", r"-?[0-9]+", _to_int, _int_to_url, inner_chars=_DIGITS),
        Converter(
            "float",
            r"-?[0-9]+(?:\.[0-9]+)?",
            _to_float,
            _float_to_url,
            inner_chars=_DIGITS | {"."},
        ),
        Converter(
            "uuid",
            r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
            uuid.UUID,
            _uuid_to_url,
            fixed_length=True,
        ),
        Converter("path", r".+", _to_relative_path, _path_to_url, spans_segments=True),
    )
}

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GROUP_NAME = re.compile(r"\(\?P<[^>]+>")

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Allowed as they are in a path segment (RFC 3986 pchar), and sometimes percent-encoded
# by clients (JavaScript's encodeURIComponent encodes most of them).
_SUB_DELIMS = frozenset("!$&'()*+,;=:@")
_REFUSED_LITERALS = {
    "?": "'?' starts the query string, which patterns do not match",
    "#": "'#' starts the fragment, which clients never send",
    "%": "'%' is ambiguous: write characters as they are (non-ASCII included); "
    "the registry matches their percent-encoded form",
}
# After a str parameter, a separator must be a character that clients send as it is
# and that cannot appear in a percent-escape of another character (no hex digit).
_STR_SEPARATORS = frozenset("-._~ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ")


def _hex_class(digit: str) -> str:
    return digit if digit.isdigit() else f"[{digit.upper()}{digit.lower()}]"


def literal_regex(text: str) -> tuple[str, str]:
    """``(regex, encoded text)`` for literal template text.

    :raises ValueError: a character that cannot be part of a path template.
    """
    regex: list[str] = []
    encoded: list[str] = []
    for char in text:
        problem = _REFUSED_LITERALS.get(char)
        if problem is None and contains_control(char):
            problem = f"control character {char!r}"
        if problem is not None:
            raise ValueError(f"literal text may not contain {char!r}: {problem}")
        if char in _UNRESERVED or char == "/":
            regex.append(re.escape(char))
            encoded.append(char)
            continue
        try:
            data = char.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"literal text contains a lone surrogate {char!r}") from None
        escapes = [f"%{byte:02X}" for byte in data]
        escape_regex = "".join(f"%{_hex_class(e[1])}{_hex_class(e[2])}" for e in escapes)
        if char.isascii():
            # ASCII punctuation may arrive raw or encoded; the alternatives start
            # with different characters, so matching stays linear.
            regex.append(f"(?:{re.escape(char)}|{escape_regex})")
            encoded.append(char if char in _SUB_DELIMS else escapes[0])
        else:
            regex.append(escape_regex)
            encoded.append("".join(escapes))
    return "".join(regex), "".join(encoded)


@dataclass(frozen=True)
class _Slot:
    """A parameter in a compiled template, as ``reverse_url`` writes it."""

    name: str
    converter: Converter
    #: A character the value must not contain raw (the separator after it).
    escape: Optional[str] = None

    def to_url(self, value: Any) -> str:
        try:
            text = self.converter.to_url(value)
        except (ValueError, UnicodeError) as error:
            raise ValueError(
                f"parameter {self.name!r} ({self.converter.name}): cannot put {value!r} "
                f"in a URL: {error}"
            ) from None
        if self.escape is not None:
            text = text.replace(self.escape, f"%{ord(self.escape):02X}")
        return text


_Piece = Union[str, _Slot]


@dataclass
class CompiledPattern:
    regex: str
    converters: dict[str, Callable[[str], Any]]
    #: Encoded literal text and parameter slots, for reverse URLs; None for a raw regex.
    pieces: Optional[tuple[_Piece, ...]] = None

    @property
    def key(self) -> str:
        """The regex without group names: two patterns that differ only in their
        parameter names match the same paths."""
        return _GROUP_NAME.sub("(", self.regex)


def _regex_before(converter: Converter, separator: str) -> Optional[str]:
    """The converter's regex when ``separator`` follows in the same segment, or None
    when the value could contain the separator (the split would be ambiguous and
    matching could become quadratic)."""
    if converter.spans_segments:
        return None
    if converter.fixed_length:
        return converter.regex
    if converter.inner_chars is None:
        if separator not in _STR_SEPARATORS:
            return None
        return f"[^/{re.escape(separator)}]+"
    return None if separator in converter.inner_chars else converter.regex


def compile_pattern(pattern: str) -> CompiledPattern:
    """Turn a template or raw regex into an anchored regex (without the prefix).

    :raises ValueError: describing what is wrong with the pattern.
    """
    if not pattern.startswith(("/", "^")):
        raise ValueError("a pattern must start with '/' (or '^' for a raw regex)")
    if pattern.startswith("^") or "(?P<" in pattern:
        regex = pattern[1:] if pattern.startswith("^") else pattern
        regex = regex[:-1] if regex.endswith("$") else regex
        compiled = re.compile(regex)
        if compiled.groups != len(compiled.groupindex):
            raise ValueError("a raw regex may only use named groups (?P<name>...)")
        return CompiledPattern(regex, {})
    # Split into literal text and parameters.
    tokens: list[Union[str, tuple[str, Converter]]] = []
    names: set[str] = set()
    position = 0
    for match in _PLACEHOLDER.finditer(pattern):
        if match.start() > position:
            tokens.append(pattern[position : match.start()])
        name, _, kind = match.group(1).partition(":")
        kind = kind or "str"
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{{{match.group(1)}}}: parameter names must be identifiers")
        if kind not in CONVERTERS:
            raise ValueError(
                f"{{{match.group(1)}}}: unknown converter {kind!r} (have {', '.join(CONVERTERS)})"
            )
        if name in names:
            raise ValueError(f"parameter {name!r} appears twice")
        names.add(name)
        tokens.append((name, CONVERTERS[kind]))
        position = match.end()
    rest = pattern[position:]
    if (
        "{" in rest
        or "}" in rest
        or any("{" in t or "}" in t for t in tokens if isinstance(t, str))
    ):
        raise ValueError("unbalanced '{' or '}'")
    if rest:
        tokens.append(rest)
    if sum(1 for t in tokens if isinstance(t, tuple) and t[1].spans_segments) > 1:
        raise ValueError("a pattern may have only one {name:path} parameter")
    parts: list[str] = []
    pieces: list[_Piece] = []
    converters: dict[str, Callable[[str], Any]] = {}
    for index, token in enumerate(tokens):
        if isinstance(token, str):
            regex, encoded = literal_regex(token)
            parts.append(regex)
            pieces.append(encoded)
            continue
        name, converter = token
        # Tokens alternate: the pattern starts with literal text, and adjacent
        # parameters are refused, so tokens[index +- 2] are parameters.
        before = tokens[index - 1]
        after = tokens[index + 1] if index + 1 < len(tokens) else "/"
        if isinstance(before, tuple) or isinstance(after, tuple):
            raise ValueError(f"{{{name}}}: two parameters need literal text between them")
        previous_in_segment = "/" not in before and index >= 2
        next_in_segment = "/" not in after and index + 2 < len(tokens)
        if converter.spans_segments and (previous_in_segment or next_in_segment):
            raise ValueError(f"{{{name}:path}} must be the only parameter in its segment")
        escape = None
        regex = converter.regex
        if next_in_segment:
            separator = after[0]
            bounded = _regex_before(converter, separator)
            if bounded is None:
                raise ValueError(
                    f"{{{name}:{converter.name}}} followed by {after!r} and another "
                    "parameter in the same segment is ambiguous: separate them with '/', "
                    "or start the text between them with a character the value cannot "
                    "contain (after a str: one of -._~ or a letter from g to z)"
                )
            regex = bounded
            if converter.inner_chars is None:
                escape = separator
        parts.append(f"(?P<{name}>{regex})")
        pieces.append(_Slot(name, converter, escape))
        converters[name] = converter.to_python
    regex = "".join(parts)
    re.compile(regex)
    return CompiledPattern(regex, converters, tuple(pieces))


class TemplateMatches(tornado_internals.TemplatePathMatches):
    """Tornado's matcher, with ``reverse`` writing each value for its converter.

    ``Application.reverse_url`` calls ``rule.matcher.reverse``; Tornado's own would
    leave ``/`` and ``..`` in a value as they are. Tracing tools see the route as
    its template with the converters left out (``/users/{user_id}``): a name with
    one value per route, not per URL.
    """

    def __init__(self, regex: re.Pattern[str], label: str, pieces: tuple[_Piece, ...]) -> None:
        self.route_template = "".join(
            piece if isinstance(piece, str) else f"{{{piece.name}}}" for piece in pieces
        )
        super().__init__(regex)
        self._label = label
        self._pieces = pieces
        self._slots = [piece for piece in pieces if isinstance(piece, _Slot)]

    def reverse(self, *args: Any) -> Optional[str]:
        if len(args) != len(self._slots):
            names = ", ".join(slot.name for slot in self._slots) or "none"
            raise ValueError(
                f"{self._label} takes {len(self._slots)} parameter(s) ({names}), got {len(args)}"
            )
        values = iter(args)
        return "".join(
            piece if isinstance(piece, str) else piece.to_url(next(values))
            for piece in self._pieces
        )


class TemplateURLSpec(URLSpec):
    """A ``URLSpec`` whose reverse URL is encoded per converter (for a pattern
    compiled from a template: ``pieces``), and whose matcher hands ``route_info``
    to the handler through the request (see ``tornado_adapter.route_info``)."""

    def __init__(
        self,
        pattern: str,
        handler: Any,
        kwargs: dict[str, Any],
        name: Optional[str],
        pieces: Optional[tuple[_Piece, ...]],
        route_info: Any = None,
    ) -> None:
        super().__init__(pattern, handler, kwargs, name)
        matcher = (
            TemplateMatches(self.regex, name or "route", pieces)
            if pieces is not None
            else tornado_internals.TemplatePathMatches(self.regex)
        )
        matcher.routes_by_body = tornado_internals.streams_only_sent_bodies(self.target)
        matcher.route_info = route_info
        self.matcher = matcher
