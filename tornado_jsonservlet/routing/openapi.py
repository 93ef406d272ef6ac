"""An OpenAPI 3.1 document from the registry, and the pages that serve it.

::

    registry.mount_openapi(title="Users", version="1.0")   # /openapi.json and /docs
    app = tornado.web.Application(registry.urlspecs("/api/v1"))

    document = registry.openapi(title="Users", version="1.0", prefix="/api/v1")

The registry already knows every route, method and typed path parameter, and each
method's signature (:mod:`~tornado_jsonservlet.routing.signatures`) says its query
arguments, headers, body and return type; the document is derived from those, so
it cannot drift from what the server does. Schemas come from msgspec's JSON Schema
generation (JSON Schema 2020-12, the dialect of OpenAPI 3.1). Error responses are
documented in the toolkit's error shape: the validation status (400 or 422) of a
typed method, 404 for a path parameter that does not convert, 413/415 for bodies,
and ``default`` for any other error. An untyped method appears with what is known:
its path parameters, and a JSON (or HTML) response of any shape.

A method that answers another status than 200 says so in its return annotation,
``-> tuple[Literal[201], User]``; ``-> tuple[Literal[204], None]`` has no body.

The docs page is Swagger UI, served by the application itself from the
``swagger-ui-py`` package (``pip install tornado-jsonservlet[openapi]``): no CDN, so
it works offline and behind a strict firewall.
"""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, Union

from tornado_jsonservlet.errors.exceptions import NotFound
from tornado_jsonservlet.jsonio.codec import JSON_CONTENT_TYPE, encode
from tornado_jsonservlet.routing.servlets import (
    SERVLET_METHODS,
    HtmlServlet,
    JsonServlet,
    implemented_methods,
    is_servlet,
)
from tornado_jsonservlet.routing.signatures import (
    MethodSignature,
    bounded_int,
    is_structured,
    signature_of,
    uses_pydantic,
)

__all__ = ["build_document", "docs_servlets"]

_REF = "#/components/schemas/{name}"
_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")
_RAW_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>(?:[^()]|\([^()]*\))*\)")
_CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "path": {"type": "string"},
    "int": {"type": "integer", "format": "int64"},
    "float": {"type": "number"},
    "uuid": {"type": "string", "format": "uuid"},
}
_ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "The toolkit's error shape: a machine-readable code and a message.",
    "type": "object",
    "properties": {
        "errcode": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
        "error": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
                "required": ["loc", "msg"],
            },
        },
    },
    "required": ["errcode", "error"],
}


def _error_response(description: str, html: bool = False) -> dict[str, Any]:
    if html:  # an HtmlServlet's errors are pages
        return {"description": description, "content": {"text/html": {"schema": {}}}}
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="Error")}}},
    }


def _path_template(pattern: str) -> tuple[str, dict[str, str]]:
    """``/users/{id:int}`` as ``(/users/{id}, {"id": "int"})``; raw regexes best effort."""
    if pattern.startswith("^") or "(?P<" in pattern:
        names = {match.group(1): "str" for match in _RAW_GROUP.finditer(pattern)}
        template = _RAW_GROUP.sub(lambda m: "{" + m.group(1) + "}", pattern)
        return template.lstrip("^").rstrip("$").replace("\\", ""), names
    names = {m.group(1): m.group(2) or "str" for m in _TEMPLATE_PARAM.finditer(pattern)}
    return _TEMPLATE_PARAM.sub(lambda m: "{" + m.group(1) + "}", pattern), names


def _status_and_type(returns: Any) -> tuple[int, Any]:
    """``tuple[Literal[201], User]`` as ``(201, User)``; anything else is a 200."""
    if typing.get_origin(returns) is tuple:
        args = typing.get_args(returns)
        if len(args) == 2 and typing.get_origin(args[0]) is typing.Literal:
            codes = typing.get_args(args[0])
            if len(codes) == 1 and isinstance(codes[0], int):
                return codes[0], args[1]
    return 200, returns


def _query_schema_type(annotation: Any) -> Any:
    """Optional[X] with a default documents as X: a query argument is absent, never null."""
    if typing.get_origin(annotation) is Union:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


