"""Servlets: handlers whose ``on_GET``/``on_POST``/... return the response instead of writing it.

::

    class UserServlet(JsonServlet):
        PATTERNS = ["/users/{user_id:int}"]

        async def on_GET(self, user_id: int):
            user = await db.get_user(user_id)
            if user is None:
                raise NotFound("No such user")
            return user                      # 200 {"id": ..., ...}

        async def on_POST(self, user_id: int):
            body = self.json_body
            return 201, await db.update(user_id, body)

A method receives the path parameters as keyword arguments, percent-decoded and
converted (see :mod:`~tornado_jsonservlet.registry`), and returns ``(status, body)``,
a body alone (status 200), or ``None`` when it wrote the response itself. It may be
sync or async. ``HEAD`` is served by ``on_GET`` without a body, ``OPTIONS`` answers
204 with ``Allow`` (plus CORS preflight headers when CORS is configured), and any
other method the servlet lacks gets 405 with ``Allow``.

A servlet follows the cancellation policy of
:mod:`~tornado_jsonservlet.disconnect`: a GET is cancelled when its client
disconnects, an ``on_POST`` only when marked ``@cancellable``. Its errors are rendered as JSON
(:class:`JsonServlet`) or HTML (:class:`HtmlServlet`), and its request body is read
with the size limit enforced while it arrives.

Tornado's conventions hold for servlets as for any handler:

* **XSRF.** With the ``xsrf_cookies`` setting, a ``POST``/``PUT``/``PATCH``/``DELETE``
  must carry the token as the ``_xsrf`` form field or the ``X-XSRFToken`` header.
  Tornado checks it before ``prepare()``, which for a streamed body is before the
  form field has arrived; a servlet therefore runs the same check once the body is
  complete, before its method is called. A failure is a 403 whose ``errcode`` says
  what is wrong: ``XSRF_MISSING`` (no token sent), ``XSRF_COOKIE_MISSING`` (no
  ``_xsrf`` cookie) or ``XSRF_MISMATCH``.
* **HEAD** runs ``on_GET`` for its status and headers; a :class:`JsonServlet` never
  encodes the document (see :mod:`~tornado_jsonservlet.json_handlers`).
* **Access log.** Lines keep Tornado's format. The servlet's name is available to a
  ``log_function`` setting as ``handler.servlet_name`` and is what metrics count by.
"""

from __future__ import annotations

import decimal
import functools
import inspect
import re
import sys
import types
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import jinja2
import tornado.httputil
import tornado.web

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.cancellation import CancelOnDisconnectMixin
from tornado_jsonservlet.core.headers import parse_media_type
from tornado_jsonservlet.core.scope import RequestScope, scope_of
from tornado_jsonservlet.errors.cors import CorsMixin
from tornado_jsonservlet.errors.exceptions import BadRequest, Forbidden, MethodNotAllowed, NotFound
from tornado_jsonservlet.errors.rendering import HtmlErrorMixin, JsonErrorMixin
from tornado_jsonservlet.jsonio.bodies import JsonBodyMixin
from tornado_jsonservlet.jsonio.codec import DECIMAL_FORMATS, encode
from tornado_jsonservlet.jsonio.lean import LeanResponseMixin
from tornado_jsonservlet.jsonio.responses import JsonResponseMixin
from tornado_jsonservlet.production.metrics import ServletMetrics, method_label
from tornado_jsonservlet.routing.patterns import contains_control
from tornado_jsonservlet.routing.signatures import (
    DISPATCHER_COPY_MARK,
    METHOD_ATTRIBUTES,
    method_attribute,
    signature_of,
    signature_of_function,
)

__all__ = [
    "SERVLET_METHODS",
    "HtmlServlet",
    "JsonServlet",
    "ServletRoute",
    "implemented_methods",
    "is_servlet",
    "remember_route",
]

#: The methods a servlet implements as ``on_<METHOD>``.
SERVLET_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

