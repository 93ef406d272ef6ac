"""Old module paths that keep working for one release.

Wave 3 grouped the toolkit's flat modules into subpackages by family. Code that
imports an old path (``tornado_jsonservlet.disconnect``) gets the new module
itself, so every name, private ones included, is the same object, together with a
``DeprecationWarning`` naming the path to use instead. The table below is the
whole mechanism: a finder placed last on ``sys.meta_path`` answers only for these
names, and only after the normal finders found no such file. The aliases go away
in the release after 0.1.

``tornado_jsonservlet.errors``, ``.jsonio``, ``.outbound`` and ``.testing`` are not here: they
are family packages now and re-export what the old modules exported, so they
keep working without a warning (``AsyncHTTPClient.configure`` takes the
``tornado_jsonservlet.outbound.CancellableHTTPClient`` string as before).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Optional

__all__ = ["MOVED_MODULES", "install"]

_PACKAGE = "tornado_jsonservlet"

#: Old module name (below the package) -> its new home.
MOVED_MODULES: dict[str, str] = {
    "connection": "core.connection",
    "safe_output": "core.safe_output",
    "disconnect": "core.cancellation",
    "context": "core.context",
    "threads": "core.threads",
    "headers": "core.headers",
    "rendering": "errors.rendering",
    "cors": "errors.cors",
    "json_handlers": "jsonio.responses",
    "lowpriority": "jsonio.lane",
    "lean": "jsonio.lean",
    "registry": "routing.registry",
    "servlet": "routing.servlets",
    "eventformat": "streams.sse_format",
    "stream_writer": "streams.writer",
    "streaming": "streams.mixins",
    "stream_servlets": "streams.servlets",
    "broadcast": "streams.broadcast",
    "redis_broadcast": "streams.redis_broadcast",
    "request_id": "production.request_id",
    "metrics": "production.metrics",
    "metrics_handler": "production.metrics_handler",
    "shutdown": "production.shutdown",
    "processes": "production.processes",
    "pytest_plugin": "testing.pytest_plugin",
}


class _AliasLoader(importlib.abc.Loader):
    """Hands back the new module under the old name, and warns the importer."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # stacklevel=2 names the import statement: the interpreter skips
        # importlib's own frames when it counts.
        warnings.warn(
            f"{spec.name} is deprecated; import {self.new_name} instead "
            "(the old path goes away in the release after 0.1)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module is already imported."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        package, _, name = fullname.rpartition(".")
        new = MOVED_MODULES.get(name) if package == _PACKAGE else None
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(f"{_PACKAGE}.{new}"))


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (once; idempotent)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
