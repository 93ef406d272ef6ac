"""Fixtures shared by the codec tests."""

from __future__ import annotations

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
