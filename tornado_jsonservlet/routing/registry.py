"""The servlet registry: path patterns in, ``tornado.web.URLSpec``s out.

::

    registry = ServletRegistry()
    registry.register(UserServlet)                          # PATTERNS from the class
    registry.register(ItemServlet, ["/items/{item_id:int}"], store=store)

    @registry.route("/health")
    def health(handler):
        return {"ok": True}

    app = tornado.web.Application(registry.urlspecs("/api/v1") + [(r"/", HomeHandler)])

Pattern rules are in :mod:`tornado_jsonservlet.routing.patterns`.

Everything that can be wrong with a registration is reported when it is made, or
at ``urlspecs()`` at the latest, never while serving: a duplicate
``(method, pattern)`` or name, an invalid pattern, unknown ``initialize()`` arguments,
and a servlet whose ``error_template`` names a file the application settings
cannot provide (``urlspecs(settings=...)``).

Types: ``urlspecs()`` returns a list of ``UrlRule``, the element type of the rule
lists ``tornado.web.Application`` accepts, so ``urlspecs() + other_rules``,
``other_rules + urlspecs()`` and ``[*urlspecs(), ...]`` type-check without a cast;
``route`` returns the decorated function unchanged, with its type.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar, Union, overload

import tornado.web
from tornado.routing import Matcher, Rule

from tornado_jsonservlet.errors.exceptions import NotFound
from tornado_jsonservlet.jsonio.codec import DECIMAL_FORMATS
from tornado_jsonservlet.production.metrics import ServletMetrics
from tornado_jsonservlet.routing.openapi import build_document, docs_servlets
from tornado_jsonservlet.routing.patterns import (
    CONVERTERS,
    CompiledPattern,
    Converter,
    TemplateURLSpec,
    compile_pattern,
    literal_regex,
)
from tornado_jsonservlet.routing.servlets import (
    SERVLET_METHODS,
    JsonServlet,
    ServletRoute,
    implemented_methods,
    is_servlet,
    remember_route,
)
from tornado_jsonservlet.routing.signatures import check_servlet_class, signature_of

__all__ = ["CONVERTERS", "Converter", "ServletRegistry", "UrlRule", "UrlRules"]

#: One entry of the rule list ``tornado.web.Application`` accepts: the same union as
#: ``tornado.routing._RuleList``'s elements (Tornado 6.4 to 6.6), spelled out because
#: that alias is private.
UrlRule = Union[
    Rule,
    list[Any],
    tuple[Union[str, Matcher], Any],
    tuple[Union[str, Matcher], Any, dict[str, Any]],
    tuple[Union[str, Matcher], Any, dict[str, Any], str],
]

_Route = TypeVar("_Route", bound=Callable[..., Any])
_Other = TypeVar("_Other")


class UrlRules(list[UrlRule]):
    """The list ``urlspecs()`` returns: a plain list of rules that also concatenates,
    for type checkers, with rule lists whose element type was inferred.

    ``[(r"/", Home)]`` assigned to a variable is inferred as
    ``list[tuple[str, type[Home]]]``, which a plain ``list[UrlRule]`` cannot be
    added to (lists are invariant), although every element is a valid rule.
    ``+`` here accepts any iterable of rules, on either side.
    """

    @overload  # type: ignore[override]  # deliberately wider: any iterable of rules
    def __add__(self, other: Iterable[UrlRule]) -> UrlRules: ...

    @overload
    def __add__(self, other: list[_Other]) -> list[Union[_Other, UrlRule]]: ...

    def __add__(self, other: Iterable[Any]) -> Any:
        return UrlRules([*self, *other])

    def __radd__(self, other: Iterable[UrlRule]) -> UrlRules:
        return UrlRules([*other, *self])


@dataclass
class _Endpoint:
    servlet: type[tornado.web.RequestHandler]
    pattern: str
    compiled: CompiledPattern
    name: str
    init_kwargs: dict[str, Any] = field(default_factory=dict)


class _UnrecognizedServlet(JsonServlet):
    """The catch-all: any unmatched path under the prefix is a JSON 404."""

    servlet_name = "unrecognized"

    async def _jsonservlet_dispatch(self, method: str, raw_params: Any) -> None:
        raise NotFound("Unrecognized request", "UNRECOGNIZED")

    async def options(self, *args: str, **kwargs: str) -> None:
        raise NotFound("Unrecognized request", "UNRECOGNIZED")


class ServletRegistry:
    """Collects servlets and their patterns; :meth:`urlspecs` builds the URL table.

    .. versionadded:: 0.1
    """

    def __init__(self, *, metrics: Optional[ServletMetrics] = None) -> None:
        self.metrics = metrics
        self._endpoints: list[_Endpoint] = []
        self._by_key: dict[tuple[str, str], _Endpoint] = {}  # (method, pattern key) -> endpoint
        self._by_name: dict[str, _Endpoint] = {}

    def register(
        self,
        servlet_cls: type[tornado.web.RequestHandler],
        patterns: Optional[Iterable[str]] = None,
        *,
        name: Optional[str] = None,
        **init_kwargs: Any,
    ) -> None:
        """Serve ``servlet_cls`` at ``patterns`` (default: its ``PATTERNS``).

        ``init_kwargs`` go to the servlet's ``initialize()``. The first pattern's URLSpec
        is named ``name`` (default: the servlet's ``servlet_name``); further patterns
        are named ``name#2``, ``name#3``...

        :raises ValueError: no patterns, an invalid pattern, a ``(method, pattern)`` or
            name already registered.
        :raises TypeError: ``init_kwargs`` that ``initialize()`` does not accept.
        """
        label = getattr(servlet_cls, "servlet_name", servlet_cls.__name__)
        pattern_list = list(
            patterns if patterns is not None else getattr(servlet_cls, "PATTERNS", ())
        )
        if isinstance(patterns, str):
            raise TypeError("patterns must be a list of strings, not a single string")
        if not pattern_list:
            raise ValueError(f"{label}: no patterns given and no PATTERNS on the class")
        try:
            inspect.signature(servlet_cls.initialize).bind(None, **init_kwargs)
        except TypeError as error:
            raise TypeError(
                f"{label}: initialize() does not accept {sorted(init_kwargs)}: {error}"
            ) from None
        base_name = name or label
        methods = implemented_methods(servlet_cls)
        if is_servlet(servlet_cls):
            check_servlet_class(servlet_cls, label, [m for m in methods if m in SERVLET_METHODS])
        endpoints = []
        for index, pattern in enumerate(pattern_list):
            _check_foreign_syntax(label, pattern)
            try:
                compiled = compile_pattern(pattern)
            except (ValueError, re.error) as error:
                raise ValueError(f"{label}: invalid pattern {pattern!r}: {error}") from None
            endpoint_name = base_name if index == 0 else f"{base_name}#{index + 1}"
            endpoints.append(
                _Endpoint(servlet_cls, pattern, compiled, endpoint_name, dict(init_kwargs))
            )
        keys = [endpoint.compiled.key for endpoint in endpoints]
        if is_servlet(servlet_cls) and len(set(keys)) == len(keys):
            for endpoint in endpoints:
                _read_signatures(servlet_cls, methods, endpoint.compiled, label)
        self._add(endpoints, methods)

    def route(
        self, template: str, methods: Sequence[str] = ("GET",), *, name: Optional[str] = None
    ) -> Callable[[_Route], _Route]:
        """Serve a plain function, called as ``fn(handler, **params)``.

        It returns like ``on_GET``. Several functions may share one template with
        different methods. The function itself is returned unchanged, and it is the
        servlet's ``on_<METHOD>`` as it is: nothing is wrapped, so marks such as
        ``@cancellable`` apply whether they are put below or above ``@route``. A
        callable that is not a plain function (a ``functools.partial``, a bound
        method) is wrapped with ``functools.wraps``; one without a ``__name__``
        needs ``name`` unless it joins a template already served.

        :raises TypeError: ``fn`` starts a servlet, has no ``__name__`` and no
            ``name`` is given.
        """
        wanted = tuple(method.upper() for method in methods)
        unknown = [m for m in wanted if m not in SERVLET_METHODS]
        if unknown or not wanted:
            raise ValueError(
                f"route {template!r}: methods must be among {SERVLET_METHODS}, got {methods!r}"
            )

        def decorator(fn: _Route) -> _Route:
            if self._merge_route(template, wanted, fn, name):
                return fn
            servlet_name = name or getattr(fn, "__name__", None)
            if not servlet_name:
                raise TypeError(f"route {template!r}: {fn!r} has no __name__: pass name=...")
            namespace: dict[str, Any] = {
                "servlet_name": servlet_name,
                "__doc__": fn.__doc__,
                "_jsonservlet_from_route": True,
            }
            for method in wanted:
                namespace[f"on_{method}"] = _route_method(fn)
            servlet = type(f"Route_{servlet_name}", (JsonServlet,), namespace)
            # A functools.partial has no __module__ before Python 3.10.
            servlet.__module__ = getattr(fn, "__module__", None) or servlet.__module__
            self.register(servlet, [template], name=servlet_name)
            return fn

        return decorator

    def _merge_route(
        self, template: str, methods: tuple[str, ...], fn: Callable[..., Any], name: Optional[str]
    ) -> bool:
        """Add ``fn`` to the route servlet already serving ``template``, if there is one."""
        try:
            regex = compile_pattern(template).key
        except (ValueError, re.error):
            return False  # register() reports it with the servlet's name
        endpoint = next((e for e in self._endpoints if e.compiled.key == regex), None)
        if endpoint is None or not getattr(endpoint.servlet, "_jsonservlet_from_route", False):
            return False
        if name is not None and name != endpoint.name:
            raise ValueError(f"route {template!r} is already named {endpoint.name!r}")
        for method in methods:
            existing = self._by_key.get((method, regex))
            if existing is not None:
                raise ValueError(
                    f"{method} {template!r} is registered twice: by {_label(existing.servlet)} "
                    f"and by {getattr(fn, '__name__', None) or repr(fn)}"
                )
        servlet: Any = endpoint.servlet
        for method in methods:
            setattr(servlet, f"on_{method}", _route_method(fn))
        try:
            _read_signatures(servlet, methods, endpoint.compiled, _label(servlet))
        except TypeError:
            for method in methods:
                delattr(servlet, f"on_{method}")
            raise
        for method in methods:
            self._by_key[(method, regex)] = endpoint
        servlet.allowed_methods = implemented_methods(servlet)
        return True

    def openapi(
        self,
        *,
        title: str,
        version: str,
        prefix: str = "",
        description: Optional[str] = None,
        servers: Optional[list[dict[str, Any]]] = None,
    ) -> dict[str, Any]:
        """The OpenAPI 3.1 document of the registered servlets, as a dict.

        ``prefix`` is the one given to :meth:`urlspecs`. See
        :mod:`~tornado_jsonservlet.routing.openapi` for what is documented and how.
        """
        return build_document(
            [(endpoint.servlet, endpoint.pattern) for endpoint in self._endpoints],
            title=title,
            version=version,
            prefix=prefix,
            description=description,
            servers=servers,
        )

    def mount_openapi(
        self,
        *,
        title: str,
        version: str,
        description: Optional[str] = None,
        docs: bool = True,
    ) -> None:
        """Serve the document at ``<prefix>/openapi.json`` and Swagger UI at ``<prefix>/docs``.

        The document is built at its first request, so servlets registered after
        this call are in it. The docs page and its assets are served by the
        application (no CDN).

        :raises RuntimeError: ``docs`` without the ``swagger-ui-py`` package.
        """

        def document(prefix: str) -> dict[str, Any]:
            return self.openapi(
                title=title, version=version, prefix=prefix, description=description
            )

        for servlet, pattern in docs_servlets(document, title=title, docs=docs):
            self.register(servlet, [pattern])

    def urlspecs(
        self,
        prefix: str = "",
        *,
        catch_all: bool = True,
        settings: Optional[Mapping[str, Any]] = None,
    ) -> UrlRules:
        """The URL table: one URLSpec per pattern, then a JSON-404 catch-all under ``prefix``.

        With ``prefix=""`` the catch-all matches every path, so put other rules first
        or pass ``catch_all=False``.

        ``settings`` are the application settings the table will be served with.
        Servlets whose error rendering depends on them (an ``error_template`` naming
        a file under ``template_path``) are checked against them here, and such a
        servlet without ``settings`` is an error too, so that a missing template
        is found now rather than at the first error response.

        :raises ValueError: an invalid prefix, or a servlet that the settings
            cannot serve.
        """
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"prefix must start with '/' and not end with it: {prefix!r}")
        self._check_settings(settings)
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix may not contain parameters: {prefix!r}")
        try:
            escaped, encoded_prefix = literal_regex(prefix)
        except ValueError as error:
            raise ValueError(f"invalid prefix {prefix!r}: {error}") from None
        specs = UrlRules()
        for endpoint in self._endpoints:
            route = ServletRoute(
                pattern=endpoint.pattern,
                converters=endpoint.compiled.converters,
                metrics=self.metrics,
            )
            regex = f"^{escaped}{endpoint.compiled.regex}$"
            pieces = endpoint.compiled.pieces
            spec = TemplateURLSpec(
                regex,
                endpoint.servlet,
                dict(endpoint.init_kwargs),
                endpoint.name,
                None if pieces is None else (encoded_prefix, *pieces),
                route,
            )
            remember_route(endpoint.servlet, spec.regex, route)
            specs.append(spec)
        if catch_all:
            route = ServletRoute(pattern=f"{prefix}/*", metrics=self.metrics)
            spec = TemplateURLSpec(
                f"^{escaped}(?:/.*)?$", _UnrecognizedServlet, {}, None, None, route
            )
            remember_route(_UnrecognizedServlet, spec.regex, route)
            specs.append(spec)
        return specs

    def _check_settings(self, settings: Optional[Mapping[str, Any]]) -> None:
        if settings is not None and settings.get("validation_status", 400) not in (400, 422):
            raise ValueError(
                "the validation_status setting must be 400 or 422, not "
                f"{settings['validation_status']!r}"
            )
        if settings is not None and settings.get("json_decimal", "string") not in DECIMAL_FORMATS:
            raise ValueError(
                "the json_decimal setting must be 'string' or 'number', not "
                f"{settings['json_decimal']!r}"
            )
        for servlet in dict.fromkeys(endpoint.servlet for endpoint in self._endpoints):
            check: Optional[Callable[[Mapping[str, Any]], None]] = getattr(
                servlet, "check_settings", None
            )
            if check is None:
                continue
            needs: Callable[[], bool] = getattr(servlet, "needs_template_path", lambda: False)
            if settings is None and needs():
                raise ValueError(
                    f"{_label(servlet)}.error_template names a template file: pass the "
                    "application settings, urlspecs(..., settings=settings), so that "
                    "template_path is checked now rather than at the first error"
                )
            if settings is not None:
                check(settings)

    def _add(self, endpoints: list[_Endpoint], methods: tuple[str, ...]) -> None:
        keys = [endpoint.compiled.key for endpoint in endpoints]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{_label(endpoints[0].servlet)}: the same pattern is given twice")
        for endpoint in endpoints:
            for method in methods:
                existing = self._by_key.get((method, endpoint.compiled.key))
                if existing is not None:
                    if method in SERVLET_METHODS:
                        raise ValueError(
                            f"{method} {endpoint.pattern!r} is registered twice: by "
                            f"{_label(existing.servlet)} and by {_label(endpoint.servlet)}"
                        )
                    raise ValueError(
                        f"{endpoint.pattern!r} is already served by {_label(existing.servlet)}; "
                        "one pattern maps to one servlet "
                        f"(add the methods of {_label(endpoint.servlet)} to it)"
                    )
            if endpoint.name in self._by_name:
                raise ValueError(
                    f"name {endpoint.name!r} is used by both "
                    f"{_label(self._by_name[endpoint.name].servlet)} and {_label(endpoint.servlet)}"
                )
        for endpoint in endpoints:
            self._endpoints.append(endpoint)
            self._by_name[endpoint.name] = endpoint
            for method in methods:
                self._by_key[(method, endpoint.compiled.key)] = endpoint


def _route_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What a servlet built by ``route()`` has as ``on_<METHOD>``: ``fn`` itself.

    A plain function put in a class becomes a method, called as ``fn(handler,
    **params)``, so it needs no wrapper: introspection (``__qualname__``,
    ``inspect.iscoroutinefunction``, ``__code__``) and cancel marks, even marks set
    after ``route()``, see the user's own function. Other callables (a
    ``functools.partial``, a bound method, an object with ``__call__``) would not be
    bound to the handler, so they get a ``functools.wraps`` wrapper: ``__wrapped__``
    is ``fn``, its name and marks are copied (as they are when ``route()`` runs), and
    it is ``async def`` when ``fn`` is a coroutine function. A callable without a
    ``__qualname__`` of its own (a partial, an object) lends the wrapper the one of
    the function it calls.
    """
    if inspect.isfunction(fn):
        return fn
    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):

        async def call_async(self: JsonServlet, **params: Any) -> Any:
            return await fn(self, **params)

        wrapper = call_async
    else:

        def call(self: JsonServlet, **params: Any) -> Any:
            return fn(self, **params)

        wrapper = call
    functools.update_wrapper(wrapper, fn)
    if not hasattr(fn, "__qualname__"):
        inner = fn.func if isinstance(fn, functools.partial) else type(fn).__call__
        for attribute in ("__name__", "__qualname__"):
            if not hasattr(fn, attribute) and hasattr(inner, attribute):
                setattr(wrapper, attribute, getattr(inner, attribute))
    return wrapper


