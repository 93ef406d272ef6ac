"""The servlet registry: path patterns in, ``tornado.web.URLSpec``s out.

::

    registry = ServletRegistry()
    registry.register(UserServlet)                          # PATTERNS from the class
    registry.register(ItemServlet, ["/items/{item_id:int}"], store=store)

    @registry.route("/health")
    def health(handler):
        return {"ok": True}

    app = tornado.web.Application(registry.urlspecs("/api/v1") + [(r"/", HomeHandler)])

Pattern rules
-------------
* ``{name}`` or ``{name:str}`` matches one path segment; ``{name:int}`` (a signed
  64-bit integer), ``{name:float}`` (a finite number written ``-12.5``, no exponent)
  and ``{name:uuid}`` match and convert; ``{name:path}`` matches the rest of the path,
  slashes included.
* Values are percent-decoded before conversion, and a value that would not convert
  to a valid value of its type gives a 404, like any path that does not match:

  - ``str``: never contains ``/`` (an encoded ``a%2Fb`` does not match: use ``path``),
    is never ``.`` or ``..``, never contains a control character;
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
  regular expression and is used as it is (named groups only; values stay strings).
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

Everything that can be wrong with a registration is reported when it is made, or
at ``urlspecs()`` at the latest, never while serving: a duplicate
``(method, pattern)`` or name, an invalid pattern, unknown ``initialize()`` arguments,
and a servlet whose ``error_template`` names a file the application settings
cannot provide (``urlspecs(settings=...)``).

Types: ``urlspecs()`` returns a list of ``UrlRule``, the element type of the rule
lists ``tornado.web.Application`` accepts, so ``urlspecs() + other_rules``,
``other_rules + urlspecs()`` and ``[*urlspecs(), ...]`` type-check without a cast;
``route`` returns the decorated function unchanged, with its type.
"""

from __future__ import annotations

import decimal
import functools
import inspect
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar, Union, overload
from urllib.parse import quote

import tornado.web
from tornado.routing import Matcher, PathMatches, Rule, URLSpec

from tornado_jsonservlet.errors.exceptions import NotFound
from tornado_jsonservlet.production.metrics import ServletMetrics
from tornado_jsonservlet.routing.servlets import (
    ROUTE_KWARG,
    SERVLET_METHODS,
    JsonServlet,
    ServletRoute,
    implemented_methods,
)

__all__ = ["CONVERTERS", "Converter", "ServletRegistry", "UrlRule", "UrlRules"]

#: One entry of the rule list ``tornado.web.Application`` accepts: the same union as
#: ``tornado.routing._RuleList``'s elements (Tornado 6.4 to 6.6), spelled out because
#: that alias is private.
UrlRule = Union[
    Rule,
    list[Any],
    tuple[Union[str, Matcher], Any],
    tuple[Union[str, Matcher], Any, dict[str, Any]],
    tuple[Union[str, Matcher], Any, dict[str, Any], str],
]

_Route = TypeVar("_Route", bound=Callable[..., Any])
_Other = TypeVar("_Other")


class UrlRules(list[UrlRule]):
    """The list ``urlspecs()`` returns: a plain list of rules that also concatenates,
    for type checkers, with rule lists whose element type was inferred.

    ``[(r"/", Home)]`` assigned to a variable is inferred as
    ``list[tuple[str, type[Home]]]``, which a plain ``list[UrlRule]`` cannot be
    added to (lists are invariant), although every element is a valid rule.
    ``+`` here accepts any iterable of rules, on either side.
    """

    @overload  # type: ignore[override]  # deliberately wider: any iterable of rules
    def __add__(self, other: Iterable[UrlRule]) -> UrlRules: ...

    @overload
    def __add__(self, other: list[_Other]) -> list[Union[_Other, UrlRule]]: ...

    def __add__(self, other: Iterable[Any]) -> Any:
        return UrlRules([*self, *other])

    def __radd__(self, other: Iterable[UrlRule]) -> UrlRules:
        return UrlRules([*other, *self])


_INT64 = 2**63
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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


def _literal(text: str) -> tuple[str, str]:
    """``(regex, encoded text)`` for literal template text.

    :raises ValueError: a character that cannot be part of a path template.
    """
    regex: list[str] = []
    encoded: list[str] = []
    for char in text:
        problem = _REFUSED_LITERALS.get(char)
        if problem is None and (ord(char) < 0x20 or char == "\x7f"):
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
class _CompiledPattern:
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


