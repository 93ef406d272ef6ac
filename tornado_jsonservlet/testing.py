"""Test helpers: real clients that leave the way real clients do.

A disconnect cannot be simulated faithfully by calling ``on_connection_close``
by hand: what matters is how Tornado's stream machinery sees a FIN or an RST,
and when. :class:`RawHTTPConnection` opens a real TCP connection to a test
server, sends a request byte for byte, and closes with FIN (orderly) or RST
(``SO_LINGER`` 0, as when a process is killed or a proxy gives up).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Literal, Optional, Union

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

__all__ = ["CloseHow", "RawHTTPConnection"]

CloseHow = Literal["fin", "rst"]


class RawHTTPConnection:
    """One client connection to a local test server, closed on the test's command."""

    def __init__(self, stream: IOStream) -> None:
        self.stream = stream

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawHTTPConnection:
        stream = await TCPClient().connect(host, port)
        return cls(stream)

    async def send_request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        headers: Optional[dict[str, str]] = None,
        body: Union[bytes, str] = b"",
        content_length: Optional[int] = None,
    ) -> None:
        """Send one HTTP/1.1 request. ``content_length`` may overstate ``body``
        to leave the server waiting for the rest of an upload."""
        data = body.encode() if isinstance(body, str) else body
        all_headers = {"Host": "127.0.0.1"}
        if data or content_length is not None or method in ("POST", "PUT", "PATCH"):
            length = len(data) if content_length is None else content_length
            all_headers["Content-Length"] = str(length)
        all_headers.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in all_headers.items()
        )
        await self.stream.write(head.encode("latin-1") + b"\r\n" + data)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.write(data)

    async def read_until_close(self, timeout: float = 5.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        try:
            return await asyncio.wait_for(self.stream.read_until_close(), timeout)
        except StreamClosedError:
            return b""

    def close(self, how: CloseHow = "fin") -> None:
        """Close the connection: ``"fin"`` for an orderly close, ``"rst"`` to reset it."""
        if how == "rst" and self.stream.socket is not None:
            self.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.stream.close()

    @property
    def closed(self) -> bool:
        return self.stream.closed()
