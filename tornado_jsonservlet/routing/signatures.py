"""Typed servlet methods: a method's signature is its contract.

::

    class Users(JsonServlet):
        PATTERNS = ("/users/{user_id:int}",)

        async def on_PUT(
            self,
            user_id: int,                                   # from the pattern
            body: UserUpdate,                               # a Struct/dataclass/TypedDict: the body
            dry_run: bool = False,                          # anything else: a query argument
            trace: Annotated[Optional[str], Header("X-Trace")] = None,
        ) -> User:
            ...

Why here, and why once: a signature is read when the servlet is registered (or, for
a servlet served without the registry, at its first request) and the result is
cached per ``(class, method, function, path names)``. Serving a request then costs
one dict lookup plus msgspec's C-level conversion, and a mistake in a signature (an
unknown parameter, two bodies, a body on ``on_GET``, a type no query argument can
have) is a ``TypeError`` naming the servlet at ``register()``, not a 500 later.

A method is *typed* when it declares anything beyond its path parameters. An
untyped method (path parameters only, or ``**kwargs``) is called exactly as before.

Validation failures are :class:`ValidationFailed` (a ``ServletError``): one status
for every kind (``validation_status``: 400, or 422, as a class attribute or an
application setting), an ``errcode`` per kind (``BAD_JSON``, ``NOT_JSON``,
``INVALID_BODY``, ``INVALID_PARAM``, ``MISSING_PARAM``, ``INVALID_HEADER``,
``MISSING_HEADER``) and ``details``, a list of ``{"loc": [...], "msg": ...}``.
Messages are msgspec's, cut to 200 characters, so a 60 KB value is never echoed.

msgspec is an optional dependency (``pip install tornado-jsonservlet[typed]``);
it is imported only when a typed method is found.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import math
import re
import typing
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

from tornado_jsonservlet.errors.exceptions import ServletError
from tornado_jsonservlet.jsonio.codec import decode

__all__ = [
    "METHOD_ATTRIBUTES",
    "Header",
    "MethodSignature",
    "ValidationFailed",
    "bounded_int",
    "is_pydantic",
    "is_structured",
    "method_attribute",
    "signature_of",
    "signature_of_function",
    "uses_pydantic",
]

_MAX_MESSAGE = 200
_INT64 = 2**63

#: The types a query argument or header may have (besides Enum and Literal).
_SCALARS = (int, float, bool, str, uuid.UUID, datetime.datetime, datetime.date, decimal.Decimal)
_BODYLESS_METHODS = frozenset({"GET", "DELETE"})
_VERBS = ("get", "post", "put", "patch", "delete", "head", "options")
#: Set on the toolkit's per-servlet copies of its dispatching ``get``/``post``/...
#: (see ``servlets._name_dispatchers_after``): they are not the application's own.
DISPATCHER_COPY_MARK = "_jsonservlet_named_copy"


class Header:
    """Marks a parameter as a request header: ``Annotated[str, Header("X-Trace")]``.

    Without a name, the parameter's name is used with ``_`` turned into ``-``.

    .. versionadded:: 0.1
    """

    __slots__ = ("name",)

    def __init__(self, name: Optional[str] = None) -> None:
        if name is not None and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError(f"not a header name: {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Header({self.name!r})"


class ValidationFailed(ServletError):
    """A typed input did not validate: ``details`` says where and what.

    .. versionadded:: 0.1
    """


@dataclasses.dataclass(frozen=True)
class InputParam:
    """One query argument or header of a typed method."""

    name: str  # the Python parameter name
    wire_name: str  # the query argument or header name
    annotation: Any  # without Annotated/Header
    required: bool
    default: Any
    repeated: bool  # list[...]: every occurrence


@dataclasses.dataclass(frozen=True)
class BodyParam:
    name: str
    annotation: Any
    required: bool


@dataclasses.dataclass(frozen=True)
class MethodSignature:
    """What a servlet method takes and returns, read once from its signature."""

    method: str
    function: Any
    path: tuple[str, ...]
    path_annotations: Mapping[str, Any]
    query: tuple[InputParam, ...]
    headers: tuple[InputParam, ...]
    body: Optional[BodyParam]
    #: The return annotation, when it is a type msgspec can encode (else None).
    returns: Any
    typed: bool
    summary: Optional[str]
    description: Optional[str]
    _query_type: Any = None
    _header_type: Any = None
    _body_decoder: Any = None

    def bind(self, handler: Any, status: int) -> dict[str, Any]:
        """The typed inputs of one request, as keyword arguments.

        :raises ValidationFailed: with ``status``.
        """
        import msgspec

        kwargs: dict[str, Any] = {}
        if self.query:
            arguments = handler.request.query_arguments
            raw: dict[str, Any] = {}
            for param in self.query:
                values = arguments.get(param.wire_name)
                if values is None:
                    continue
                texts = [_text(value) for value in values]
                raw[param.name] = texts if param.repeated else texts[-1]
            kwargs.update(_convert(self._query_type, raw, "query", status))
        if self.headers:
            request_headers = handler.request.headers
            raw = {}
            for param in self.headers:
                if param.repeated:
                    found = request_headers.get_list(param.wire_name)
                    if found:
                        raw[param.name] = found
                else:
                    value = request_headers.get(param.wire_name)
                    if value is not None:
                        raw[param.name] = value
            kwargs.update(_convert(self._header_type, raw, "header", status))
        if self.body is not None:
            kwargs[self.body.name] = self._decode_body(handler, status, msgspec)
        return kwargs

    def _decode_body(self, handler: Any, status: int, msgspec: Any) -> Any:
        assert self.body is not None
        data = handler._jsonservlet_checked_body(required=False)
        if data is None:
            if not self.body.required:
                return None
            raise ValidationFailed(
                status,
                "Request body must be a JSON document",
                "NOT_JSON",
                details=[{"loc": ["body"], "msg": "a JSON document is required"}],
            )
        if isinstance(self._body_decoder, _PydanticBody):
            return self._body_decoder.decode(data, status)
        try:
            return self._body_decoder.decode(data)
        except msgspec.ValidationError as error:
            loc, msg = _split(str(error))
            raise _failure(status, "INVALID_BODY", "body", loc, msg) from None
        except msgspec.DecodeError as error:
            text = _short(str(error))
            raise ValidationFailed(
                status,
                f"Request body is not valid JSON: {text}",
                "BAD_JSON",
                details=[{"loc": ["body"], "msg": text}],
            ) from None


# -- conversion ---------------------------------------------------------------------


def _text(value: bytes) -> str:
    # Query values are bytes; invalid UTF-8 becomes U+FFFD rather than a 500.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


_LOC_SUFFIX = re.compile(r" - at `\$(.*)`$", re.S)
_MISSING = re.compile(r"Object missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_LOC_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(-?[0-9]+)\]|\[(.*?)\]")


def _split(message: str) -> tuple[list[Any], str]:
    """msgspec's ``"Expected int, got str - at `$.a[0].b`"`` as ``(["a", 0, "b"], msg)``."""
    found = _LOC_SUFFIX.search(message)
    if found is None:
        named = _MISSING.match(message) or _UNKNOWN.match(message)
        return ([named.group(1)] if named else []), _short(message)
    loc: list[Any] = []
    for match in _LOC_PART.finditer(found.group(1)):
        name, index, other = match.groups()
        loc.append(name if name is not None else int(index) if index is not None else other)
    msg = message[: found.start()]
    named = _MISSING.match(msg) or _UNKNOWN.match(msg)
    if named:
        loc.append(named.group(1))
    return loc, _short(msg)