ROUTE_KWARG = "_tornado_jsonservlet_route"

_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


@dataclass(frozen=True)
class ServletRoute:
    """What the registry tells a servlet about the URL pattern that matched."""

    pattern: str
    converters: Mapping[str, Callable[[str], Any]] = field(default_factory=dict)
    metrics: Optional[ServletMetrics] = None


def implemented_methods(cls: type) -> tuple[str, ...]:
    """The methods a servlet class answers: its ``on_<METHOD>``s, HEAD with GET, OPTIONS."""
    found = [m for m in SERVLET_METHODS if callable(getattr(cls, f"on_{m}", None))]
    if "GET" in found:
        found.insert(1, "HEAD")
    return (*found, "OPTIONS")


def is_servlet(cls: type) -> bool:
    """Whether ``cls`` is a servlet (dispatching to ``on_<METHOD>``), not a plain handler."""
    return isinstance(cls, type) and issubclass(cls, _ServletBase)


class _ServletState:
    """A servlet request's state in its scope (``scope.servlet``)."""

    __slots__ = ("body_complete", "returns", "route", "xsrf_check_due")

    def __init__(self, route: ServletRoute) -> None:
        self.route = route
        self.body_complete = False
        self.xsrf_check_due = False
        self.returns: Any = None  # the method's return annotation, when it is a typed one


_NO_ROUTE = ServletRoute(pattern="")

# Every route a registry built, by the servlet class it leads to and the rule's
# regex, latest last: for a rule an application rebuilt from a registry's URLSpec
# (to wrap the handler class in a subclass, say), whose matcher does not hand the
# route over. When rules of several registries lead one class to matching regexes,
# the latest urlspecs() call's route is taken.
_routes_by_servlet: dict[type, dict[str, tuple[re.Pattern[str], ServletRoute]]] = {}


def remember_route(servlet: type, regex: re.Pattern[str], route: ServletRoute) -> None:
    """Record that rules matching ``regex`` lead to ``servlet`` with ``route``."""
    routes = _routes_by_servlet.setdefault(servlet, {})
    routes.pop(regex.pattern, None)  # re-inserted last: the latest wins
    routes[regex.pattern] = (regex, route)


def _remembered_route(cls: type, path: str) -> Optional[ServletRoute]:
    for klass in cls.__mro__:
        routes = _routes_by_servlet.get(klass)
        if routes:
            for regex, route in reversed(routes.values()):
                if regex.match(path):
                    return route
    return None


