"""Fixtures and helpers shared by the jsonio tests."""

from __future__ import annotations

from typing import Any

import pytest

from tornado_jsonservlet.jsonio import codec
from tornado_jsonservlet.jsonio.codec import active_backend


@pytest.fixture(params=["active", "ujson"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once with the active backend and once with ujson forced."""
    if request.param == "ujson":
        monkeypatch.setattr(codec, "_fast_dumps", None)
        return "ujson"
    return active_backend()


def through_finish(cls: type) -> type:
    """``cls`` with a pass-through ``flush``: it takes ``finish()``'s path (a class
    that overrides a method on that path is never finished in one write)."""

    def flush(self: Any, include_footers: bool = False) -> Any:
        return super(copy, self).flush(include_footers)

    copy = type(f"Finishing{cls.__name__}", (cls,), {"flush": flush, "PATTERNS": ()})
    return copy
