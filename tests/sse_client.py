"""A test client for streamed responses: reads a chunked body incrementally over a
raw connection (so the test can still close it with FIN or RST), and parses
server-sent events the way the WHATWG parser does."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Optional

from tornado.httputil import HTTPHeaders

from tornado_jsonservlet.testing import RawHTTPConnection


@dataclass
class Event:
    data: str
    event: str = "message"
    id: Optional[str] = None
    retry: Optional[int] = None


_LINE = re.compile(r"\r\n|\r|\n")

# A chunk-size line as Tornado writes it: lowercase hex, no extensions.
_CHUNK_SIZE_LINE = re.compile(rb"[0-9a-f]+\r\n")


def parse_events(text: str) -> tuple[list[Event], list[str]]:
    """Dispatched events and comments in ``text``, per the WHATWG interpretation rules.

    ``id`` is the *last event id* at dispatch (it persists across events, as in
    a browser); ``retry`` is set on the event during whose block it arrived.
    """
    events: list[Event] = []
    comments: list[str] = []
    data: list[str] = []
    event_type = ""
    last_id: Optional[str] = None
    retry: Optional[int] = None
    for line in _LINE.split(text):
        if line == "":
            if data:
                events.append(Event("\n".join(data), event_type or "message", last_id, retry))
            data, event_type, retry = [], "", None
            continue
        if line.startswith(":"):
            comments.append(line[1:])
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)
    return events, comments


class StreamReader:
    """One streamed response on a raw connection: headers, then the body piece by piece.

    Every reader is remembered in ``opened`` so a fixture can close the ones a
    failing test left open.
    """

    opened: list[StreamReader] = []

    def __init__(self, conn: RawHTTPConnection) -> None:
        StreamReader.opened.append(self)
        self.conn = conn
        self.status = 0
        self.headers = HTTPHeaders()
        self.body = b""
        self.complete = False  # the terminating chunk arrived
        self.chunks: list[bytes] = []  # every chunk as it was framed, the last one b""
        self._consumed = 0

    @classmethod
    async def open(
        cls, port: int, path: str, headers: Optional[dict[str, str]] = None, method: str = "GET"
    ) -> StreamReader:
        conn = await RawHTTPConnection.open(port)
        await conn.send_request(method, path, headers=headers)
        reader = cls(conn)
        await reader.read_head()
        return reader

    async def read_head(self, timeout: float = 5.0) -> None:
        head = await asyncio.wait_for(self.conn.stream.read_until(b"\r\n\r\n"), timeout)
        first, _, rest = head.decode("latin-1").partition("\r\n")
        self.status = int(first.split()[1])
        self.headers = HTTPHeaders.parse(rest)

    async def read_chunk(self, timeout: float = 5.0) -> bytes:
        """The next chunk of a chunked body (b"" at its end).

        The framing is checked strictly (RFC 9112, 7.1): a malformed size line, or
        chunk data not followed by exactly CRLF, is an ``AssertionError``, so a
        chunk written over another one cannot pass unnoticed.
        """
        if self.complete:
            raise AssertionError("read past the terminating chunk")
        stream = self.conn.stream
        size_line = await asyncio.wait_for(stream.read_until(b"\r\n", max_bytes=32), timeout)
        if not _CHUNK_SIZE_LINE.fullmatch(size_line):
            raise AssertionError(f"malformed chunk-size line {size_line!r}")
        size = int(size_line, 16)
        data = await asyncio.wait_for(stream.read_bytes(size + 2), timeout)
        if data[-2:] != b"\r\n":
            raise AssertionError(f"chunk of {size} bytes not followed by CRLF: {data[-40:]!r}")
        chunk = data[:-2]
        if size == 0:
            self.complete = True
        self.chunks.append(chunk)
        self.body += chunk
        return chunk

    async def read_until_complete(self, timeout: float = 5.0) -> bytes:
        while not self.complete:
            await self.read_chunk(timeout)
        return self.body

    async def next_block(self, timeout: float = 5.0) -> str:
        """The next SSE block (up to and including its blank line), comments included."""
        while True:
            text = self.body[self._consumed :].decode("utf-8")
            match = re.search(r"(\r\n|\r|\n)(\r\n|\r|\n)", text)
            if match:
                block = text[: match.end()]
                self._consumed += len(block.encode("utf-8"))
                return block
            if self.complete:
                raise EOFError("stream ended")
            await self.read_chunk(timeout)

    async def next_event(self, timeout: float = 5.0) -> Event:
        """The next dispatched event, skipping comments."""
        while True:
            events, _ = parse_events(await self.next_block(timeout))
            if events:
                return events[0]

    def close(self, how: str = "fin") -> None:
        self.conn.close(how)  # type: ignore[arg-type]