def _missing_field(message: str) -> Optional[str]:
    missing = _MISSING.match(message)
    return missing.group(1) if missing else None


def _failure(status: int, errcode: str, where: str, loc: list[Any], msg: str) -> ValidationFailed:
    full = [where, *loc]
    what = {"query": "query argument", "header": "header", "body": "request body"}[where]
    named = f" '{loc[0]}'" if loc and where != "body" else ""
    text = f"Invalid {what}{named}: {msg}"
    if where == "body":
        text = f"Invalid request body at {'.'.join(str(p) for p in loc) or '(root)'}: {msg}"
    return ValidationFailed(status, _short(text), errcode, details=[{"loc": full, "msg": msg}])


def _convert(target: Any, raw: dict[str, Any], where: str, status: int) -> dict[str, Any]:
    import msgspec

    try:
        value = msgspec.convert(raw, target, strict=False)
    except msgspec.ValidationError as error:
        loc, msg = _split(str(error))
        if _missing_field(msg):
            kind = "MISSING_PARAM" if where == "query" else "MISSING_HEADER"
            raise _failure(status, kind, where, loc, "required") from None
        kind = "INVALID_PARAM" if where == "query" else "INVALID_HEADER"
        raise _failure(status, kind, where, loc, msg) from None
    out = {field: getattr(value, field) for field in value.__struct_fields__}
    for name, item in out.items():
        if item is None and name in raw:
            # msgspec's lax mode reads the text "null" as None: a query argument or
            # header that is sent has a value; leave it out to mean None.
            kind = "INVALID_PARAM" if where == "query" else "INVALID_HEADER"
            raise _failure(status, kind, where, [name], "Expected a value, got `null`")
        for number in item if isinstance(item, list) else (item,):
            if isinstance(number, float) and not math.isfinite(number):
                kind = "INVALID_PARAM" if where == "query" else "INVALID_HEADER"
                raise _failure(status, kind, where, [name], "Number out of range")
    return out