def compile_pattern(pattern: str) -> _CompiledPattern:
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
        return _CompiledPattern(regex, {})
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
            regex, encoded = _literal(token)
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
    return _CompiledPattern(regex, converters, tuple(pieces))


class _TemplateMatches(PathMatches):
    """Tornado's matcher, with ``reverse`` writing each value for its converter.

    ``Application.reverse_url`` calls ``rule.matcher.reverse``; Tornado's own would
    leave ``/`` and ``..`` in a value as they are.
    """

    def __init__(self, regex: re.Pattern[str], label: str, pieces: tuple[_Piece, ...]) -> None:
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


class _TemplateURLSpec(URLSpec):
    """A ``URLSpec`` whose reverse URL is encoded per converter."""

    def __init__(
        self,
        pattern: str,
        handler: Any,
        kwargs: dict[str, Any],
        name: str,
        pieces: tuple[_Piece, ...],
    ) -> None:
        super().__init__(pattern, handler, kwargs, name)
        self.matcher = _TemplateMatches(self.regex, name, pieces)


@dataclass
class _Endpoint:
    servlet: type[tornado.web.RequestHandler]
    pattern: str
    compiled: _CompiledPattern
    name: str
    init_kwargs: dict[str, Any] = field(default_factory=dict)


class _UnrecognizedServlet(JsonServlet):
    """The catch-all: any unmatched path under the prefix is a JSON 404."""

    servlet_name = "unrecognized"

    async def _dispatch(self, method: str, raw_params: Any) -> None:
        raise NotFound("Unrecognized request", "UNRECOGNIZED")

    async def options(self, *args: str, **kwargs: str) -> None:
        raise NotFound("Unrecognized request", "UNRECOGNIZED")


