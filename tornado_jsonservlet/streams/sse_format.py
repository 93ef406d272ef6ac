"""The server-sent events wire format: events out, ``Last-Event-ID`` in.

Kept apart from the handler mixins so that it can be tested (and fuzzed) without a
server. Every field is checked before a byte is produced, because the format has no
escaping: a line break inside ``event`` or ``id`` would end the field and start a
new one of the sender's choosing, so it is refused (``ValueError``), never written.

Event data needs no refusal: the WHATWG parser treats CR, LF and CRLF alike as
line breaks, so a string is split on all three and sent as one ``data:`` line per
line. The browser joins them with LF, which gives the string back exactly, apart
from CRLF and lone CR arriving as LF (the format cannot carry them).

``Last-Event-ID`` comes from the client and is treated as hostile: it is bounded in
length, decoded as UTF-8 (the encoding browsers send it in), and refused when it
holds a character that a server could never have sent as an id.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Union

from tornado_jsonservlet.jsonio.codec import encode

__all__ = [
    "HEARTBEAT",
    "MAX_EVENT_ID_LENGTH",
    "ServerSentEvent",
    "format_comment",
    "format_event",
    "parse_last_event_id",
]

#: Longest event id, in characters, that is sent or accepted back in ``Last-Event-ID``.
MAX_EVENT_ID_LENGTH = 256

#: The heartbeat: an empty comment, which every client ignores.
HEARTBEAT = b":\n\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FIELD_BREAK = re.compile(r"[\r\n]")
_ID_FORBIDDEN = re.compile(r"[\r\n\x00]")


def _data_lines(data: Any) -> list[str]:
    if isinstance(data, str):
        return _LINE_BREAK.split(data)
    # Anything else is JSON, which never contains a raw line break.
    return [encode(data).decode("utf-8")]


def format_event(
    data: Any,
    *,
    event: Optional[str] = None,
    id: Optional[Union[str, int]] = None,  # the SSE field's name
    retry: Optional[int] = None,
) -> bytes:
    """One event, ready to write: ``event:``, ``id:``, ``retry:``, ``data:`` lines and a blank line.

    A ``str`` is sent as text, split into ``data:`` lines at every CR, LF or CRLF;
    any other value (dict, list, number, ``True``, ``None``) is sent as JSON.

    :raises ValueError: ``event`` containing CR or LF; ``id`` containing CR, LF or
        NUL, or longer than :data:`MAX_EVENT_ID_LENGTH`; ``retry`` negative; a string
        that is not valid Unicode (a lone surrogate).
    :raises TypeError: data that JSON cannot represent, or fields of the wrong type.
    """
    lines = []
    if event is not None:
        if not isinstance(event, str):
            raise TypeError(f"event must be a str, not {type(event).__name__}")
        if _FIELD_BREAK.search(event):
            raise ValueError("event must not contain CR or LF")
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {_checked_id(id)}")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int):
            raise TypeError(f"retry must be an int (milliseconds), not {type(retry).__name__}")
        if retry < 0:
            raise ValueError("retry must not be negative")
        lines.append(f"retry: {retry}")
    # One space after the colon: the parser removes exactly one, so data that
    # starts with a space keeps it.
    lines.extend(f"data: {line}" for line in _data_lines(data))
    lines.append("\n")
    return "\n".join(lines).encode("utf-8")


class ServerSentEvent:
    """An event with its fields, checked and encoded once when it is created.

    Publish one of these to an
    :class:`~tornado_jsonservlet.broadcast.InMemoryBroadcaster` when subscribers
    relay a channel as server-sent events: every subscriber then sends the same
    bytes, and a bad field is a ``ValueError`` at the publisher, not at each
    subscriber. (A ``RedisBroadcaster`` carries JSON, so publish plain messages
    there.) ``send_event`` accepts one too, without other fields.

    :raises ValueError, TypeError: as ``format_event()``.

    .. versionadded:: 0.1
    """

    __slots__ = ("data", "encoded", "event", "id", "retry")

    data: Any
    event: Optional[str]
    id: Optional[Union[str, int]]
    retry: Optional[int]
    #: The event on the wire.
    encoded: bytes

    def __init__(
        self,
        data: Any,
        *,
        event: Optional[str] = None,
        id: Optional[Union[str, int]] = None,  # the SSE field's name
        retry: Optional[int] = None,
    ) -> None:
        encoded = format_event(data, event=event, id=id, retry=retry)
        for name, value in (("data", data), ("event", event), ("id", id), ("retry", retry)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "encoded", encoded)

    def __setattr__(self, name: str, value: Any) -> None:
        # Immutable, so that ``encoded`` always matches the fields.
        raise AttributeError(f"ServerSentEvent is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ServerSentEvent is immutable; cannot delete {name!r}")

    def __repr__(self) -> str:
        return f"ServerSentEvent({self.data!r}, event={self.event!r}, id={self.id!r})"


def _checked_id(value: Union[str, int]) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"id must be a str or int, not {type(value).__name__}")
    text = str(value)
    if _ID_FORBIDDEN.search(text):
        raise ValueError("id must not contain CR, LF or NUL")
    if len(text) > MAX_EVENT_ID_LENGTH:
        raise ValueError(f"id must be at most {MAX_EVENT_ID_LENGTH} characters")
    return text


def format_comment(text: str = "") -> bytes:
    """A comment block (``: text``), ignored by clients; used to keep a stream alive.

    :raises ValueError: ``text`` containing CR or LF.
    """
    if _FIELD_BREAK.search(text):
        raise ValueError("a comment must not contain CR or LF")
    return f":{' ' if text else ''}{text}\n\n".encode()


def parse_last_event_id(raw: Optional[str]) -> Optional[str]:
    """The event id a reconnecting client sent, or ``None`` if it sent none.

    ``raw`` is the header as Tornado gives it (bytes decoded as Latin-1). Browsers
    send the id as UTF-8, so it is re-decoded; the result is an id that
    ``format_event()`` could have sent.

    :raises ValueError: a value longer than :data:`MAX_EVENT_ID_LENGTH`, not UTF-8,
        or containing CR, LF or NUL. The message is safe to show the client.
    """
    if raw is None or raw == "":
        return None
    # A UTF-8 character takes up to 4 bytes; refuse before decoding anything large.
    if len(raw) > 4 * MAX_EVENT_ID_LENGTH:
        raise ValueError(f"Last-Event-ID is longer than {MAX_EVENT_ID_LENGTH} characters")
    try:
        value = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ValueError("Last-Event-ID is not valid UTF-8") from None
    if len(value) > MAX_EVENT_ID_LENGTH:
        raise ValueError(f"Last-Event-ID is longer than {MAX_EVENT_ID_LENGTH} characters")
    if _ID_FORBIDDEN.search(value):
        raise ValueError("Last-Event-ID must not contain CR, LF or NUL")
    return value