# -- reading signatures --------------------------------------------------------------


def _typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def is_structured(tp: Any) -> bool:
    """A type that is a JSON body: a Struct, dataclass, TypedDict, or a list/dict of one."""
    tp = _strip_optional(tp)[0]
    origin = typing.get_origin(tp)
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        return bool(args) and is_structured(args[0])
    if origin is dict:
        args = typing.get_args(tp)
        return len(args) == 2 and is_structured(args[1])
    if not isinstance(tp, type):
        return False
    if dataclasses.is_dataclass(tp) or _typeddict(tp) or is_pydantic(tp):
        return True
    return any(
        base.__module__.startswith("msgspec") and base.__name__ == "Struct" for base in tp.__mro__
    )


def is_pydantic(tp: Any) -> bool:
    """A pydantic v2 model class (pydantic itself is not imported for this)."""
    return isinstance(tp, type) and hasattr(tp, "model_fields") and hasattr(tp, "model_validate")


def uses_pydantic(tp: Any) -> bool:
    """``tp`` is, or holds, a pydantic model: pydantic validates and documents it."""
    tp = _strip_optional(tp)[0]
    return is_pydantic(tp) or any(uses_pydantic(arg) for arg in typing.get_args(tp))


class _PydanticBody:
    """A body validated by pydantic, after the toolkit's strict JSON decoding.

    pydantic's own JSON parser accepts ``NaN`` and ``Infinity`` by default; decoding
    with :func:`~tornado_jsonservlet.jsonio.codec.decode` first keeps one set of JSON
    rules for every body.
    """

    __slots__ = ("adapter",)

    def __init__(self, annotation: Any) -> None:
        import pydantic

        self.adapter = pydantic.TypeAdapter(annotation)

    def decode(self, data: bytes, status: int) -> Any:
        import pydantic

        try:
            value = decode(data)
        except ValueError as error:
            text = _short(str(error))
            raise ValidationFailed(
                status,
                f"Request body is not valid JSON: {text}",
                "BAD_JSON",
                details=[{"loc": ["body"], "msg": text}],
            ) from None
        try:
            return self.adapter.validate_python(value)
        except pydantic.ValidationError as error:
            details = [
                {"loc": ["body", *item["loc"]], "msg": _short(item["msg"])}
                for item in error.errors(include_url=False, include_input=False)[:20]
            ]
            where = ".".join(str(p) for p in details[0]["loc"][1:]) or "(root)"
            raise ValidationFailed(
                status,
                _short(f"Invalid request body at {where}: {details[0]['msg']}"),
                "INVALID_BODY",
                details=details,
            ) from None


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) is Union:
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_scalar(tp: Any) -> bool:
    if typing.get_origin(tp) is typing.Annotated:  # constraints: Annotated[int, Meta(ge=0)]
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Literal:
        return all(
            isinstance(v, (str, int)) and not isinstance(v, bool) for v in typing.get_args(tp)
        )
    return isinstance(tp, type) and (issubclass(tp, enum.Enum) or tp in _SCALARS)


def _input_shape(tp: Any) -> Optional[bool]:
    """None if ``tp`` is no query/header type; else whether it is repeated (``list[...]``)."""
    inner, _ = _strip_optional(tp)
    if typing.get_origin(inner) is list:
        args = typing.get_args(inner)
        return True if len(args) == 1 and _is_scalar(args[0]) else None
    return False if _is_scalar(inner) else None


def bounded_int(tp: Any) -> Any:
    """``int`` as a signed 64-bit integer: no 4,000-digit numbers from a query string."""
    import msgspec

    if tp is int:
        return typing.Annotated[int, msgspec.Meta(ge=-_INT64, le=_INT64 - 1)]
    origin = typing.get_origin(tp)
    if origin is Union:
        return Union[tuple(bounded_int(arg) for arg in typing.get_args(tp))]
    if origin is list:
        return list[bounded_int(typing.get_args(tp)[0])]  # type: ignore[misc]
    return tp


def _docs(fn: Any) -> tuple[Optional[str], Optional[str]]:
    doc = inspect.getdoc(fn)
    if not doc:
        return None, None
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()), (rest.strip() or None)