class ServletRegistry:
    """Collects servlets and their patterns; :meth:`urlspecs` builds the URL table."""

    def __init__(self, *, metrics: Optional[ServletMetrics] = None) -> None:
        self.metrics = metrics
        self._endpoints: list[_Endpoint] = []
        self._by_key: dict[tuple[str, str], _Endpoint] = {}  # (method, pattern key) -> endpoint
        self._by_name: dict[str, _Endpoint] = {}

    def register(
        self,
        servlet_cls: type[tornado.web.RequestHandler],
        patterns: Optional[Iterable[str]] = None,
        *,
        name: Optional[str] = None,
        **init_kwargs: Any,
    ) -> None:
        """Serve ``servlet_cls`` at ``patterns`` (default: its ``PATTERNS``).

        ``init_kwargs`` go to the servlet's ``initialize()``. The first pattern's URLSpec
        is named ``name`` (default: the servlet's ``servlet_name``); further patterns
        are named ``name#2``, ``name#3``...

        :raises ValueError: no patterns, an invalid pattern, a ``(method, pattern)`` or
            name already registered.
        :raises TypeError: ``init_kwargs`` that ``initialize()`` does not accept.
        """
        label = getattr(servlet_cls, "servlet_name", servlet_cls.__name__)
        pattern_list = list(
            patterns if patterns is not None else getattr(servlet_cls, "PATTERNS", ())
        )
        if isinstance(patterns, str):
            raise TypeError("patterns must be a list of strings, not a single string")
        if not pattern_list:
            raise ValueError(f"{label}: no patterns given and no PATTERNS on the class")
        try:
            inspect.signature(servlet_cls.initialize).bind(None, **init_kwargs)
        except TypeError as error:
            raise TypeError(
                f"{label}: initialize() does not accept {sorted(init_kwargs)}: {error}"
            ) from None
        base_name = name or label
        endpoints = []
        for index, pattern in enumerate(pattern_list):
            try:
                compiled = compile_pattern(pattern)
            except (ValueError, re.error) as error:
                raise ValueError(f"{label}: invalid pattern {pattern!r}: {error}") from None
            endpoint_name = base_name if index == 0 else f"{base_name}#{index + 1}"
            endpoints.append(
                _Endpoint(servlet_cls, pattern, compiled, endpoint_name, dict(init_kwargs))
            )
        self._add(endpoints, implemented_methods(servlet_cls))

    def route(
        self, template: str, methods: Sequence[str] = ("GET",), *, name: Optional[str] = None
    ) -> Callable[[_Route], _Route]:
        """Serve a plain function, called as ``fn(handler, **params)``.

        It returns like ``on_GET``. Several functions may share one template with
        different methods. The function itself is returned unchanged, and it is the
        servlet's ``on_<METHOD>`` as it is: nothing is wrapped, so marks such as
        ``@cancellable`` apply whether they are put below or above ``@route``. A
        callable that is not a plain function (a ``functools.partial``, a bound
        method) is wrapped with ``functools.wraps``; one without a ``__name__``
        needs ``name`` unless it joins a template already served.

        :raises TypeError: ``fn`` starts a servlet, has no ``__name__`` and no
            ``name`` is given.
        """
        wanted = tuple(method.upper() for method in methods)
        unknown = [m for m in wanted if m not in SERVLET_METHODS]
        if unknown or not wanted:
            raise ValueError(
                f"route {template!r}: methods must be among {SERVLET_METHODS}, got {methods!r}"
            )

        def decorator(fn: _Route) -> _Route:
            if self._merge_route(template, wanted, fn, name):
                return fn
            servlet_name = name or getattr(fn, "__name__", None)
            if not servlet_name:
                raise TypeError(f"route {template!r}: {fn!r} has no __name__: pass name=...")
            namespace: dict[str, Any] = {
                "servlet_name": servlet_name,
                "__doc__": fn.__doc__,
                "_from_route": True,
            }
            for method in wanted:
                namespace[f"on_{method}"] = _route_method(fn)
            servlet = type(f"Route_{servlet_name}", (JsonServlet,), namespace)
            servlet.__module__ = fn.__module__
            self.register(servlet, [template], name=servlet_name)
            return fn

        return decorator

    def _merge_route(
        self, template: str, methods: tuple[str, ...], fn: Callable[..., Any], name: Optional[str]
    ) -> bool:
        """Add ``fn`` to the route servlet already serving ``template``, if there is one."""
        try:
            regex = compile_pattern(template).key
        except (ValueError, re.error):
            return False  # register() reports it with the servlet's name
        endpoint = next((e for e in self._endpoints if e.compiled.key == regex), None)
        if endpoint is None or not getattr(endpoint.servlet, "_from_route", False):
            return False
        if name is not None and name != endpoint.name:
            raise ValueError(f"route {template!r} is already named {endpoint.name!r}")
        for method in methods:
            existing = self._by_key.get((method, regex))
            if existing is not None:
                raise ValueError(
                    f"{method} {template!r} is registered twice: by {_label(existing.servlet)} "
                    f"and by {getattr(fn, '__name__', None) or repr(fn)}"
                )
        servlet: Any = endpoint.servlet
        for method in methods:
            setattr(servlet, f"on_{method}", _route_method(fn))
            self._by_key[(method, regex)] = endpoint
        servlet.allowed_methods = implemented_methods(servlet)
        return True

    def urlspecs(
        self,
        prefix: str = "",
        *,
        catch_all: bool = True,
        settings: Optional[Mapping[str, Any]] = None,
    ) -> UrlRules:
        """The URL table: one URLSpec per pattern, then a JSON-404 catch-all under ``prefix``.

        With ``prefix=""`` the catch-all matches every path, so put other rules first
        or pass ``catch_all=False``.

        ``settings`` are the application settings the table will be served with.
        Servlets whose error rendering depends on them (an ``error_template`` naming
        a file under ``template_path``) are checked against them here, and such a
        servlet without ``settings`` is an error too, so that a missing template
        is found now rather than at the first error response.

        :raises ValueError: an invalid prefix, or a servlet that the settings
            cannot serve.
        """
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"prefix must start with '/' and not end with it: {prefix!r}")
        self._check_settings(settings)
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix may not contain parameters: {prefix!r}")
        try:
            escaped, encoded_prefix = _literal(prefix)
        except ValueError as error:
            raise ValueError(f"invalid prefix {prefix!r}: {error}") from None
        specs = UrlRules()
        for endpoint in self._endpoints:
            route = ServletRoute(
                pattern=endpoint.pattern,
                converters=endpoint.compiled.converters,
                metrics=self.metrics,
            )
            regex = f"^{escaped}{endpoint.compiled.regex}$"
            kwargs = {ROUTE_KWARG: route, **endpoint.init_kwargs}
            pieces = endpoint.compiled.pieces
            if pieces is None:
                specs.append(URLSpec(regex, endpoint.servlet, kwargs, name=endpoint.name))
            else:
                specs.append(
                    _TemplateURLSpec(
                        regex, endpoint.servlet, kwargs, endpoint.name, (encoded_prefix, *pieces)
                    )
                )
        if catch_all:
            route = ServletRoute(pattern=f"{prefix}/*", metrics=self.metrics)
            specs.append(
                URLSpec(f"^{escaped}(?:/.*)?$", _UnrecognizedServlet, {ROUTE_KWARG: route})
            )
        return specs

    def _check_settings(self, settings: Optional[Mapping[str, Any]]) -> None:
        for servlet in dict.fromkeys(endpoint.servlet for endpoint in self._endpoints):
            check: Optional[Callable[[Mapping[str, Any]], None]] = getattr(
                servlet, "check_settings", None
            )
            if check is None:
                continue
            needs: Callable[[], bool] = getattr(servlet, "needs_template_path", lambda: False)
            if settings is None and needs():
                raise ValueError(
                    f"{_label(servlet)}.error_template names a template file: pass the "
                    "application settings, urlspecs(..., settings=settings), so that "
                    "template_path is checked now rather than at the first error"
                )
            if settings is not None:
                check(settings)

    def _add(self, endpoints: list[_Endpoint], methods: tuple[str, ...]) -> None:
        keys = [endpoint.compiled.key for endpoint in endpoints]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{_label(endpoints[0].servlet)}: the same pattern is given twice")
        for endpoint in endpoints:
            for method in methods:
                existing = self._by_key.get((method, endpoint.compiled.key))
                if existing is not None:
                    if method in SERVLET_METHODS:
                        raise ValueError(
                            f"{method} {endpoint.pattern!r} is registered twice: by "
                            f"{_label(existing.servlet)} and by {_label(endpoint.servlet)}"
                        )
                    raise ValueError(
                        f"{endpoint.pattern!r} is already served by {_label(existing.servlet)}; "
                        "one pattern maps to one servlet "
                        f"(add the methods of {_label(endpoint.servlet)} to it)"
                    )
            if endpoint.name in self._by_name:
                raise ValueError(
                    f"name {endpoint.name!r} is used by both "
                    f"{_label(self._by_name[endpoint.name].servlet)} and {_label(endpoint.servlet)}"
                )
        for endpoint in endpoints:
            self._endpoints.append(endpoint)
            self._by_name[endpoint.name] = endpoint
            for method in methods:
                self._by_key[(method, endpoint.compiled.key)] = endpoint


