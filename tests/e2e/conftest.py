"""Fixtures shared by the end-to-end tests of demo_server.py."""

from __future__ import annotations

from typing import Any

import pytest

import demo_server


@pytest.fixture
def demo_work_started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URIs of ``DelayedWorkHandler`` requests whose handler has started (in order).

    The demo logs nothing when its delayed work begins; a test that must leave while
    the work is under way waits for its URI here instead of sleeping.
    """
    started: list[str] = []
    original = demo_server.DelayedWorkHandler._delay_argument

    def recording(self: Any) -> float:
        started.append(self.request.uri)
        return original(self)  # type: ignore[no-any-return]

    monkeypatch.setattr(demo_server.DelayedWorkHandler, "_delay_argument", recording)
    return started