_CACHE: dict[tuple[Any, ...], MethodSignature] = {}


#: ``on_<METHOD>`` for each servlet method, as literals: Python interns them, and a
#: name built per request (``f"on_{method}"``) is interned again by every getattr.
METHOD_ATTRIBUTES = {
    "GET": "on_GET",
    "POST": "on_POST",
    "PUT": "on_PUT",
    "PATCH": "on_PATCH",
    "DELETE": "on_DELETE",
}


def method_attribute(method: str) -> str:
    """``"on_" + method``, without building the name for the usual methods."""
    return METHOD_ATTRIBUTES.get(method) or f"on_{method}"


def signature_of(
    servlet: type, method: str, path_names: Iterable[str], label: Optional[str] = None
) -> MethodSignature:
    """The signature of ``servlet.on_<method>`` for a pattern with ``path_names``.

    Cached: the second call for the same class, method function and names is a
    dict lookup.

    :raises TypeError: a parameter that is neither a path parameter, a query
        argument, a header nor the body; two bodies; a body on GET/DELETE; a path
        parameter the method does not accept.
    """
    fn = getattr(servlet, METHOD_ATTRIBUTES.get(method) or f"on_{method}")
    names = tuple(sorted(path_names)) if path_names else ()
    return signature_of_function(servlet, method, fn, names, label)


def signature_of_function(
    servlet: type, method: str, fn: Any, path_names: tuple[str, ...], label: Optional[str] = None
) -> MethodSignature:
    """:func:`signature_of`, for the function ``fn`` that ``servlet.on_<method>``
    resolves to and the sorted ``path_names``: one dict lookup once cached."""
    key = (servlet, method, fn, path_names)
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = _read(servlet, method, fn, path_names, label or servlet.__name__)
    return found


def _read(
    servlet: type, method: str, fn: Any, path: tuple[str, ...], label: str
) -> MethodSignature:
    where = f"{label}.on_{method}"
    target = inspect.unwrap(fn)
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        return _untyped(method, fn, path)  # a partial or a callable object: called as before
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin or an odd callable: called as before
        return _untyped(method, fn, path)
    params = list(sig.parameters.values())
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]  # self, or the handler of a route() function
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    extra = [p for p in named if p.name not in path]
    missing = [name for name in path if name not in {p.name for p in named}]
    if missing and not var_kw:
        raise TypeError(
            f"{where} does not accept the path parameter(s) {missing}: add them to its "
            "signature (or **params)"
        )
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception as error:
        if not extra and "return" not in getattr(target, "__annotations__", {}):
            return _untyped(method, fn, path)
        raise TypeError(f"{where}: its type hints cannot be resolved: {error}") from None
    summary, description = _docs(target)
    returns = hints.get("return")
    if returns is not None and not is_structured(returns):
        returns = None
    if not extra:
        base = _untyped(method, fn, path)
        return dataclasses.replace(
            base,
            path_annotations={n: hints[n] for n in path if n in hints},
            returns=returns,
            summary=summary,
            description=description,
        )
    query: list[InputParam] = []
    headers: list[InputParam] = []
    body: Optional[BodyParam] = None
    for param in extra:
        if param.name not in hints:
            raise TypeError(
                f"{where}: parameter {param.name!r} is not in the pattern (path parameters: "
                f"{list(path)}) and has no type annotation; annotate it as a query argument, "
                "a header or the body, or remove it"
            )
        annotation = hints[param.name]
        header: Optional[Header] = None
        implicit_optional = False
        if typing.get_origin(annotation) is Union:
            # Python 3.9 wraps Annotated[...] = None in Optional[...] itself.
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if (
                len(args) == 1
                and typing.get_origin(args[0]) is typing.Annotated
                and any(isinstance(m, Header) for m in args[0].__metadata__)
            ):
                annotation, implicit_optional = args[0], True
        if typing.get_origin(annotation) is typing.Annotated:
            meta = [m for m in annotation.__metadata__ if isinstance(m, Header)]
            header = meta[0] if meta else None
            others = tuple(m for m in annotation.__metadata__ if not isinstance(m, Header))
            inner: Any = typing.get_args(annotation)[0]
            # Header() is ours; other metadata (msgspec.Meta constraints) stays.
            if implicit_optional:
                inner = Optional[inner]
            annotation = typing.Annotated[(inner, *others)] if others else inner
        required = param.default is inspect.Parameter.empty
        default = None if required else param.default
        if header is None and is_structured(annotation):
            if body is not None:
                raise TypeError(
                    f"{where}: two body parameters, {body.name!r} and {param.name!r}; a "
                    "request has one body: combine them in one type"
                )
            if method in _BODYLESS_METHODS:
                raise TypeError(
                    f"{where}: parameter {param.name!r} would be a request body, and "
                    f"{method} requests have none: use on_POST/on_PUT/on_PATCH"
                )
            body = BodyParam(param.name, annotation, required)
            continue
        repeated = _input_shape(annotation)
        if repeated is None:
            raise TypeError(
                f"{where}: parameter {param.name!r}: {annotation!r} is not a query argument "
                "or header type (int, float, bool, str, UUID, datetime, date, Decimal, Enum, "
                "Literal, Optional[...] or list[...] of those) nor a body type (a msgspec "
                "Struct, dataclass, TypedDict, or a list/dict of one)"
            )
        if repeated and required:
            required, default = False, None
        if header is not None:
            wire = header.name or param.name.replace("_", "-")
            headers.append(InputParam(param.name, wire, annotation, required, default, repeated))
        else:
            query.append(
                InputParam(param.name, param.name, annotation, required, default, repeated)
            )
    try:
        import msgspec
    except ImportError:  # pragma: no cover - the test extra installs it
        raise TypeError(
            f"{where} has typed parameters: install msgspec (pip install "
            "tornado-jsonservlet[typed])"
        ) from None
    return MethodSignature(
        method=method,
        function=fn,
        path=path,
        path_annotations={n: hints[n] for n in path if n in hints},
        query=tuple(query),
        headers=tuple(headers),
        body=body,
        returns=returns,
        typed=True,
        summary=summary,
        description=description,
        _query_type=_struct_for(f"{label}_{method}_query", query, msgspec),
        _header_type=_struct_for(f"{label}_{method}_headers", headers, msgspec),
        _body_decoder=_body_decoder(body, msgspec),
    )