_FOREIGN_SYNTAX = (
    (re.compile(r"<(?:[A-Za-z_]+:)?[A-Za-z_][A-Za-z0-9_]*>"), "Flask/aiohttp-style <name>"),
    (re.compile(r"(?:^|/):[A-Za-z_][A-Za-z0-9_]*"), "Express/Rails-style :name"),
)


def _check_foreign_syntax(label: str, pattern: str) -> None:
    """``/a/<int:x>`` and ``/users/:id`` would be matched as literal text: refuse them."""
    if pattern.startswith("^") or "(?P<" in pattern:
        return  # a raw regex is taken as it is
    for regex, what in _FOREIGN_SYNTAX:
        found = regex.search(pattern)
        if found:
            raise ValueError(
                f"{label}: pattern {pattern!r} uses {what} parameter syntax "
                f"({found.group(0).lstrip('/')!r}), which would match only that literal text; "
                "write parameters as {name} or {name:int}"
            )


def _read_signatures(
    servlet: type, methods: Iterable[str], compiled: CompiledPattern, label: str
) -> None:
    """Read each method's signature now, so that mistakes raise at registration."""
    names = re.compile(compiled.regex).groupindex.keys()
    for method in methods:
        if method in SERVLET_METHODS:
            signature_of(servlet, method, names, label)


def _label(servlet: type) -> str:
    return str(getattr(servlet, "servlet_name", servlet.__name__))