class _Schemas:
    """Collects the types to document, then asks msgspec for all schemas at once."""

    def __init__(self) -> None:
        self.types: list[Any] = []
        self.slots: list[tuple[dict[str, Any], str]] = []

    def later(self, target: dict[str, Any], key: str, tp: Any) -> None:
        self.types.append(tp)
        self.slots.append((target, key))

    def resolve(self) -> dict[str, Any]:
        if not self.types:
            return {}
        import msgspec

        plain = [i for i, tp in enumerate(self.types) if not uses_pydantic(tp)]
        schemas, found = msgspec.json.schema_components(
            [self.types[i] for i in plain], ref_template=_REF
        )
        components = dict(found)
        for index, schema in zip(plain, schemas):
            target, key = self.slots[index]
            target[key] = schema
        for index, tp in enumerate(self.types):
            if index in plain:
                continue
            import pydantic

            schema = pydantic.TypeAdapter(tp).json_schema(
                ref_template=_REF.replace("{name}", "{model}")
            )
            components.update(schema.pop("$defs", {}))
            target, key = self.slots[index]
            if isinstance(tp, type):  # a model: its own component, as msgspec does
                components[tp.__name__] = schema
                schema = {"$ref": _REF.format(name=tp.__name__)}
            target[key] = schema
        return components


def build_document(
    endpoints: Iterable[tuple[type, str]],
    *,
    title: str,
    version: str,
    prefix: str = "",
    description: Optional[str] = None,
    servers: Optional[list[dict[str, Any]]] = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``(servlet class, pattern)`` pairs under ``prefix``."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for servlet, pattern in endpoints:
        if getattr(servlet, "_jsonservlet_undocumented", False) or not is_servlet(servlet):
            continue
        template, converters = _path_template(pattern)
        item = paths.setdefault(prefix + template, {})
        label = str(getattr(servlet, "servlet_name", servlet.__name__))
        for method in implemented_methods(servlet):
            if method not in SERVLET_METHODS:
                continue
            signature = signature_of(servlet, method, converters.keys(), label)
            item[method.lower()] = _operation(
                servlet, label, method, signature, converters, schemas
            )
    components = schemas.resolve()
    components["Error"] = _ERROR_SCHEMA
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": {"schemas": components},
    }
    if servers:
        document["servers"] = servers
    return document


def _operation(
    servlet: type,
    label: str,
    method: str,
    signature: MethodSignature,
    converters: Mapping[str, str],
    schemas: _Schemas,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": f"{label}.{method}", "tags": [label]}
    if signature.summary:
        operation["summary"] = signature.summary
    if signature.description:
        operation["description"] = signature.description
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": dict(_CONVERTER_SCHEMAS.get(converter, {"type": "string"})),
        }
        for name, converter in converters.items()
    ]
    for where, params in (("query", signature.query), ("header", signature.headers)):
        for param in params:
            entry: dict[str, Any] = {"name": param.wire_name, "in": where}
            if param.required:
                entry["required"] = True
            if param.repeated:
                entry["explode"] = True
                entry["style"] = "form" if where == "query" else "simple"
            schemas.later(entry, "schema", _query_schema_type(bounded_int(param.annotation)))
            parameters.append(entry)
    if parameters:
        operation["parameters"] = parameters
    if signature.body is not None:
        media: dict[str, Any] = {}
        schemas.later(media, "schema", signature.body.annotation)
        operation["requestBody"] = {
            "required": signature.body.required,
            "content": {"application/json": media},
        }
    responses: dict[str, Any] = {}
    status, returns = _status_and_type(_return_annotation(signature))
    html = issubclass(servlet, HtmlServlet)
    if returns is type(None) or status in (204, 304):
        responses[str(status)] = {"description": "No content"}
    elif returns is not None:
        content: dict[str, Any] = {}
        schemas.later(content, "schema", returns)
        responses[str(status)] = {
            "description": "Success",
            "content": {"application/json": content},
        }
    else:
        kind = "text/html" if html else "application/json"
        if callable(getattr(servlet, "send_event", None)):
            kind = "text/event-stream"  # an event stream servlet
        responses["200"] = {"description": "Success", "content": {kind: {"schema": {}}}}
    if signature.typed:
        status = getattr(servlet, "validation_status", None) or 400
        responses[str(status)] = _error_response(
            "Invalid input: `details` says where and what", html
        )
    if converters:
        responses["404"] = _error_response(
            "Not found (or a path parameter of the wrong type)", html
        )
    if signature.body is not None:
        responses["413"] = _error_response("Request body too large")
        responses["415"] = _error_response("Request body is not application/json")
    responses["default"] = _error_response("An error, in the toolkit's error shape", html)
    operation["responses"] = responses
    return operation


