"""The shape of every error body the toolkit sends: ``{"errcode", "error"}``.

Defined in the core because the core sends errors too (a request cancelled by its
deadline answers 504 even from a handler with no error mixin), and both it and
the error layer must give the same shape, ``request_id`` included.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["error_document"]


def error_document(errcode: str, message: str, request_id: Optional[str] = None) -> dict[str, Any]:
    """``{"errcode": ..., "error": ...}``, with ``request_id`` when the request has one."""
    document: dict[str, Any] = {"errcode": errcode, "error": message}
    if request_id is not None:
        document["request_id"] = request_id
    return document