def _route_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What a servlet built by ``route()`` has as ``on_<METHOD>``: ``fn`` itself.

    A plain function put in a class becomes a method, called as ``fn(handler,
    **params)``, so it needs no wrapper: introspection (``__qualname__``,
    ``inspect.iscoroutinefunction``, ``__code__``) and cancel marks, even marks set
    after ``route()``, see the user's own function. Other callables (a
    ``functools.partial``, a bound method, an object with ``__call__``) would not be
    bound to the handler, so they get a ``functools.wraps`` wrapper: ``__wrapped__``
    is ``fn``, its name and marks are copied (as they are when ``route()`` runs), and
    it is ``async def`` when ``fn`` is a coroutine function. A callable without a
    ``__qualname__`` of its own (a partial, an object) lends the wrapper the one of
    the function it calls.
    """
    if inspect.isfunction(fn):
        return fn
    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):

        async def call_async(self: JsonServlet, **params: Any) -> Any:
            return await fn(self, **params)

        wrapper = call_async
    else:

        def call(self: JsonServlet, **params: Any) -> Any:
            return fn(self, **params)

        wrapper = call
    functools.update_wrapper(wrapper, fn)
    if not hasattr(fn, "__qualname__"):
        inner = fn.func if isinstance(fn, functools.partial) else type(fn).__call__
        for attribute in ("__name__", "__qualname__"):
            if not hasattr(fn, attribute) and hasattr(inner, attribute):
                setattr(wrapper, attribute, getattr(inner, attribute))
    return wrapper


def _label(servlet: type) -> str:
    return str(getattr(servlet, "servlet_name", servlet.__name__))
