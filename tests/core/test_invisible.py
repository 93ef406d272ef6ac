"""Mixed into an application's handlers, the toolkit leaves the application's methods alone.

Applications introspect their handlers: jupyter_server reads ``method.__code__`` to
recognise ``@tornado.web.authenticated``, others ask ``inspect.iscoroutinefunction``
or follow ``__wrapped__``. Every mixin and servlet base must therefore leave every
method a subclass defines as the very same function object.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable
from unittest import mock

import pytest
import tornado.httputil
import tornado.web

from tornado_jsonservlet import (
    CancelOnDisconnectMixin,
    ClientConnectionMixin,
    CorsMixin,
    HtmlErrorMixin,
    HtmlServlet,
    JsonBodyMixin,
    JsonErrorMixin,
    JsonResponseMixin,
    JsonServlet,
    LeanResponseMixin,
    NegotiatedErrorMixin,
    SafeWriteMixin,
    cancellable,
    uncancellable,
)

MIXINS = [
    ClientConnectionMixin,
    SafeWriteMixin,
    CancelOnDisconnectMixin,
    JsonErrorMixin,
    HtmlErrorMixin,
    NegotiatedErrorMixin,
    CorsMixin,
    JsonBodyMixin,
    JsonResponseMixin,
    LeanResponseMixin,
]


def traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An application's own decorator: the toolkit must keep its ``__wrapped__``."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await fn(self, *args, **kwargs)

    return wrapper


def user_methods() -> dict[str, Callable[..., Any]]:
    """Fresh function objects, as a class body would define them."""

    async def prepare(self: Any) -> None:
        pass

    @tornado.web.authenticated
    async def get(self: Any) -> None:
        pass

    @traced
    async def post(self: Any) -> None:
        pass

    @cancellable
    async def put(self: Any) -> None:
        pass

    @uncancellable
    def delete(self: Any) -> None:
        pass

    def on_connection_close(self: Any) -> None:
        pass

    def write_error(self: Any, status_code: int, **kwargs: Any) -> None:
        pass

    def log_exception(self: Any, *args: Any) -> None:
        pass

    def on_finish(self: Any) -> None:
        pass

    async def on_GET(self: Any) -> None:
        pass

    def on_POST(self: Any) -> None:
        pass

    return {name: fn for name, fn in locals().items() if callable(fn)}


def assert_untouched(cls: type, methods: dict[str, Callable[..., Any]]) -> None:
    for name, original in methods.items():
        found = cls.__dict__[name]
        assert found is original, f"{cls.__name__}.{name} was replaced"
        assert getattr(cls, name) is original
        assert found.__code__ is original.__code__
        assert inspect.iscoroutinefunction(found) == inspect.iscoroutinefunction(original)
        assert inspect.unwrap(found) is inspect.unwrap(original)


@pytest.mark.parametrize("mixin", MIXINS, ids=lambda m: m.__name__)
def test_every_mixin_leaves_user_methods_identical(mixin: type) -> None:
    methods = user_methods()
    cls = type("AppHandler", (mixin, tornado.web.RequestHandler), dict(methods))
    assert_untouched(cls, methods)
    # ...and in a subclass of the application's base handler, the usual layout.
    more = user_methods()
    sub = type("AppSubHandler", (cls,), dict(more))
    assert_untouched(sub, more)
    assert_untouched(cls, methods)


@pytest.mark.parametrize("base", [JsonServlet, HtmlServlet], ids=lambda b: b.__name__)
def test_servlet_bases_leave_user_methods_identical(base: type) -> None:
    methods = user_methods()
    cls = type("AppServlet", (base,), dict(methods))
    assert_untouched(cls, methods)


def test_authenticated_is_still_recognisable_by_its_code() -> None:
    # How jupyter_server tells an authenticated handler method from an open one.
    marker_code = tornado.web.authenticated(lambda self: None).__code__

    class Handler(CancelOnDisconnectMixin, JsonErrorMixin, tornado.web.RequestHandler):
        @tornado.web.authenticated
        async def get(self) -> None:
            pass

    assert Handler.get.__code__ is marker_code
    assert inspect.iscoroutinefunction(inspect.unwrap(Handler.get))


def test_decorators_return_the_function_itself() -> None:
    async def get(self: Any) -> None:
        pass

    assert cancellable(get) is get
    assert uncancellable(get) is get
    assert inspect.iscoroutinefunction(get)


def _handler_with_connection(connection: Any) -> CancelOnDisconnectMixin:
    class Handler(CancelOnDisconnectMixin, tornado.web.RequestHandler):
        pass

    app = tornado.web.Application()
    start = tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1")
    headers = tornado.httputil.HTTPHeaders({"Host": "example.test"})
    request = tornado.httputil.HTTPServerRequest(
        connection=connection, start_line=start, headers=headers
    )
    return Handler(app, request)


def test_handler_built_with_a_test_double_counts_as_connected() -> None:
    handler = _handler_with_connection(mock.MagicMock())
    assert handler.client_disconnected is False


def test_handler_built_on_a_really_closed_stream_counts_as_disconnected() -> None:
    connection = mock.MagicMock()
    connection.stream.closed.return_value = True
    handler = _handler_with_connection(connection)
    assert handler.client_disconnected is True


def test_configuration_mistakes_are_reported_at_class_creation() -> None:
    with pytest.raises(TypeError, match="cancel_policy"):
        type("Old", (CancelOnDisconnectMixin,), {"cancel_on_disconnect": False})
    with pytest.raises(ValueError, match="cancel_policy must be one of"):
        type("Bad", (CancelOnDisconnectMixin,), {"cancel_policy": "mutating"})

    async def prepare(self: Any) -> None:
        pass

    with pytest.raises(TypeError, match="shielded"):
        type("Marked", (CancelOnDisconnectMixin,), {"prepare": uncancellable(prepare)})