@tornado_internals.stream_request_body_when_sent
class _ServletBase(
    CancelOnDisconnectMixin,
    CorsMixin,
    JsonBodyMixin,
    LeanResponseMixin,
    tornado_internals.EagerlyStartedRequest,
    tornado.web.RequestHandler,
):
    """Shared dispatch; use :class:`JsonServlet` or :class:`HtmlServlet`."""

    #: Path patterns used when the registry is not given any (a list or a tuple).
    PATTERNS: ClassVar[Sequence[str]] = ()
    #: The status of every validation failure of a typed method's inputs: 400, or
    #: 422 for clients that expect it. None: the ``validation_status`` application
    #: setting, else 400.
    validation_status: ClassVar[Optional[int]] = None
    #: Name for logs and ``reverse_url``; defaults to the class name.
    servlet_name: ClassVar[str] = "_ServletBase"
    #: ``(method, ...)``, derived from the ``on_<METHOD>`` methods present.
    allowed_methods: ClassVar[tuple[str, ...]] = ("OPTIONS",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "servlet_name" not in cls.__dict__:
            cls.servlet_name = cls.__name__
        cls.allowed_methods = implemented_methods(cls)
        if cls.validation_status not in (None, 400, 422):
            raise TypeError(
                f"{cls.__name__}.validation_status must be 400 or 422, not "
                f"{cls.validation_status!r}"
            )
        _name_dispatchers_after(cls)

    def __init__(
        self,
        application: tornado.web.Application,
        request: tornado.httputil.HTTPServerRequest,
        **kwargs: Any,
    ) -> None:
        # The registry's matcher left the route on the request; a rule built by hand
        # may still pass it as a keyword argument, and a rule rebuilt from a
        # registry's URLSpec (same regex, another matcher) finds it by its regex.
        route = (
            (kwargs.pop(ROUTE_KWARG, None) if kwargs else None)
            or tornado_internals.route_info(request)
            or _remembered_route(type(self), request.path)
            or _NO_ROUTE
        )
        (self._tornado_jsonservlet_scope or scope_of(self)).servlet = _ServletState(route)
        super().__init__(application, request, **kwargs)

    # -- dispatch ----------------------------------------------------------------

    def _jsonservlet_verb_function(self) -> Any:
        # The cancellation policy follows the servlet's own method: ``@cancellable``
        # goes on ``on_POST``, not on the dispatching ``post``.
        method = self.request.method or ""
        if method == "OPTIONS":
            return None
        return getattr(type(self), method_attribute("GET" if method == "HEAD" else method), None)

    async def get(self, *args: str, **kwargs: str) -> None:
        """Dispatch to ``on_GET`` with the converted path parameters."""
        await self._jsonservlet_dispatch("GET", kwargs)

    async def head(self, *args: str, **kwargs: str) -> None:
        """Dispatch to ``on_GET``; the body is not sent (nor, for JSON, encoded)."""
        await self._jsonservlet_dispatch("GET", kwargs)

    async def post(self, *args: str, **kwargs: str) -> None:
        """Dispatch to ``on_POST`` with the converted path parameters."""
        await self._jsonservlet_dispatch("POST", kwargs)

    async def put(self, *args: str, **kwargs: str) -> None:
        """Dispatch to ``on_PUT`` with the converted path parameters."""
        await self._jsonservlet_dispatch("PUT", kwargs)

    async def patch(self, *args: str, **kwargs: str) -> None:
        """Dispatch to ``on_PATCH`` with the converted path parameters."""
        await self._jsonservlet_dispatch("PATCH", kwargs)

    async def delete(self, *args: str, **kwargs: str) -> None:
        """Dispatch to ``on_DELETE`` with the converted path parameters."""
        await self._jsonservlet_dispatch("DELETE", kwargs)

    async def options(self, *args: str, **kwargs: str) -> None:
        """Answer 204 with ``Allow`` (and CORS preflight headers when configured)."""
        self.set_header("Allow", ", ".join(self.allowed_methods))
        self.set_cors_preflight_headers(self.allowed_methods)
        self.set_status(204)
        self.finish()

    async def _jsonservlet_dispatch(self, method: str, raw_params: Mapping[str, str]) -> None:
        scope: RequestScope = self._tornado_jsonservlet_scope or scope_of(self)
        state: _ServletState = scope.servlet
        if scope.json_body is None:
            # Nothing was streamed (a request without a body, the common case): the
            # body is Tornado's b"", and there is no form to parse.
            state.body_complete = True
        else:
            self._jsonservlet_complete_body()
        if state.xsrf_check_due:
            state.xsrf_check_due = False
            self.check_xsrf_cookie()
        attribute = METHOD_ATTRIBUTES.get(method) or f"on_{method}"
        target = getattr(self, attribute, None)
        if target is None:
            raise MethodNotAllowed(self.allowed_methods)
        cls = type(self)
        if raw_params:
            params = self._jsonservlet_convert_params(raw_params)
            signature = signature_of(cls, method, raw_params.keys(), self.servlet_name)
        else:
            # A pattern without parameters (the common case): the path check of
            # _jsonservlet_convert_params, and the signature by its cache key.
            _check_path(self.request.path)
            params = {}
            signature = signature_of_function(
                cls, method, getattr(cls, attribute), (), self.servlet_name
            )
        if signature.typed:
            params.update(signature.bind(self, self._jsonservlet_validation_status()))
        state.returns = signature.returns
        result = target(**params) if params else target()
        if type(result) is types.CoroutineType or (
            type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result)
        ):
            result = await result
        if result is None or tornado_internals.is_finished(self):
            return
        if isinstance(result, tuple):
            if len(result) != 2 or not isinstance(result[0], int):
                raise TypeError(f"{self.servlet_name}.on_{method} must return (status, body)")
            status, body = result
        else:
            status, body = 200, result
        if status in (204, 304):
            # HTTP forbids a body here; ``(204, None)`` is how a method says "no content".
            if body is not None:
                raise TypeError(f"{self.servlet_name}.on_{method}: a {status} has no body")
            self.set_status(status)
            self.finish()
            return
        await self.send_body(status, body)

    def _jsonservlet_validation_status(self) -> int:
        status = self.validation_status
        if status is None:
            status = self.settings.get("validation_status", 400)
        if status not in (400, 422):
            raise ValueError(f"validation_status must be 400 or 422, not {status!r}")
        return int(status)

    def _jsonservlet_convert_params(self, raw_params: Mapping[str, str]) -> dict[str, Any]:
        _check_path(self.request.path)
        if not raw_params:
            return {}
        route: ServletRoute = scope_of(self).servlet.route
        params: dict[str, Any] = {}
        for name, value in raw_params.items():
            converter = route.converters.get(name)
            try:
                if converter is not None:
                    params[name] = converter(value)
                elif contains_control(value):
                    # A raw regex's value has no converter to check it; no
                    # control character reaches a servlet either way.
                    raise ValueError("control character")
                else:
                    params[name] = value
            except ValueError:
                # Not a valid value of the parameter's type (for a str: a "/" from
                # an encoded %2F, a dot segment): the path does not match.
                raise NotFound("Unrecognized request", "UNRECOGNIZED") from None
        return params

    def check_xsrf_cookie(self) -> None:
        """Tornado's XSRF check, run once the streamed body is complete.

        Tornado calls this before ``prepare()``, when an ``_xsrf`` form field cannot
        have arrived yet; the call then only marks the check as due, and
        ``_dispatch`` calls this method again (overrides included) with the body
        in place. Failures are 403s with an ``errcode`` naming what is wrong.
        """
        state: _ServletState = scope_of(self).servlet
        if not state.body_complete:
            state.xsrf_check_due = True
            return
        token = (
            self.get_argument("_xsrf", None)
            or self.request.headers.get("X-Xsrftoken")
            or self.request.headers.get("X-Csrftoken")
        )
        if not token:
            raise Forbidden(
                "XSRF token missing: send the _xsrf form field or the X-XSRFToken header",
                "XSRF_MISSING",
            )
        if not self.get_cookie(self.settings.get("xsrf_cookie_name", "_xsrf")):
            raise Forbidden(
                "XSRF cookie missing: load a page that sets it before sending this request",
                "XSRF_COOKIE_MISSING",
            )
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            raise Forbidden("XSRF token does not match the _xsrf cookie", "XSRF_MISMATCH") from None

    def _jsonservlet_complete_body(self) -> None:
        """Make the streamed body look like a normal one to code that reads it."""
        scope = scope_of(self)
        scope.servlet.body_complete = True
        if scope.json_body is None:
            return  # nothing arrived: the body is Tornado's b"", and there is no form
        body = self._jsonservlet_body_bytes()
        self.request.body = body
        content_type = self.request.headers.get("Content-Type", "")
        media = parse_media_type(content_type)
        # Only well-formed form types reach Tornado's parser: its parameter parsing
        # is quadratic on Tornado 6.4, so an unbounded header must not get there.
        # Any other body is left for json_body, which answers 415 if it is not JSON.
        if body and media is not None and media.essence in _FORM_TYPES:
            try:
                tornado.httputil.parse_body_arguments(
                    content_type,
                    body,
                    self.request.body_arguments,
                    self.request.files,
                    self.request.headers,
                )
            except tornado.httputil.HTTPInputError as error:
                raise BadRequest(f"Invalid request body: {error}") from None
            for name, values in self.request.body_arguments.items():
                self.request.arguments.setdefault(name, []).extend(values)

    def send_body(self, status: int, body: Any) -> Awaitable[None]:
        """Send a method's return value; subclasses define the body format."""
        raise NotImplementedError

    # -- logs and metrics ------------------------------------------------------

    def _jsonservlet_log(self, write_access_line: Callable[[], None]) -> None:
        super()._jsonservlet_log(write_access_line)
        metrics = (self._tornado_jsonservlet_scope or scope_of(self)).servlet.route.metrics
        if metrics is not None:
            metrics.observe(
                self.servlet_name,
                method_label(self.request.method or ""),
                self.get_status(),
                self.request.request_time(),
            )


