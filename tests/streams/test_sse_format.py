"""The SSE wire format, checked against a WHATWG-style parser and fuzzed."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.sse_client import parse_events
from tornado_jsonservlet.streams.sse_format import (
    MAX_EVENT_ID_LENGTH,
    ServerSentEvent,
    format_comment,
    format_event,
    parse_last_event_id,
)


def test_lines_are_split_at_cr_lf_and_crlf():
    assert format_event("a\rb\nc\r\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert format_event("") == b"data: \n\n"
    assert format_event("\n") == b"data: \ndata: \n\n"


def test_fields_and_json():
    assert format_event({"k": "v"}, event="update", id=7, retry=0) == (
        b'event: update\nid: 7\nretry: 0\ndata: {"k":"v"}\n\n'
    )
    assert format_event(None) == b"data: null\n\n"
    assert format_event([1, "\n"]) == b'data: [1,"\\n"]\n\n'  # JSON escapes the break


#: Fields that no event may carry: injected line breaks and NUL, oversized ids
#: (60 KB, and non-ASCII one character over), lone surrogates, unencodable or
#: non-finite data, and values of the wrong type.
REFUSED_FIELDS = [
    ({"event": "a\nb"}, ValueError),
    ({"event": "a\rb"}, ValueError),
    ({"id": "a\r\nb"}, ValueError),
    ({"id": "a\x00b"}, ValueError),
    ({"id": "x" * (MAX_EVENT_ID_LENGTH + 1)}, ValueError),
    ({"id": "x" * 60_000}, ValueError),
    ({"id": "é" * (MAX_EVENT_ID_LENGTH + 1)}, ValueError),
    ({"id": "lone \ud800"}, UnicodeEncodeError),
    ({"event": "lone \udfff"}, UnicodeEncodeError),
    ({"data": "lone \ud800"}, UnicodeEncodeError),
    ({"data": {1, 2}}, TypeError),
    ({"data": float("nan")}, ValueError),
    ({"retry": -1}, ValueError),
    ({"retry": 1.5}, TypeError),
    ({"retry": True}, TypeError),
    ({"id": 1.5}, TypeError),
    ({"event": 3}, TypeError),
]


@pytest.mark.parametrize(("fields", "error"), REFUSED_FIELDS)
def test_field_injection_and_bad_types_are_refused(fields, error):
    with pytest.raises(error):
        format_event(**{"data": "data", **fields})


def test_unencodable_data():
    with pytest.raises(TypeError, match="set"):
        format_event({1})
    with pytest.raises(UnicodeEncodeError, match="surrogate"):
        format_event("lone \ud800 surrogate")


def test_comments():
    assert format_comment() == b":\n\n"
    assert format_comment("hi") == b": hi\n\n"
    with pytest.raises(ValueError, match="CR or LF"):
        format_comment("a\nb")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("17", "17"),
        ("caf\u00c3\u00a9", "caf\u00e9"),  # UTF-8 bytes as Tornado decodes them (Latin-1)
    ],
)
def test_last_event_id(raw, expected):
    assert parse_last_event_id(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "x" * 60_000,
        "x" * (MAX_EVENT_ID_LENGTH + 1),
        "\u00c3\u00a9" * (MAX_EVENT_ID_LENGTH + 1),  # short in bytes/4, long in characters
        "\u00ff\u00fe",  # not UTF-8
        "a\rb",
        "a\nb",
        "a\x00b",
    ],
)
def test_last_event_id_refused(raw):
    with pytest.raises(ValueError, match="Last-Event-ID"):
        parse_last_event_id(raw)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@given(data=_text, event=_text, id_=_text, retry=st.integers(0, 10**12))
def test_any_event_round_trips_or_is_refused(data, event, id_, retry):
    """Whatever the fields hold, the browser sees exactly one event with exactly
    these fields (line breaks normalised), or nothing is produced at all."""
    try:
        frame = format_event(data, event=event or None, id=id_, retry=retry)
    except ValueError:
        assert (
            re.search(r"[\r\n]", event)
            or re.search(r"[\r\n\x00]", id_)
            or (len(id_) > MAX_EVENT_ID_LENGTH)
        )
        return
    events, comments = parse_events(frame.decode("utf-8"))
    assert comments == []
    assert len(events) == 1
    (parsed,) = events
    assert parsed.data == re.sub(r"\r\n|\r", "\n", data)
    assert parsed.event == (event or "message")
    assert parsed.id == id_
    assert parsed.retry == retry


@given(st.binary(max_size=2000))
def test_last_event_id_parser_only_accepts_what_could_be_sent(raw):
    header = raw.decode("latin-1")
    try:
        value = parse_last_event_id(header)
    except ValueError:
        return
    if value is not None:
        # Anything accepted can be sent back as an id unchanged.
        assert parse_events(format_event("x", id=value).decode())[0][0].id == value


# -- ServerSentEvent: checked and encoded once, at creation --------------------------


def test_server_sent_event_is_encoded_at_creation():
    event = ServerSentEvent({"k": "é"}, event="update", id=7, retry=1000)
    assert event.encoded == 'event: update\nid: 7\nretry: 1000\ndata: {"k":"é"}\n\n'.encode()
    assert (event.data, event.event, event.id, event.retry) == ({"k": "é"}, "update", 7, 1000)
    assert ServerSentEvent("a\nb").encoded == b"data: a\ndata: b\n\n"
    assert repr(event) == "ServerSentEvent({'k': 'é'}, event='update', id=7)"


def test_server_sent_event_is_immutable():
    event = ServerSentEvent("x", id=1)
    encoded = event.encoded
    for name in ("data", "event", "id", "retry", "encoded", "other"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(event, name, "changed")
        with pytest.raises(AttributeError, match="immutable"):
            delattr(event, name)
    assert (event.data, event.id, event.encoded) == ("x", 1, encoded)


@pytest.mark.parametrize(("fields", "error"), REFUSED_FIELDS)
def test_server_sent_event_refuses_bad_fields_when_created(fields, error):
    arguments = {"data": "data", **fields}
    with pytest.raises(error):
        ServerSentEvent(**arguments)


def test_server_sent_event_accepts_non_ascii_and_large_values():
    assert ServerSentEvent("ü", event="é", id="☃").encoded == (
        "event: é\nid: ☃\ndata: ü\n\n".encode()
    )
    assert ServerSentEvent("x", id="é" * MAX_EVENT_ID_LENGTH).id == "é" * MAX_EVENT_ID_LENGTH
    big = ServerSentEvent("x" * 60_000, retry=2**64)
    assert big.encoded == b"retry: 18446744073709551616\ndata: " + b"x" * 60_000 + b"\n\n"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=10,
)


@given(
    data=_json,
    event=st.none() | _text,
    id_=st.none() | _text | st.integers(),
    retry=st.none() | st.integers(-3, 10**12),
)
def test_server_sent_event_encodes_exactly_as_format_event(data, event, id_, retry):
    try:
        expected = format_event(data, event=event, id=id_, retry=retry)
    except ValueError as error:
        with pytest.raises(type(error)):
            ServerSentEvent(data, event=event, id=id_, retry=retry)
        return
    assert ServerSentEvent(data, event=event, id=id_, retry=retry).encoded == expected
