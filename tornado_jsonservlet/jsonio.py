"""JSON encoding for responses: fast (ujson), UTF-8, and without needless escaping."""

from __future__ import annotations

from typing import Any

import ujson

__all__ = ["JSON_CONTENT_TYPE", "encode"]

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON; ``/`` and non-ASCII are left as they are.

    Raises ``TypeError`` naming the type of a value JSON cannot represent.
    """
    try:
        text: str = ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)
    except (TypeError, OverflowError) as error:
        raise TypeError(f"cannot encode as JSON: {error}") from error
    return text.encode("utf-8")
