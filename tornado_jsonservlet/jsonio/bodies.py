"""Request bodies: ``self.json_body`` decodes the body strictly, or answers a clear 4xx.

Every way a body can be wrong has its own ``errcode``: 415 for a non-JSON
``Content-Type``, 400 ``NOT_JSON`` for an empty body, 400 ``BAD_JSON`` for invalid
JSON or UTF-8, 413 ``TOO_LARGE`` over ``json_body_limit`` (checked from
``Content-Length`` before a byte is read, and while a streamed body arrives).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Optional, TypeVar, overload

import tornado.web

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.headers import (
    MediaType,
    header_or_none,
    parse_content_length,
    parse_media_type,
)
from tornado_jsonservlet.core.scope import SCOPE_DEFAULT, scope_of
from tornado_jsonservlet.errors.exceptions import (
    BadRequest,
    PayloadTooLarge,
    ServletError,
    UnsupportedMediaType,
)
from tornado_jsonservlet.jsonio.codec import decode

__all__ = ["JsonBodyMixin", "require"]

_T = TypeVar("_T")


def _is_json_media_type(media: Optional[MediaType]) -> bool:
    return media is not None and (
        media.essence == "application/json"
        or (media.type == "application" and media.subtype.endswith("+json"))
    )


class _BodyState:
    """The request body as it arrives and once decoded (``scope.json_body``)."""

    __slots__ = ("chunks", "decoded", "received", "value")

    def __init__(self) -> None:
        self.chunks: Optional[list[bytes]] = None
        self.received = 0
        self.decoded = False
        self.value: Any = None


def _body_state(handler: tornado.web.RequestHandler) -> _BodyState:
    scope = scope_of(handler)
    state: Optional[_BodyState] = scope.json_body
    if state is None:
        state = scope.json_body = _BodyState()
    return state


class JsonBodyMixin(tornado.web.RequestHandler):
    """``self.json_body``: the decoded request body, or a clear 4xx.

    With ``@tornado.web.stream_request_body`` on the class, the size limit is
    enforced while the body arrives: from ``Content-Length`` before a byte is read,
    and chunk by chunk for chunked uploads. Without it, Tornado has read the whole
    body (up to the server's ``max_body_size``) before the limit is checked.

    .. versionadded:: 0.1
    """

    #: The request's scope, None until it exists (``core.scope.SCOPE_DEFAULT``).
    _tornado_jsonservlet_scope: Any = SCOPE_DEFAULT

    #: Largest accepted body, in bytes.
    json_body_limit: int = 1024 * 1024
    #: Require ``Content-Type: application/json`` (or ``application/*+json``).
    json_require_content_type: bool = True

    def prepare(self) -> Any:
        """Refuse a declared ``Content-Length`` above :attr:`json_body_limit` before
        any of the body is read.

        :raises BadRequest: a ``Content-Length`` that is not ASCII digits (``BAD_HEADER``).
        :raises PayloadTooLarge: a declared body above the limit (``TOO_LARGE``).
        """
        declared = header_or_none(self.request.headers, "Content-Length")
        if declared is not None:
            # Strict: "²".isdigit() is true and int() then fails, and int() on a
            # 5,000-digit value fails too; either was a 500.
            try:
                size = parse_content_length(declared)
            except ValueError:
                raise BadRequest(
                    "Content-Length must be a number in ASCII digits",
                    "BAD_HEADER",
                    header="Content-Length",
                ) from None
            if size > self.json_body_limit:
                raise self._jsonservlet_too_large()
        return super().prepare()

    def data_received(self, chunk: bytes) -> None:
        """Collect a streamed body, answering 413 ``TOO_LARGE`` as soon as it crosses
        :attr:`json_body_limit` (for ``@stream_request_body`` handlers, servlets included).
        """
        if tornado_internals.is_finished(self):
            return
        body = _body_state(self)
        body.received += len(chunk)
        if body.received > self.json_body_limit:
            body.chunks = None
            error = self._jsonservlet_too_large()
            self.send_error(error.code, exc_info=(type(error), error, None))
            return
        if body.chunks is None:
            body.chunks = []
        body.chunks.append(chunk)

    @property
    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object (a 4xx otherwise). See :meth:`get_json_body`."""
        return self.get_json_body()

    @overload
    def get_json_body(
        self, *, required: Literal[True] = ..., object_required: Literal[True] = ...
    ) -> dict[str, Any]: ...

    @overload
    def get_json_body(
        self, *, required: bool, object_required: Literal[True] = ...
    ) -> Optional[dict[str, Any]]: ...

    @overload
    def get_json_body(self, *, required: bool = ..., object_required: bool) -> Any: ...

    def get_json_body(self, *, required: bool = True, object_required: bool = True) -> Any:
        """Decode the request body.

        :raises ServletError: 415 ``UNSUPPORTED_MEDIA_TYPE`` for a non-JSON
            Content-Type; 400 ``NOT_JSON`` for an empty body when ``required``;
            400 ``BAD_JSON`` for invalid JSON or UTF-8, or a non-object when
            ``object_required``; 413 ``TOO_LARGE`` over ``json_body_limit``.
        """
        state = _body_state(self)
        if not state.decoded:
            state.value = self._jsonservlet_decode_body(required, object_required)
            state.decoded = True
        return state.value

    def _jsonservlet_body_bytes(self) -> bytes:
        chunks = _body_state(self).chunks
        if chunks is not None:
            return b"".join(chunks)
        body = self.request.body
        return body if isinstance(body, bytes) else b""

    def _jsonservlet_checked_body(self, required: bool) -> Optional[bytes]:
        """The body's bytes once its size and Content-Type are checked; None if empty.

        Shared by ``json_body`` and typed servlet methods (which decode with msgspec),
        so that both refuse the same bodies with the same errors.
        """
        body = self._jsonservlet_body_bytes()
        if len(body) > self.json_body_limit:
            raise self._jsonservlet_too_large()
        if not body.strip():
            if required:
                raise BadRequest("Request body must be a JSON document", "NOT_JSON")
            return None
        content_type = self.request.headers.get("Content-Type", "")
        media = parse_media_type(content_type)
        if self.json_require_content_type and not _is_json_media_type(media):
            fields: dict[str, Any] = {} if media is None else {"content_type": media.essence}
            raise UnsupportedMediaType("Content-Type must be application/json", **fields)
        return body

    def _jsonservlet_decode_body(self, required: bool, object_required: bool) -> Any:
        body = self._jsonservlet_checked_body(required)
        if body is None:
            return None
        try:
            value = decode(body)
        except ValueError as error:
            raise BadRequest(f"Request body is not valid JSON: {error}", "BAD_JSON") from None
        if object_required and not isinstance(value, dict):
            raise BadRequest("Request body must be a JSON object", "BAD_JSON")
        return value

    def _jsonservlet_too_large(self) -> ServletError:
        return PayloadTooLarge(
            f"Request body is larger than {self.json_body_limit} bytes", limit=self.json_body_limit
        )


def require(body: Mapping[str, Any], name: str, kind: type[_T]) -> _T:
    """``body[name]``, checked to be a ``kind``; a 400 naming the field otherwise.

    ``bool`` is not accepted where ``int`` or ``float`` is asked for, and an ``int``
    is accepted for ``float``.

    :raises ServletError: 400 ``MISSING_PARAM`` or ``INVALID_PARAM``, with ``param``.

    .. versionadded:: 0.1
    """
    if not isinstance(body, Mapping) or name not in body:
        raise BadRequest(f"Missing required field '{name}'", "MISSING_PARAM", param=name)
    value = body[name]
    accepted: tuple[type, ...] = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) and kind is not bool:
        accepted = ()
    if not isinstance(value, accepted):
        raise BadRequest(
            f"Field '{name}' must be of type {_json_type_name(kind)}",
            "INVALID_PARAM",
            param=name,
        )
    return value  # type: ignore[return-value]


def _json_type_name(kind: type) -> str:
    return {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        dict: "object",
        list: "array",
    }.get(kind, kind.__name__)