def _check_path(path: str) -> None:
    """Refuse a request path that is not printable ASCII.

    Tornado reads the request line as Latin-1 and re-encodes it as UTF-8 when
    decoding parameters, so a raw non-ASCII byte would reach the servlet as
    mojibake. Clients percent-encode; anything else is refused.
    """
    if not _PRINTABLE_ASCII.fullmatch(path):
        raise BadRequest("The request path must be ASCII; percent-encode other characters")


# Results that are never awaitable: checked by type first, which costs less than
# inspect.isawaitable on every request.
_PLAIN_RESULTS = frozenset({dict, list, tuple, type(None), str, bytes, int})
_DISPATCHERS = ("get", "head", "post", "put", "patch", "delete", "options")
_NAMED_COPY = DISPATCHER_COPY_MARK


def _name_dispatchers_after(cls: type[_ServletBase]) -> None:
    """Give ``cls`` its own copies of the dispatching ``get``/``post``/... methods.

    Error monitors and tracers name a request after the handler method Tornado
    calls (Sentry's Tornado integration reports ``module.Class.get``). Inherited,
    every servlet's request would be ``_ServletBase.get``. A copy shares the code
    and differs only in ``__qualname__`` and ``__module__``, which name the servlet.
    A method the servlet defines itself is left alone.
    """
    for verb in _DISPATCHERS:
        if verb in cls.__dict__:
            continue
        inherited = getattr(cls, verb)
        if inherited is not _ServletBase.__dict__[verb] and not getattr(
            inherited, _NAMED_COPY, False
        ):
            continue  # a base servlet of the application's defines it
        shared: Any = _ServletBase.__dict__[verb]
        copy = types.FunctionType(
            shared.__code__, shared.__globals__, verb, shared.__defaults__, shared.__closure__
        )
        copy.__kwdefaults__ = shared.__kwdefaults__
        copy.__annotations__ = shared.__annotations__
        copy.__doc__ = shared.__doc__
        copy.__qualname__ = f"{cls.__qualname__}.{verb}"
        copy.__module__ = cls.__module__
        setattr(copy, _NAMED_COPY, True)
        setattr(cls, verb, copy)


