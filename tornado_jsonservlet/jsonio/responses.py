"""JSON in and out of a ``RequestHandler``: ``write_json`` and ``json_body``.

``write_json`` sends small documents in one piece, with ``Content-Length`` and no
SHA-1 ``ETag`` (Tornado's default hashes every body, a cost proportional to its
size, for a value API clients rarely use). A big document (a large top-level list,
or an object holding one) is encoded in slices on the event loop's low-priority lane, so it never
holds the loop for more than a slice at a time and yields to small requests;
then it is written slice by slice, each write on the same lane and with a
``flush()`` after it, so a slow client pushes back instead of making the server
buffer the writes. The whole document is
encoded before the first byte is sent. A value that cannot be encoded therefore
fails the request cleanly (500 ``UNKNOWN``) rather than leaving a half-written body.

A ``HEAD`` request gets GET's status and headers without the document being
encoded at all, so it costs what an empty response costs whatever the size of
the document. Two headers depend on the encoded bytes and are treated apart:
``Content-Length`` is left out (a HEAD may omit it; a guessed one would be wrong),
and an ``ETag`` (with ``json_etag``) is left out for the same reason. Output
transforms such as ``compress_response`` see the same kind of first chunk as for
GET, so ``Content-Encoding`` matches: a document GET would stream, or one
estimated at 1 KB or more, is announced as compressed; a small document, which
GET compresses only from 1 KB on, is not.

``json_body`` is in :mod:`tornado_jsonservlet.jsonio.bodies`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable
from typing import Any, Callable, Optional, TypeVar

import tornado.web

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.safe_output import SafeWriteMixin
from tornado_jsonservlet.core.scope import SCOPE_DEFAULT, RequestScope, scope_of
from tornado_jsonservlet.jsonio.bodies import JsonBodyMixin, require
from tornado_jsonservlet.jsonio.codec import JSON_CONTENT_TYPE, encode
from tornado_jsonservlet.jsonio.lane import LowPriorityLane, lane_for_running_loop

# JsonBodyMixin and require live in jsonio.bodies; re-exported for the old
# tornado_jsonservlet.json_handlers path, which now leads here.
__all__ = ["JsonBodyMixin", "JsonResponseMixin", "require"]

_T = TypeVar("_T")
#: The ``json_default`` application setting: a function for types the codec does not know.
Hook = Optional[Callable[[Any], Any]]

# Bytes per slice of a big response, encoded or written. Each slice costs a trip
# round the lane, so bigger slices serve big responses faster, but a small request
# that arrives meanwhile waits for the slice in progress. So slices are small while
# small responses are being served (the lane is yielding to interactive work), and
# big otherwise.
_SLICE_BYTES = 32 * 1024
_SLICE_BYTES_WHEN_QUIET = 128 * 1024
# Tornado compresses a response sent in one piece only from this size on.
_GZIP_MIN_LENGTH = tornado.web.GZipContentEncoding.MIN_LENGTH
_SAMPLE_ITEMS = 16
# Below this many items a list is not worth estimating, let alone slicing: the
# common small response then costs a length check, not a trial encoding.
_MIN_SLICED_ITEMS = 128


# -- responses -----------------------------------------------------------------


def _big_list(obj: Any) -> Optional[tuple[Optional[str], list[Any]]]:
    """``(key, items)`` when ``obj`` is a list, or an object whose largest value is one."""
    if isinstance(obj, list):
        return (None, obj) if len(obj) >= _MIN_SLICED_ITEMS else None
    if isinstance(obj, dict):
        best: Optional[tuple[Optional[str], list[Any]]] = None
        for value in obj.values():
            if type(value) is list and len(value) >= _MIN_SLICED_ITEMS:
                break
        else:
            return None  # the common small document: no big list, one pass over values
        for key, value in obj.items():
            big = type(value) is list and len(value) >= _MIN_SLICED_ITEMS
            if big and isinstance(key, str) and (best is None or len(value) > len(best[1])):
                best = key, value
        return best
    return None


def _estimated_size(
    items: list[Any], canonical: bool, default: Hook = None, decimals: str = "string"
) -> tuple[int, float]:
    """``(estimated bytes, bytes per item)`` from an evenly spaced sample."""
    count = len(items)
    if count == 0:
        return 0, 0.0
    step = max(1, count // _SAMPLE_ITEMS)
    sample = items[::step][:_SAMPLE_ITEMS]
    encoded = encode(sample, canonical=canonical, default=default, decimals=decimals)
    per_item = (len(encoded) - 1) / len(sample)
    return int(per_item * count), per_item


def _frame(
    obj: Any, key: Optional[str], canonical: bool, default: Hook = None, decimals: str = "string"
) -> tuple[bytes, bytes]:
    """The bytes before and after the big list, from one encoding with a placeholder."""
    if key is None:
        return b"[", b"]"
    marker = f"tornado-jsonservlet-{uuid.uuid4().hex}"
    encoded = encode({**obj, key: marker}, canonical=canonical, default=default, decimals=decimals)
    quoted = f'"{marker}"'.encode()
    before, found, after = encoded.partition(quoted)
    if not found or quoted in after:
        raise ValueError("could not frame the document for slicing")
    return before + b"[", b"]" + after


def _slice_bytes(lane: LowPriorityLane) -> int:
    return _SLICE_BYTES if lane.yielding_to_interactive else _SLICE_BYTES_WHEN_QUIET


async def encode_in_slices(
    obj: Any,
    found: tuple[Optional[str], list[Any]],
    per_item: float,
    *,
    canonical: bool,
    default: Hook = None,
    decimals: str = "string",
) -> list[bytes]:
    """Encode ``obj`` as chunks whose concatenation equals ``encode(obj)``.

    ``found`` is ``_big_list(obj)``: the big list is encoded a slice at a time (32 KB,
    or 128 KB while no small responses are being served), each slice on the
    low-priority lane; the rest of the document is encoded once.
    """
    key, items = found
    before, after = _frame(obj, key, canonical, default, decimals)
    chunks = [before]
    lane = lane_for_running_loop()
    step = max(1, int(_slice_bytes(lane) / max(per_item, 1.0)))
    start = 0
    while start < len(items):
        stop = min(len(items), start + step)
        piece = await lane.run(
            functools.partial(
                encode, items[start:stop], canonical=canonical, default=default, decimals=decimals
            )
        )
        # Keep each slice near its target: estimates from a sample can be far off.
        if len(piece) > 2:
            step = max(1, int(step * _slice_bytes(lane) / len(piece)))
        if start:
            chunks.append(b",")
        chunks.append(piece[1:-1])
        start = stop
    chunks.append(after)
    return chunks


def _finish_in_one_write(
    handler: JsonResponseMixin, status: int, body: bytes
) -> Optional[Awaitable[None]]:
    """``finish(body)`` for the common small response, without the calls in between.

    ``finish()`` passes through the toolkit's layers (cancellation, safe output, the
    client's connection) and then Tornado's ETag, ``Content-Length`` and ``flush()``
    steps. For a response that nothing was written to, of a request that is neither
    being cancelled nor abandoned, each layer only passes the call on, and the
    calls cost about a sixth of a small request (``benchmarks/servlet_cost.py``).
    This does the same in one step: the status, the headers and the body in one
    write, the access line, ``on_finish()``, the relay of a failed write into a
    disconnect, the release of the request's timers.

    Returns None, and does nothing, whenever that could differ from ``finish()``:
    the class overrides a method on ``finish()``'s path (its override must run),
    ``json_etag`` is set, the status has no body, the response was touched (a
    header sent, a cookie, a transform such as gzip), or the request is being
    cancelled, its client left, or its body is still arriving.
    """
    if (
        not tornado_internals.finishes_in_one_write(type(handler))
        or handler.json_etag
        or status < 200
        or status in (204, 304)
        or not tornado_internals.nothing_written(handler)
        or tornado_internals.body_still_arriving(handler.request)
    ):
        return None
    scope: RequestScope = handler._tornado_jsonservlet_scope or scope_of(handler)
    if scope.reason is not None or scope.client_gone or scope.ended_early:
        return None
    scope.json_response = True
    relay = handler._jsonservlet_quiet if isinstance(handler, SafeWriteMixin) else _as_is
    try:
        return tornado_internals.send_in_one_write(handler, status, JSON_CONTENT_TYPE, body, relay)
    finally:
        # As CancelOnDisconnectMixin.finish: also when on_finish() raised.
        if scope.owned and tornado_internals.is_finished(handler):
            scope.release_owned()


def _as_is(sent: Awaitable[None]) -> Any:
    return sent


class JsonResponseMixin(tornado.web.RequestHandler):
    """``await self.write_json(obj)``: encode, send and finish, without blocking the loop.

    .. versionadded:: 0.1
    """

    #: The request's scope, None until it exists (``core.scope.SCOPE_DEFAULT``).
    _tornado_jsonservlet_scope: Any = SCOPE_DEFAULT

    #: Documents estimated above this many bytes are encoded in slices.
    json_slice_threshold: int = 64 * 1024
    #: Default for ``write_json(canonical=...)``: sorted keys, stable bytes.
    json_canonical: bool = False
    #: Compute Tornado's SHA-1 ETag over JSON bodies (off: it rarely pays for itself).
    json_etag: bool = False

    def write_json(
        self, obj: Any, status: int = 200, *, canonical: Optional[bool] = None
    ) -> Awaitable[None]:
        """Send ``obj`` as the JSON response with ``status``, and finish the request.

        Await the result: small documents are sent at once, big ones in slices.

        :raises TypeError: a value of a type JSON has no form for (a ``set``, ``bytes``,
            a ``datetime``); nothing has been sent yet.
        :raises ValueError: NaN or infinity, a string with a lone surrogate, or nesting
            beyond 1024 levels; nothing has been sent yet.
        """
        canonical = self.json_canonical if canonical is None else canonical
        settings = self.settings
        default: Hook = settings.get("json_default")
        decimals: str = settings.get("json_decimal", "string")
        found = _big_list(obj)
        if found is not None:
            size, per_item = _estimated_size(found[1], canonical, default, decimals)
            if self.request.method == "HEAD":
                return self._jsonservlet_write_head(status, size)
            if size > self.json_slice_threshold:
                return self._jsonservlet_write_sliced(
                    obj, found, per_item, status, canonical, default, decimals
                )
        elif self.request.method == "HEAD":
            return self._jsonservlet_write_head(status, None)
        body = encode(obj, canonical=canonical, default=default, decimals=decimals)
        # A small response is interactive work: big ones in flight make room for it.
        lane_for_running_loop().note_interactive()
        sent = _finish_in_one_write(self, status, body)
        if sent is not None:
            return sent
        self._jsonservlet_start_json(status)
        return self.finish(body)

    async def _jsonservlet_write_sliced(
        self,
        obj: Any,
        found: tuple[Optional[str], list[Any]],
        per_item: float,
        status: int,
        canonical: bool,
        default: Hook = None,
        decimals: str = "string",
    ) -> None:
        chunks = await encode_in_slices(
            obj, found, per_item, canonical=canonical, default=default, decimals=decimals
        )
        # Encoded, the source document is no longer needed. A client that reads
        # slowly (or not at all, until write_timeout) must hold its encoded bytes
        # in flight, not the document as well: often ten times their size in
        # Python objects.
        del obj, found
        self._jsonservlet_start_json(status)
        await self._jsonservlet_send_chunks(chunks)

    async def _jsonservlet_write_head(self, status: int, estimated_size: Optional[int]) -> None:
        """GET's status and headers, no body, nothing encoded.

        The headers are written before ``finish()``, which would otherwise add a
        ``Content-Length: 0`` and an ``ETag`` of the empty body. The transforms get
        a non-final first chunk when GET's body is streamed or big enough to be
        compressed (``estimated_size`` comes from the same sample GET uses), and a
        final empty one otherwise, so ``compress_response`` decides as for GET.
        """
        self._jsonservlet_start_json(status)
        self.clear_header("Content-Length")
        like_get_body = estimated_size is not None and (
            estimated_size > self.json_slice_threshold or estimated_size >= _GZIP_MIN_LENGTH
        )
        await self.flush(include_footers=not like_get_body)
        await self.finish()

    @tornado_internals.covered_by_one_write
    def compute_etag(self) -> Optional[str]:
        """No ETag for responses sent by :meth:`write_json` unless :attr:`json_etag`
        is set: hashing every JSON body rarely pays for itself. Other responses keep
        Tornado's ETag.
        """
        if scope_of(self).json_response and not self.json_etag:
            return None
        return super().compute_etag()

    def _jsonservlet_start_json(self, status: int) -> None:
        scope_of(self).json_response = True
        self.set_status(status)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)

    async def _jsonservlet_send_chunks(self, chunks: list[bytes]) -> None:
        self.set_header("Content-Length", sum(len(chunk) for chunk in chunks))
        if self.request.method == "HEAD":
            self.finish()
            return
        # Coalesce into slice-sized writes; release each chunk as soon as it is queued.
        # Each write is low-priority work too: the kernel usually accepts it at
        # once, so the flushes would otherwise complete without yielding, and a
        # whole megabyte would be copied to the socket in one go, holding the loop.
        chunks.reverse()
        lane = lane_for_running_loop()

        def write_slice() -> Awaitable[None]:
            pending = 0
            target = _slice_bytes(lane)
            while chunks and pending < target:
                chunk = chunks.pop()
                pending += len(chunk)
                self.write(chunk)
            return self.flush()

        while chunks:
            await (await lane.run(write_slice))
        self.finish()


# -- request bodies --------------------------------------------------------------