def _body_decoder(body: Optional[BodyParam], msgspec: Any) -> Any:
    if body is None:
        return None
    if uses_pydantic(body.annotation):
        return _PydanticBody(body.annotation)
    return msgspec.json.Decoder(body.annotation)


def _struct_for(name: str, params: list[InputParam], msgspec: Any) -> Any:
    if not params:
        return None
    fields: list[Any] = []
    for param in sorted(params, key=lambda p: not p.required):  # required fields first
        tp = bounded_int(param.annotation)
        if param.repeated:
            fields.append((param.name, tp, msgspec.field(default_factory=list)))
        elif param.required:
            fields.append((param.name, tp))
        else:
            fields.append((param.name, tp, param.default))
    return msgspec.defstruct(name, fields)


def _untyped(method: str, fn: Any, path: tuple[str, ...]) -> MethodSignature:
    return MethodSignature(
        method=method,
        function=fn,
        path=path,
        path_annotations={},
        query=(),
        headers=(),
        body=None,
        returns=None,
        typed=False,
        summary=None,
        description=None,
    )


def check_servlet_class(servlet: type, label: str, methods: Iterable[str]) -> None:
    """Mistakes in a servlet class that would otherwise show only while serving."""
    if not list(methods):
        lower = [
            m for m in ("get", "post", "put", "patch", "delete") if f"on_{m}" in _names(servlet)
        ]
        hint = (
            f"; it defines on_{lower[0]}: servlet methods are upper case (on_{lower[0].upper()})"
            if lower
            else ""
        )
        raise TypeError(f"{label} defines no on_GET/on_POST/on_PUT/on_PATCH/on_DELETE{hint}")
    for name in sorted(_names(servlet)):
        verb = name[3:]
        if name.startswith("on_") and verb.lower() in _VERBS and not verb.isupper():
            raise TypeError(
                f"{label}.{name}: servlet methods are upper case: rename it on_{name[3:].upper()}"
            )
    for verb in _VERBS:
        owner = next(
            (
                c
                for c in servlet.__mro__
                if verb in c.__dict__ and not getattr(c.__dict__[verb], DISPATCHER_COPY_MARK, False)
            ),
            None,
        )
        if owner is not None and not _toolkit_or_tornado(owner):
            raise TypeError(
                f"{label} defines {verb}() (in {owner.__qualname__}): a servlet's methods are "
                f"on_{verb.upper()}, which return the response; {verb}() would bypass the servlet"
            )


def _toolkit_or_tornado(cls: type) -> bool:
    module = cls.__module__
    return module.startswith(("tornado_jsonservlet.", "tornado.")) or module in ("builtins",)


def _names(servlet: type) -> set[str]:
    found: set[str] = set()
    for cls in servlet.__mro__:
        if _toolkit_or_tornado(cls):
            continue
        found.update(cls.__dict__)
    return found
