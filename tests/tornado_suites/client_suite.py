"""Run Tornado's own HTTP client tests against ``CancellableHTTPClient``.

Usage::

    python tests/tornado_suites/client_suite.py [--client=simple] [unittest names...]

``CancellableHTTPClient`` promises to behave exactly as ``SimpleAsyncHTTPClient`` as
long as nobody cancels a request. Tornado ships the tests that define that behaviour
inside the package: ``tornado.test.httpclient_test`` (tests common to every client;
they use whichever class ``AsyncHTTPClient`` is configured with) and
``tornado.test.simple_httpclient_test`` (tests that construct
``SimpleAsyncHTTPClient`` by name). This script configures ``AsyncHTTPClient`` with
the cancellable client, rebinds the name ``SimpleAsyncHTTPClient`` inside the second
module to it, and runs both through Tornado's own runner, which also fails the run if
anything is logged or written to stderr.

One test is replaced, because it checks the very behaviour the client exists to
change: ``test_error_after_cancel`` expects ``Exception after Future was cancelled``
to be logged at ERROR after a cancelled fetch gets its 404. The replacement cancels
the same fetch and checks that nothing is logged and that its slot is free at once.

``--client=simple`` runs the same tests on Tornado's client, for comparison.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tornado.testing import gen_test

CANCELLABLE = "tornado_jsonservlet.outbound.CancellableHTTPClient"
MODULES = ["tornado.test.simple_httpclient_test", "tornado.test.httpclient_test"]


@gen_test
async def _cancel_is_quiet(self: Any) -> None:
    """A cancelled fetch is aborted: no ERROR log (the runner fails on any), slot freed."""
    future = self.http_client.fetch(self.get_url("/404"))
    assert future.cancel()
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert self.http_client.active == {}
    assert len(self.http_client.queue) == 0


def main(argv: list[str]) -> None:
    client = "cancellable"
    rest = []
    for arg in argv:
        if arg.startswith("--client="):
            client = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if client not in ("cancellable", "simple"):
        raise SystemExit(f"--client must be cancellable or simple, not {client!r}")

    from tornado.test import httpclient_test, runtests, simple_httpclient_test

    from tornado_jsonservlet.outbound import CancellableHTTPClient

    options = []
    if client == "cancellable":
        simple_httpclient_test.SimpleAsyncHTTPClient = CancellableHTTPClient  # type: ignore[misc]
        httpclient_test.HTTPClientCommonTestCase.test_error_after_cancel = (  # type: ignore[method-assign]
            _cancel_is_quiet
        )
        options.append(f"--httpclient={CANCELLABLE}")
    sys.argv = [sys.argv[0], *options, *(rest or MODULES)]
    runtests.main()


if __name__ == "__main__":
    main(sys.argv[1:])