def _return_annotation(signature: MethodSignature) -> Any:
    """The full return annotation (the signature keeps only encodable ones)."""
    target = inspect.unwrap(signature.function)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:
        return None
    returns = hints.get("return")
    if returns is None:
        return None
    inner = _status_and_type(returns)[1]
    if inner is type(None) or inner is None:
        return returns
    if is_structured(inner):
        return returns
    return None


# -- the pages ---------------------------------------------------------------------

_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="docs"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/start.js"></script>
</body>
</html>
"""
# Relative URLs: the page lives at <prefix>/docs, so "openapi.json" is <prefix>/openapi.json
# whatever the prefix, and nothing is fetched from another host.
_START_SCRIPT = b"""window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#docs",
  deepLinking: true
});
"""
_ASSETS = {
    "swagger-ui-bundle.js": "application/javascript; charset=UTF-8",
    "swagger-ui.css": "text/css; charset=UTF-8",
}


def swagger_ui_directory() -> pathlib.Path:
    """Where the ``swagger-ui-py`` package keeps Swagger UI's files.

    :raises RuntimeError: the package is not installed (a configuration error,
        reported when the docs are mounted).
    """
    spec = importlib.util.find_spec("swagger_ui")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        static = pathlib.Path(location) / "static"
        if all((static / name).is_file() for name in _ASSETS):
            return static
    raise RuntimeError(
        "the docs page needs Swagger UI's files: pip install tornado-jsonservlet[openapi] "
        "(the swagger-ui-py package), or mount_openapi(..., docs=False)"
    )


def docs_servlets(
    document: Callable[[str], dict[str, Any]], *, title: str, docs: bool
) -> list[tuple[type, str]]:
    """Servlets for ``/openapi.json`` (and ``/docs`` with its assets), with their patterns.

    ``document(prefix)`` builds the document; it is built once per prefix, at the
    first request, when every servlet has been registered.
    """
    built: dict[str, bytes] = {}

    class OpenApiDocument(JsonServlet):
        """The OpenAPI 3.1 document of this API."""

        servlet_name = "openapi"
        _jsonservlet_undocumented = True

        async def on_GET(self) -> None:
            prefix = self.request.path[: -len("/openapi.json")]
            body = built.get(prefix)
            if body is None:
                body = built[prefix] = encode(document(prefix))
            self.set_header("Content-Type", JSON_CONTENT_TYPE)
            self.set_header("Cache-Control", "no-cache")
            await self.finish(body)

    servlets: list[tuple[type, str]] = [(OpenApiDocument, "/openapi.json")]
    if not docs:
        return servlets
    static = swagger_ui_directory()
    page = _DOCS_PAGE.format(title=_escape(title)).encode()
    assets: dict[str, bytes] = {}

    class DocsPage(HtmlServlet):
        """Swagger UI for this API, served from the application."""

        servlet_name = "openapi-docs"
        _jsonservlet_undocumented = True

        def on_GET(self) -> bytes:
            return page

    class DocsAsset(HtmlServlet):
        """Swagger UI's script and stylesheet."""

        servlet_name = "openapi-docs-asset"
        _jsonservlet_undocumented = True

        async def on_GET(self, asset: str) -> None:
            if asset == "start.js":
                data, kind = _START_SCRIPT, "application/javascript; charset=UTF-8"
            elif asset in _ASSETS:
                if asset not in assets:
                    assets[asset] = (static / asset).read_bytes()
                data, kind = assets[asset], _ASSETS[asset]
            else:
                raise NotFound("No such file")
            self.set_header("Content-Type", kind)
            self.set_header("Cache-Control", "public, max-age=3600")
            self.set_header("X-Content-Type-Options", "nosniff")
            await self.finish(data)

    servlets.append((DocsPage, "/docs"))
    servlets.append((DocsAsset, "/docs/{asset}"))
    return servlets


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )
