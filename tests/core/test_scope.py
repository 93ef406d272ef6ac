"""One request scope: the toolkit takes one name in the handler's namespace.

Applications mix the toolkit into base classes whose subclasses pick their own
attribute names. Every name the toolkit used before the scope existed, and a few
generic ones, are set by this handler's ``initialize()``; everything must still work.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Optional

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web

from tests.support import Probe, access_statuses, wait_until
from tornado_jsonservlet import (
    CLIENT_LEFT,
    CancelOnDisconnectMixin,
    CorsMixin,
    EventStreamMixin,
    JsonBodyMixin,
    JsonErrorMixin,
    JsonResponseMixin,
    LeanResponseMixin,
    RequestIdMixin,
)
from tornado_jsonservlet.core.connection import abort_response
from tornado_jsonservlet.core.scope import SCOPE_ATTRIBUTE
from tornado_jsonservlet.testing import RawHTTPConnection

pytestmark = pytest.mark.gen_test

#: Attributes the toolkit kept on handlers before the scope, plus generic ones.
USER_NAMES = [
    "_client_gone",
    "_stream_closed_by_server",
    "_disconnect_callbacks",
    "_disconnect_waiter",
    "_request_task",
    "_cancel_reason",
    "_cancel_in_flight",
    "_shield_depth",
    "_owned",
    "_deadline_at",
    "_json_response",
    "_json_chunks",
    "_json_received",
    "_json_decoded",
    "_json_value",
    "_pending_log",
    "_request_id",
    "_route",
    "_body_complete",
    "_xsrf_check_due",
    "_stream_started",
    "_writer",
    "_direct_writes",
    "_direct_stream",
    "_last_sent",
    "_dropping",
    "_yielded_at",
    "_last_event_id_read",
    "_last_event_id",
    "_scope",
    "_state",
    "_deadline",
    "_task",
]


class Everything(
    RequestIdMixin,
    EventStreamMixin,
    JsonErrorMixin,
    CorsMixin,
    JsonBodyMixin,
    JsonResponseMixin,
    LeanResponseMixin,
    CancelOnDisconnectMixin,
    tornado.web.RequestHandler,
):
    """Every public mixin at once, in a handler whose user picked the toolkit's old names."""

    cancel_policy = "all"

    def initialize(self, probe: Probe) -> None:
        self.probe = probe
        for name in USER_NAMES:
            setattr(self, name, f"user's {name}")
        self._writer = object()  # a csv.writer, say

    def on_finish(self) -> None:
        for name in USER_NAMES:
            if name != "_writer":
                assert getattr(self, name) == f"user's {name}", name
        self.probe.values["status"] = self.get_status()
        self.probe.values["attributes"] = set(vars(self))
        self.probe.finished.set()

    async def get(self) -> None:
        if self.get_argument("mode", "") == "events":
            await self.send_event({"n": 1}, id="1")
            self.probe.suspended.set()
            await asyncio.sleep(30)
        await self.write_json({"id": self.request_id, "last": self.last_event_id})

    async def post(self) -> None:
        if self.get_argument("mode", "") == "slow":
            self.probe.suspended.set()
            await asyncio.sleep(30)
        await self.write_json({"echo": self.json_body})


class Plain(tornado.web.RequestHandler):
    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    def get(self) -> None:
        self.probe.values["plain"] = set(vars(self))
        self.write("ok")


class Reasons(CancelOnDisconnectMixin, tornado.web.RequestHandler):
    def initialize(self, probe: Probe) -> None:
        self.probe = probe

    async def get(self) -> None:
        self.probe.values["before"] = self.cancel_reason
        async with self.shielded():
            self.probe.suspended.set()
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:  # pragma: no cover - the failure this test catches
                self.probe.hit("cancelled-inside-shield")
                raise
            self.probe.values["inside"] = self.cancel_reason
            self.probe.hit("shield-done")
        self.probe.hit("after-shield")  # never runs: the cancellation lands at the exit

    def on_finish(self) -> None:
        self.probe.values["after"] = self.cancel_reason
        self.probe.finished.set()


class WithAttributeHooks(Everything):
    """An application whose handlers compute some attributes and watch every write:
    the scope is none of their business, and neither hook may see it."""

    asked: ClassVar[list[str]] = []
    assigned: ClassVar[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        # A lazy attribute or a legacy alias, as applications have; Tornado itself
        # probes for missing attributes (hasattr), so anything else is refused.
        WithAttributeHooks.asked.append(name)
        if name == "legacy_name":
            return "lazy"
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        WithAttributeHooks.assigned.append(name)
        super().__setattr__(name, value)


class WithGetattribute(Everything):
    """An application that watches every attribute read: it sees Tornado's own
    private reads (``_finished``, ``_headers``) and the toolkit's alike, and the
    handler answers exactly as without the hook."""

    read: ClassVar[set[str]] = set()

    def __getattribute__(self, name: str) -> Any:
        WithGetattribute.read.add(name)
        return super().__getattribute__(name)


@pytest.fixture
def app(probe: Probe) -> tornado.web.Application:
    return tornado.web.Application(
        [
            ("/all", Everything, {"probe": probe}),
            ("/hooks", WithAttributeHooks, {"probe": probe}),
            ("/getattribute", WithGetattribute, {"probe": probe}),
            ("/plain", Plain, {"probe": probe}),
            ("/r", Reasons, {"probe": probe}),
        ],
        cors_origins=["https://example.com"],
    )


async def _post_broken_json(
    http_client: Any, url: str, headers: Optional[dict[str, str]] = None
) -> Any:
    """POST a body that is not JSON (the error path), without raising for the 400."""
    return await http_client.fetch(
        url,
        method="POST",
        body=b"{",
        raise_error=False,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


async def test_every_mixin_works_beside_the_users_names(http_client, base_url, probe):
    response = await http_client.fetch(
        f"{base_url}/all", headers={"Last-Event-ID": "7", "X-Request-ID": "abc-123"}
    )
    assert response.code == 200
    assert response.body == b'{"id":"abc-123","last":"7"}'
    assert probe.values["status"] == 200
    body = await http_client.fetch(
        f"{base_url}/all",
        method="POST",
        body=b'{"a": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert body.body == b'{"echo":{"a":1}}'
    bad = await _post_broken_json(http_client, f"{base_url}/all")
    assert bad.code == 400
    assert b'"errcode":"BAD_JSON"' in bad.body


async def test_the_handler_carries_one_toolkit_attribute(http_client, base_url, probe):
    await http_client.fetch(f"{base_url}/plain")
    await http_client.fetch(f"{base_url}/all")
    added = probe.values["attributes"] - probe.values["plain"] - set(USER_NAMES) - {"probe"}
    assert added == {SCOPE_ATTRIBUTE}


@pytest.mark.parametrize("path", ["/all?mode=events", "/all?mode=slow"])
async def test_a_departure_is_still_cancelled_and_logged_once(port, probe, caplog, path):
    method = "POST" if "slow" in path else "GET"
    conn = await RawHTTPConnection.open(port)
    await conn.send_request(method, path, body=b"{}", headers={"Content-Type": "application/json"})
    await probe.wait_suspended()
    conn.close("rst")
    await probe.wait_finished()
    assert probe.values["status"] == 499
    assert access_statuses(caplog) == [499]


async def test_cancel_reason_and_a_shield_delivered_once(port, probe, caplog):
    conn = await RawHTTPConnection.open(port)
    await conn.send_request("GET", "/r")
    await probe.wait_suspended()
    conn.close("fin")
    await probe.wait_finished()
    assert probe.values["before"] is None
    assert probe.values["inside"] is CLIENT_LEFT
    assert probe.values["after"] is CLIENT_LEFT
    assert probe.count("shield-done") == 1
    assert probe.count("cancelled-inside-shield") == 0
    assert probe.count("after-shield") == 0
    await wait_until(lambda: access_statuses(caplog) == [499], what="one 499")


def test_scope_names_are_out_of_the_users_way() -> None:
    assert SCOPE_ATTRIBUTE.startswith("_tornado_jsonservlet")
    assert not any(hasattr(Everything, name) for name in USER_NAMES), [
        name for name in USER_NAMES if hasattr(Everything, name)
    ]


def test_toolkit_classes_take_no_private_name_an_application_could_pick() -> None:
    """Beyond attributes: every private method or attribute the toolkit's handler
    classes define is prefixed, or overrides one of Tornado's own (through the adapter)."""
    import tornado_jsonservlet
    from tornado_jsonservlet import EventStreamServlet, HtmlServlet, JsonServlet

    tornado_names = set(dir(tornado.web.RequestHandler))
    offenders = []
    for cls in (Everything, JsonServlet, HtmlServlet, EventStreamServlet):
        for klass in cls.__mro__:
            if not klass.__module__.startswith(tornado_jsonservlet.__name__):
                continue
            for name in vars(klass):
                private = name.startswith("_") and not name.startswith("__")
                if not private or name.startswith("_jsonservlet_") or name in tornado_names:
                    continue
                if name == SCOPE_ATTRIBUTE or name.startswith("_tornado_jsonservlet"):
                    continue
                offenders.append(f"{klass.__qualname__}.{name}")
    assert not offenders, sorted(set(offenders))


async def test_an_applications_attribute_hooks_never_see_the_scope(http_client, base_url, probe):
    WithAttributeHooks.asked.clear()
    WithAttributeHooks.assigned.clear()
    for _ in range(2):
        response = await http_client.fetch(f"{base_url}/hooks", headers={"X-Request-ID": "r-1"})
        assert response.code == 200
        assert response.body == b'{"id":"r-1","last":null}'
    bad = await _post_broken_json(http_client, f"{base_url}/hooks")
    assert bad.code == 400
    assert SCOPE_ATTRIBUTE not in WithAttributeHooks.asked
    assert SCOPE_ATTRIBUTE not in WithAttributeHooks.assigned
    assert "probe" in WithAttributeHooks.assigned  # the hook did run, for the user's own


async def test_a_getattribute_hook_changes_nothing(http_client, base_url, probe):
    WithGetattribute.read.clear()
    answers = []
    for path in ("/all", "/getattribute"):
        ok = await http_client.fetch(f"{base_url}{path}", headers={"X-Request-ID": "r-2"})
        bad = await _post_broken_json(http_client, f"{base_url}{path}", {"X-Request-ID": "r-2"})
        answers.append((ok.code, ok.body, bad.code, bad.body))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200
    assert {"_finished", "_headers"} <= WithGetattribute.read  # the hook did run


def test_every_public_mixin_declares_the_scope_on_the_class() -> None:
    """A handler's scope is read before it exists; found on the class as None, the
    read never reaches an application's __getattr__ (nor builds the instance's
    __dict__, which would slow every attribute access on the handler)."""
    import tornado_jsonservlet

    handler_classes = [
        getattr(tornado_jsonservlet, name)
        for name in tornado_jsonservlet.__all__
        if isinstance(getattr(tornado_jsonservlet, name), type)
        and issubclass(getattr(tornado_jsonservlet, name), tornado.web.RequestHandler)
        and name != "MetricsHandler"  # serves the metrics; no scope of its own
    ]
    assert len(handler_classes) > 10
    missing = [
        cls.__name__ for cls in handler_classes if SCOPE_ATTRIBUTE not in _class_attributes(cls)
    ]
    assert not missing
    assert all(getattr(cls, SCOPE_ATTRIBUTE) is None for cls in handler_classes)


def _class_attributes(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ for name in vars(klass)}


class PlainWithHook(tornado.web.RequestHandler):
    """No toolkit mixin: a plain handler given to one of the toolkit's helpers."""

    asked: ClassVar[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        PlainWithHook.asked.append(name)
        raise AttributeError(name)

    def get(self) -> None:
        self.write("partial")
        self.flush()
        abort_response(self)


@pytest.fixture
def plain_app() -> tornado.web.Application:
    return tornado.web.Application([(r"/", PlainWithHook)])


async def test_a_plain_handlers_getattr_never_sees_the_scope(plain_app):
    server = tornado.httpserver.HTTPServer(plain_app)
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    PlainWithHook.asked.clear()
    try:
        with pytest.raises(tornado.httpclient.HTTPClientError):
            await tornado.httpclient.AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{sock.getsockname()[1]}/"
            )
    finally:
        server.stop()
    assert PlainWithHook.asked  # the hook is live: Tornado itself probes through it
    assert SCOPE_ATTRIBUTE not in PlainWithHook.asked