def _allow_on_405(handler: Any, error: tornado.web.HTTPError) -> tornado.web.HTTPError:
    """Tornado's own 405 (a method outside SUPPORTED_METHODS) gets ``Allow`` too."""
    if error.status_code == 405 and not isinstance(error, MethodNotAllowed):
        return MethodNotAllowed(handler.allowed_methods)
    return error


class JsonServlet(JsonErrorMixin, JsonResponseMixin, _ServletBase):
    """A servlet whose bodies are JSON and whose errors are ``{"errcode", "error"}``.

    .. versionadded:: 0.1
    """

    def send_body(self, status: int, body: Any) -> Awaitable[None]:
        """Send the method's return value with
        :meth:`~tornado_jsonservlet.JsonResponseMixin.write_json`.

        A plain method returning an awaitable, so that a small response costs no
        coroutine of its own; an override may be ``async def`` and await
        ``super().send_body(...)``.
        """
        returns = (self._tornado_jsonservlet_scope or scope_of(self)).servlet.returns
        if returns is not None and self.request.method != "HEAD":
            msgspec = sys.modules.get("msgspec")
            if msgspec is not None and not isinstance(body, (dict, list)):
                data = _encode_typed(
                    msgspec,
                    body,
                    self.settings.get("json_default"),
                    self.settings.get("json_decimal", "string"),
                )
                self._jsonservlet_start_json(status)
                return self.finish(data)
        return self.write_json(body, status)


