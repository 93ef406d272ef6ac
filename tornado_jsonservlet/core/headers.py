"""Strict parsing of the request headers the toolkit reads, and validation of the
response headers it builds from application text.

Headers are client input, and Python's conveniences accept far more than HTTP does:
``"²".isdigit()`` is true, ``int()`` and ``float()`` take Unicode digits, underscores,
``"nan"`` and ``"inf"``. Each of those gaps once turned a header into a 500. Here every
value must be ASCII and of bounded length, and every regular expression is free of
nested or overlapping quantifiers, so parsing is linear in the size of the header
(never more than Tornado's 64 KB header limit) and cannot stall the event loop.

Response headers go the other way: text from the application (a redirect target, an
error's ``headers=``, CORS settings) is checked when it is configured, so a response
never fails half-way because one of its headers cannot be sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple, Optional

if TYPE_CHECKING:
    import tornado.httputil

__all__ = [
    "CONTENT_LENGTH_CAP",
    "MAX_ACCEPT_LENGTH",
    "MAX_ACCEPT_RANGES",
    "MAX_MEDIA_TYPE_LENGTH",
    "MediaRange",
    "MediaType",
    "check_header",
    "header_or_none",
    "header_value_problem",
    "is_token",
    "parse_accept",
    "parse_content_length",
    "parse_media_type",
]

#: A ``Content-Length`` above this is reported as this (no body limit comes close).
CONTENT_LENGTH_CAP = 10**18
#: Longest ``Content-Type`` accepted; real ones are well under 200 characters.
MAX_MEDIA_TYPE_LENGTH = 1024
#: An ``Accept`` header longer than this is ignored (browsers send about 150 characters).
MAX_ACCEPT_LENGTH = 4096
#: Only this many media ranges of an ``Accept`` header are considered.
MAX_ACCEPT_RANGES = 64
_MAX_PARAMETERS = 16

# RFC 9110 5.6.2: token = 1*tchar
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = re.compile(f"{_TCHAR}+")
_DIGITS = re.compile(r"[0-9]+")
# type "/" subtype, then parameters: *( OWS ";" OWS [ name "=" ( token / quoted-string ) ] ).
# The alternatives inside a quoted string cannot both match one character (the first
# excludes the backslash), so the engine never has two ways to read the same input.
_MEDIA = re.compile(f"({_TCHAR}+)/({_TCHAR}+)")
_PARAMETER = re.compile(
    rf'[ \t]*;[ \t]*(?:({_TCHAR}+)=(?:({_TCHAR}+)|"((?:[\t !#-\[\]-~]|\\[\t -~])*)"))?'
)
_TRAILING_SPACE = re.compile(r"[ \t]*")
_QUOTED_PAIR = re.compile(r"\\([\t -~])")
# RFC 9110 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# Field values the toolkit sends: visible ASCII, space and tab. Tornado 6.4 lets DEL
# through and fails only when a non-Latin-1 character reaches the socket; 6.6 refuses
# both. One strict rule gives the same result on every version.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")


class MediaType(NamedTuple):
    """A parsed ``Content-Type``: lower-case type and subtype, parameters by lower-case name."""

    type: str
    subtype: str
    parameters: dict[str, str]

    @property
    def essence(self) -> str:
        return f"{self.type}/{self.subtype}"


class MediaRange(NamedTuple):
    """One range of an ``Accept`` header, with its weight (0 to 1)."""

    type: str
    subtype: str
    q: float


def header_or_none(headers: tornado.httputil.HTTPHeaders, name: str) -> Optional[str]:
    """``headers.get(name)``, without its cost for an absent header.

    ``HTTPHeaders.get`` is ``Mapping.get``: it raises ``KeyError`` inside and catches
    it, which for a header most requests lack (``Content-Length`` on a GET, ``Origin``)
    costs more than the rest of the look-up. A membership test first does not.
    """
    return headers[name] if name in headers else None  # noqa: SIM401 (see above)


def parse_content_length(value: str) -> int:
    """The body size a ``Content-Length`` declares.

    :raises ValueError: anything but ASCII digits (RFC 9110 8.6). Signs, spaces, lists
        (``"2, 2"``) and Unicode digits (``"²"``, ``"٣"``) are all refused.
        So is a value padded beyond 20 characters with leading zeros.
    :returns: the size, or :data:`CONTENT_LENGTH_CAP` for anything larger, however many
        digits it has, so a 5,000-digit value costs no big-integer conversion.
    """
    if _DIGITS.fullmatch(value) is None:
        raise ValueError("Content-Length must be a number written in ASCII digits")
    significant = value.lstrip("0")
    if len(significant) > 18:
        return CONTENT_LENGTH_CAP
    if len(value) > 20:
        # Valid HTTP, but Tornado refuses more than 4300 digits without a JSON body,
        # and no client pads a length with zeros: refused here, with one.
        raise ValueError("Content-Length has too many leading zeros")
    return int(significant or "0")


def _parameters(text: str, start: int) -> Optional[dict[str, str]]:
    """Parameters from ``text[start:]``, or None if malformed or too many."""
    parameters: dict[str, str] = {}
    count = 0
    position = start
    end = len(text)
    while position < end:
        match = _PARAMETER.match(text, position)
        if match is None or match.end() == position:
            tail = _TRAILING_SPACE.match(text, position)
            if tail is not None and tail.end() == end:
                break
            return None
        position = match.end()
        name = match.group(1)
        if name is None:
            continue  # an empty parameter: "text/plain;" or ";;" is allowed
        count += 1
        if count > _MAX_PARAMETERS:
            return None
        quoted = match.group(3)
        value = match.group(2) if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted)
        parameters.setdefault(name.lower(), value)
    return parameters


def parse_media_type(value: Optional[str]) -> Optional[MediaType]:
    """Parse a ``Content-Type`` value; None when it is missing or malformed.

    Malformed means: longer than :data:`MAX_MEDIA_TYPE_LENGTH`, not ASCII, not
    ``type/subtype`` made of tokens, or a parameter that is neither a token nor a
    quoted string.
    """
    if not value or len(value) > MAX_MEDIA_TYPE_LENGTH or not value.isascii():
        return None
    text = value.strip(" \t")
    match = _MEDIA.match(text)
    if match is None:
        return None
    parameters = _parameters(text, match.end())
    if parameters is None:
        return None
    return MediaType(match.group(1).lower(), match.group(2).lower(), parameters)


def _media_ranges(value: str) -> Iterator[MediaRange]:
    items = value.split(",", MAX_ACCEPT_RANGES)[:MAX_ACCEPT_RANGES]
    for item in items:
        text = item.strip(" \t")
        if not text:
            continue  # RFC 9110 5.6.1: empty list elements are ignored
        match = _MEDIA.match(text)
        if match is None:
            continue
        kind, subtype = match.group(1).lower(), match.group(2).lower()
        if kind == "*" and subtype != "*":
            continue
        parameters = _parameters(text, match.end())
        if parameters is None:
            continue
        weight = parameters.get("q")
        if weight is None:
            q = 1.0
        elif _QVALUE.fullmatch(weight):
            q = float(weight)
        else:
            q = 0.0  # an unreadable weight never makes a range preferred
        yield MediaRange(kind, subtype, q)


def parse_accept(value: Optional[str]) -> list[MediaRange]:
    """The media ranges of an ``Accept`` header that can be read.

    Bounded: a header over :data:`MAX_ACCEPT_LENGTH` characters or containing
    non-ASCII text is ignored as a whole (an empty list: no preference), only the first
    :data:`MAX_ACCEPT_RANGES` ranges count, and a malformed range is skipped.
    """
    if not value or len(value) > MAX_ACCEPT_LENGTH or not value.isascii():
        return []
    return list(_media_ranges(value))


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 9110 token (a valid header name, method, parameter name)."""
    return _TOKEN.fullmatch(text) is not None


def header_value_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be sent as a header value, or None if it can."""
    if _FIELD_VALUE.fullmatch(value) is not None:
        return None
    for index, char in enumerate(value):
        if _FIELD_VALUE.fullmatch(char) is None:
            if char in "\r\n\0":
                kind = "CR, LF or NUL"
            elif ord(char) < 0x20 or char == "\x7f":
                kind = f"control character {char!r}"
            else:
                kind = f"non-ASCII character {char!r}"
            return f"contains a {kind} at position {index}"
    return None  # pragma: no cover - the fullmatch above failed for some character


def check_header(name: str, value: object) -> str:
    """``value`` as the text to send in header ``name``.

    :raises ValueError: the name is not a token or the value is not a string of visible
        ASCII characters, spaces and tabs; the message names the header and the problem.
    """
    if not isinstance(name, str) or not is_token(name):
        raise ValueError(f"invalid header name {name!r}: must be an RFC 9110 token")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"header {name}: value must be a string, not {type(value).__name__}")
    text = str(value)
    problem = header_value_problem(text)
    if problem is not None:
        raise ValueError(f"header {name}: value {text[:60]!r} {problem}")
    return text
