"""Run Tornado's own test suites with the toolkit mixed into every test handler.

The toolkit promises to be invisible while the client stays connected. Tornado's
own tests are the widest description of "what Tornado does" there is, so they
are run twice: once as shipped (the baseline) and once with
``tornado.web.RequestHandler`` rebound, before the test modules are imported, to a
class that mixes in the toolkit's per-request mixins. Every handler those modules
define then carries the mixins. Both runs must pass, with Tornado's own runner and
its own strictness (warnings are errors; any unexpected log line fails the run).

Usage::

    python tests/tornado_suites/web_suite.py  # prints both summaries; non-zero on a failure

Not collected by pytest (its name does not start with ``test_``): ``.ci/run`` runs
it on its own, and each run is a subprocess, so the rebinding never leaks into the
project's own tests.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from typing import Any

#: Tornado test modules whose handlers subclass ``RequestHandler``.
MODULES = [
    "tornado.test.web_test",
    "tornado.test.httpserver_test",
    "tornado.test.routing_test",
    "tornado.test.gen_test",
    "tornado.test.simple_httpclient_test",
    "tornado.test.httpclient_test",
    "tornado.test.auth_test",
]


def _import_with_mixins_injected(names: list[str]) -> list[Any]:
    """Import the test modules while ``tornado.web.RequestHandler`` is the mixed class.

    The modules keep the mixed class in their globals (``from tornado.web import
    RequestHandler``), so handlers they define, at import or inside a test, carry
    the mixins; ``tornado.web`` gets its own class back for its internal checks.
    """
    import tornado.web

    from tornado_jsonservlet import (
        CancelOnDisconnectMixin,
        CorsMixin,
        JsonResponseMixin,
        LeanResponseMixin,
    )

    original = tornado.web.RequestHandler

    class InjectedRequestHandler(
        CancelOnDisconnectMixin, CorsMixin, JsonResponseMixin, LeanResponseMixin, original
    ):
        pass

    tornado.web.RequestHandler = InjectedRequestHandler  # type: ignore[misc]
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        tornado.web.RequestHandler = original  # type: ignore[misc]


def _worker(inject: bool) -> None:
    """Run the modules with Tornado's own runner (its warning and log checks included)."""
    if inject:
        web_test = _import_with_mixins_injected(MODULES)[0]
        from tornado_jsonservlet import CancelOnDisconnectMixin

        # Fails loudly should the injection ever stop reaching the handlers.
        assert issubclass(web_test.HelloHandler, CancelOnDisconnectMixin)
    else:
        for name in MODULES:
            importlib.import_module(name)
    from tornado.test import runtests

    sys.argv = ["runtests", *MODULES]
    runtests.main()


def _in_subprocess(inject: bool) -> tuple[int, str]:
    """``(exit status, Tornado's summary)`` of one run."""
    args = [sys.executable, __file__, "--worker"] + (["--inject"] if inject else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    lines = done.stderr.strip().splitlines()
    summary = " ".join(line for line in lines if line.startswith(("Ran ", "OK", "FAILED")))
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
    return done.returncode, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inject", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        _worker(options.inject)
        return 0
    status = 0
    for label, inject in (("as shipped", False), ("with the toolkit's mixins", True)):
        code, summary = _in_subprocess(inject)
        print(f"Tornado's tests {label}: {summary} (exit {code})")
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