def _encode_typed(msgspec: Any, body: Any, hook: Any, decimals: str = "string") -> bytes:
    """A typed return value (a Struct, a dataclass...) encoded by msgspec in one pass.

    msgspec writes NaN and infinity as ``null``, as orjson does: a document holding
    a ``null`` is checked by the codec, which refuses them with its usual error.
    ``Decimal`` follows the ``json_decimal`` setting, as with the codec.
    """
    if decimals not in DECIMAL_FORMATS:
        raise ValueError(f"json_decimal must be 'string' or 'number', not {decimals!r}")
    try:
        data: bytes = _typed_encoder(msgspec, hook, decimals).encode(body)
    except (TypeError, msgspec.EncodeError) as error:
        raise TypeError(f"cannot encode the return value as JSON: {error}") from None
    except ValueError:
        data = b"null"  # a NaN or infinite Decimal as a number: the codec says so
    if b"null" in data:
        # NaN and infinity: the codec refuses them with its usual error.
        encode(
            msgspec.to_builtins(body, enc_hook=_enc_hook(hook), builtin_types=(decimal.Decimal,)),
            default=hook,
            decimals=decimals,
        )
    return data


@functools.lru_cache(maxsize=16)
def _typed_encoder(msgspec: Any, hook: Any, decimals: str) -> Any:
    return msgspec.json.Encoder(enc_hook=_enc_hook(hook), decimal_format=decimals)


@functools.lru_cache(maxsize=8)
def _enc_hook(hook: Any) -> Callable[[Any], Any]:
    def enc_hook(value: Any) -> Any:
        dump = getattr(value, "model_dump", None)
        if dump is not None and hasattr(type(value), "model_fields"):
            return dump(mode="json")  # a pydantic model inside a typed return
        if hook is not None:
            return hook(value)
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    return enc_hook


@functools.cache
def _template_environment(template_path: str) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(template_path), autoescape=True)


class HtmlServlet(HtmlErrorMixin, _ServletBase):
    """A servlet whose bodies are HTML (``str`` or ``bytes``) and whose errors are pages.

    :meth:`render_template` renders a jinja2 template (autoescaped) from the
    application's ``template_path``; return its result from ``on_GET``.

    .. versionadded:: 0.1
    """

    async def send_body(self, status: int, body: Any) -> None:
        """Send a ``str`` or ``bytes`` return value as ``text/html``.

        :raises TypeError: any other type (a bug in the servlet: a 500).
        """
        if not isinstance(body, (str, bytes)):
            raise TypeError(
                f"{self.servlet_name} must return str or bytes, not {type(body).__name__}"
            )
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        await self.finish(body)

    def render_template(self, name: str, **context: Any) -> str:
        """Render the jinja2 template ``name`` from the application's ``template_path``
        (autoescaped) with ``context``; return the result from ``on_GET``.

        :raises RuntimeError: the application has no ``template_path``.
        """
        template_path = self.get_template_path()
        if template_path is None:
            raise RuntimeError("render_template needs the application's template_path setting")
        return _template_environment(template_path).get_template(name).render(context)


for _servlet_class in (JsonServlet, HtmlServlet):
    _servlet_class.add_error_handler(tornado.web.HTTPError, _allow_on_405)
