"""Error responses: JSON or HTML, chosen per handler or by ``Accept``, never leaking internals.

Tornado's default ``write_error`` sends an HTML page to JSON clients, shows the
traceback in debug mode, and gives clients no code to branch on. The mixins here
replace it:

* :class:`JsonErrorMixin` -- ``{"errcode": "NOT_FOUND", "error": "No such user"}``;
* :class:`HtmlErrorMixin` -- a jinja2 page with every user-controlled value escaped;
* :class:`NegotiatedErrorMixin` -- whichever of the two the client's ``Accept`` prefers.

How an exception becomes a response
-----------------------------------
1. The most specific *error handler* for the exception's class wins, walking the
   exception's MRO (Falcon's rule). Handlers come from ``error_handlers = {...}`` in
   a class body or from ``add_error_handler()``; a subclass's entry, or a later
   registration for the same exception class, replaces the earlier one.
2. A handler receives ``(request_handler, exception)`` and returns a
   :class:`~tornado_jsonservlet.errors.ServletError` to render, or ``None`` when it
   wrote the response itself.
3. ``tornado.web.HTTPError`` (and so every ``ServletError``) is handled built in:
   the status and its reason phrase are shown; the internal ``log_message`` is not.
4. Anything else is a bug: 500 ``{"errcode": "UNKNOWN", "error": "Internal server
   error"}``. With the ``serve_traceback`` (or ``debug``) setting, a ``traceback``
   member is added for development.

Logging policy
--------------
* 4xx (and redirects): one INFO line with status, errcode and message.
* 5xx raised on purpose: one WARNING line.
* 5xx from an unexpected exception: exactly one ERROR record, with the traceback.
  (Tornado's access log still records the request separately.)
* After the client disconnected: nothing is rendered and nothing is logged at ERROR.
* An exception after the headers were sent cannot become an error response: the
  connection is aborted, so the client sees a truncated response rather than a
  corrupt "success", and the exception is logged once.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Callable, ClassVar, Optional, TypeVar, Union

import jinja2
import markupsafe
import tornado.web

from .connection import abort_response
from .errors import ServletError, reason_phrase
from .jsonio import JSON_CONTENT_TYPE, encode

__all__ = [
    "ErrorHandler",
    "ErrorRenderingMixin",
    "HtmlErrorMixin",
    "JsonErrorMixin",
    "NegotiatedErrorMixin",
    "preferred_media_type",
]

log = logging.getLogger("tornado_jsonservlet.errors")

#: ``handler(request_handler, exception)`` -> an error to render, or None if it wrote one.
#: This is the type of the values of an ``error_handlers`` table, which mixes
#: exception classes; :meth:`ErrorRenderingMixin.add_error_handler` checks each
#: handler against its exception class and request-handler class precisely.
ErrorHandler = Callable[[Any, Any], Optional[tornado.web.HTTPError]]

_Handler = TypeVar("_Handler", bound="ErrorRenderingMixin")
_Exc = TypeVar("_Exc", bound=BaseException)

_INTERNAL_MESSAGE = "Internal server error"
_HANDLERS_ATTR = "_own_error_handlers"


def _internal_detail(exc: BaseException) -> str:
    """An HTTPError's ``log_message``: for the log line, never for the client."""
    message = getattr(exc, "log_message", None)
    if not message:
        return ""
    try:
        return str(message % exc.args) if exc.args else str(message)
    except (TypeError, ValueError):
        return str(message)


def _bodiless(status: int) -> bool:
    return status in (204, 304) or 100 <= status < 200 or 300 <= status < 400


class ErrorRenderingMixin(tornado.web.RequestHandler):
    """The shared pipeline: exception -> :class:`ServletError` -> logged once -> rendered.

    Subclasses provide :meth:`error_body`. Use :class:`JsonErrorMixin`,
    :class:`HtmlErrorMixin` or :class:`NegotiatedErrorMixin` rather than this class.
    """

    #: ``{ExceptionClass: handler}`` applied to this class and its subclasses.
    error_handlers: ClassVar[Mapping[type[BaseException], ErrorHandler]] = {}

    _pending_log: Optional[BaseException] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        setattr(cls, _HANDLERS_ATTR, dict(cls.__dict__.get("error_handlers", {})))

    @classmethod
    def add_error_handler(
        cls: type[_Handler],
        exception_type: type[_Exc],
        handler: Callable[[_Handler, _Exc], Optional[tornado.web.HTTPError]],
    ) -> None:
        """Register ``handler`` for ``exception_type`` (and its subclasses) on this class.

        ``handler(request_handler, error)`` receives an instance of this class (or a
        subclass) and an ``exception_type``, and returns the error to render, or
        None when it wrote the response itself.

        A later registration for the same exception class replaces the earlier one.
        """
        if not (isinstance(exception_type, type) and issubclass(exception_type, BaseException)):
            raise TypeError(f"{exception_type!r} is not an exception class")
        if _HANDLERS_ATTR not in cls.__dict__:
            setattr(cls, _HANDLERS_ATTR, {})
        table: dict[type[BaseException], ErrorHandler] = cls.__dict__[_HANDLERS_ATTR]
        table.pop(exception_type, None)
        table[exception_type] = handler

    def find_error_handler(self, error: BaseException) -> Optional[ErrorHandler]:
        """The handler for ``error``: most specific exception class first, then the
        most derived request-handler class."""
        classes = type(self).__mro__
        for exception_type in type(error).__mro__:
            for klass in classes:
                table = klass.__dict__.get(_HANDLERS_ATTR)
                if table and exception_type in table:
                    handler: ErrorHandler = table[exception_type]
                    return handler
        return None

    def error_body(self, error: ServletError, exc: Optional[BaseException]) -> tuple[str, bytes]:
        """Return ``(content_type, body)`` for ``error``; may set extra headers."""
        raise NotImplementedError

    # -- Tornado hooks ---------------------------------------------------------

    def log_exception(
        self,
        typ: Optional[type[BaseException]],
        value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if value is None:
            return
        if getattr(self, "client_disconnected", False):
            # Nobody is waiting for the answer; a bug is still worth a warning.
            if not isinstance(value, tornado.web.HTTPError):
                log.warning(
                    "Exception after client disconnected: %s",
                    self._request_summary(),
                    exc_info=value,
                )
            return
        if self._finished or self._headers_written:
            # No error response can follow (the connection is aborted), so log now.
            if isinstance(value, tornado.web.HTTPError):
                log.warning(
                    "%d raised after the response started; connection aborted: %s",
                    value.status_code,
                    self._request_summary(),
                )
            else:
                log.error("Uncaught exception %s", self._request_summary(), exc_info=value)
            return
        # An error response follows; write_error logs it once the outcome is known.
        self._pending_log = value

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        if self._headers_written and not self._finished:
            if "exc_info" not in kwargs:
                log.error(
                    "Error %d after the headers were sent; connection aborted: %s",
                    status_code,
                    self._request_summary(),
                )
            self.set_status(status_code)  # for the access log only
            abort_response(self)
            return
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc: Optional[BaseException] = kwargs["exc_info"][1] if "exc_info" in kwargs else None
        error, expected = self._resolve_error(status_code, exc)
        pending, self._pending_log = self._pending_log, None
        if exc is not None and pending is exc:
            self._log_outcome(exc, error, expected)
        if error is not None:
            self._write_error_response(error, exc)

    # -- machinery -------------------------------------------------------------

    def _resolve_error(
        self, status_code: int, exc: Optional[BaseException]
    ) -> tuple[Optional[ServletError], Optional[bool]]:
        """``(error to render, or None if a handler wrote the response; expected?)``.

        ``expected`` is None when a broken error handler was already logged.
        """
        if exc is None:
            # send_error(code) called directly: the reason given, if any, is the message.
            return ServletError(status_code, self._reason or reason_phrase(status_code)), True
        handler = self.find_error_handler(exc)
        if handler is None:
            return self._internal_error(exc), False
        try:
            result: object = handler(self, exc)
        except Exception:
            log.error("Error handler %r failed while handling %r", handler, exc, exc_info=True)
            return self._internal_error(exc), None
        if result is None:
            return None, True
        if isinstance(result, tornado.web.HTTPError):
            return self._builtin_error(result), True
        log.error("Error handler %r returned %r, not an HTTPError or None", handler, result)
        return self._internal_error(exc), None

    @staticmethod
    def _builtin_error(exc: tornado.web.HTTPError) -> ServletError:
        """An HTTPError as rendered: its reason phrase, never its ``log_message``."""
        if isinstance(exc, ServletError):
            return exc
        status = exc.status_code
        error = ServletError(status, exc.reason or reason_phrase(status))
        error.reason = exc.reason or error.reason
        return error

    def _internal_error(self, exc: BaseException) -> ServletError:
        fields: dict[str, Any] = {}
        if self.settings.get("serve_traceback"):
            fields["traceback"] = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return ServletError(500, _INTERNAL_MESSAGE, "UNKNOWN", **fields)

    def _log_outcome(
        self, exc: BaseException, error: Optional[ServletError], expected: Optional[bool]
    ) -> None:
        if expected is None:
            return
        summary = self._request_summary()
        if error is None:
            log.info("%s handled by its error handler: %s", type(exc).__name__, summary)
        elif not expected:
            log.error("Uncaught exception %s", summary, exc_info=exc)
        else:
            level = logging.WARNING if error.code >= 500 else logging.INFO
            detail = _internal_detail(exc)
            log.log(
                level,
                "%d %s: %s (%s)%s",
                error.code,
                error.errcode,
                error.msg,
                summary,
                f" -- {detail}" if detail else "",
            )

    def _write_error_response(self, error: ServletError, exc: Optional[BaseException]) -> None:
        self.set_status(error.code, error.reason)
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
        self.set_header("X-Content-Type-Options", "nosniff")
        if _bodiless(error.code):
            self.clear_header("Content-Type")
            self.finish()
            return
        try:
            content_type, body = self.error_body(error, exc)
        except Exception:
            log.error("Could not render error body for %r", error, exc_info=True)
            self.set_status(500)
            content_type, body = "text/plain; charset=UTF-8", _INTERNAL_MESSAGE.encode()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class JsonErrorMixin(ErrorRenderingMixin):
    """Render errors as ``{"errcode": ..., "error": ..., **fields}``."""

    def error_body(self, error: ServletError, exc: Optional[BaseException]) -> tuple[str, bytes]:
        return JSON_CONTENT_TYPE, encode(error.to_dict())


# -- HTML ----------------------------------------------------------------------

ErrorTemplate = Union[None, str, jinja2.Template]


@functools.cache
def _environment(template_path: Optional[str]) -> jinja2.Environment:
    loader: jinja2.BaseLoader
    if template_path is None:
        loader = jinja2.PackageLoader("tornado_jsonservlet", "templates")
    else:
        loader = jinja2.FileSystemLoader(template_path)
    return jinja2.Environment(loader=loader, autoescape=True)


class HtmlErrorMixin(ErrorRenderingMixin):
    """Render errors as an HTML page (jinja2, autoescaped), safe from framing.

    ``error_template`` chooses the page:

    * ``None`` (default): the page shipped with the package;
    * a string containing ``{``: a format string with ``{code}``, ``{msg}``,
      ``{errcode}`` and ``{reason}``, all HTML-escaped;
    * any other string: a template name under the application's ``template_path``;
    * a ``jinja2.Template``.

    Templates receive ``code``, ``reason``, ``msg``, ``errcode`` and, in debug mode
    only, ``traceback``. Values are passed already escaped, so even a template
    compiled without autoescape cannot be turned into an XSS vector.
    """

    error_template: ErrorTemplate = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        template = cls.__dict__.get("error_template")
        if template is not None and not isinstance(template, (str, jinja2.Template)):
            raise TypeError(
                f"{cls.__name__}.error_template must be None, a str or a jinja2.Template, "
                f"not {type(template).__name__}"
            )
        if isinstance(template, str) and "{" in template:
            try:  # a broken format string fails at import time, not during an error
                template.format(code=0, msg="", errcode="", reason="")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"{cls.__name__}.error_template: {error!r}") from error
        elif isinstance(template, str) and not template.strip():
            raise ValueError(f"{cls.__name__}.error_template is an empty template name")

    @classmethod
    def needs_template_path(cls) -> bool:
        """True when ``error_template`` names a file under the app's ``template_path``."""
        template = cls.error_template
        return isinstance(template, str) and "{" not in template

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Fail now if this class cannot render its errors with these application settings.

        A named ``error_template`` needs the ``template_path`` setting and must load
        from it. Called by :meth:`ServletRegistry.urlspecs
        <tornado_jsonservlet.registry.ServletRegistry.urlspecs>`; call it yourself
        for handlers you route by hand. A class that overrides
        ``get_template_path`` chooses its directory per request and is not checked.

        :raises ValueError: naming the class, the template and what is missing.
        """
        if not cls.needs_template_path():
            return
        if cls.get_template_path is not tornado.web.RequestHandler.get_template_path:
            return
        template = cls.error_template
        template_path = settings.get("template_path")
        if not template_path:
            raise ValueError(
                f"{cls.__name__}.error_template = {template!r} names a template file, "
                "but the application has no template_path setting"
            )
        try:
            _environment(str(template_path)).get_template(str(template))
        except jinja2.TemplateError as error:
            raise ValueError(
                f"{cls.__name__}.error_template = {template!r} cannot be loaded from "
                f"template_path {template_path!r}: {error!r}"
            ) from error

    def error_body(self, error: ServletError, exc: Optional[BaseException]) -> tuple[str, bytes]:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", "frame-ancestors 'none'")
        context = {
            "code": error.code,
            "reason": markupsafe.escape(error.reason or reason_phrase(error.code)),
            "msg": markupsafe.escape(error.msg),
            "errcode": markupsafe.escape(error.errcode),
        }
        if "traceback" in error.fields:
            context["traceback"] = markupsafe.escape("".join(error.fields["traceback"]))
        template = self.error_template
        if isinstance(template, jinja2.Template):
            html = template.render(context)
        elif isinstance(template, str) and "{" in template:
            html = template.format(**context)
        else:
            path = None if template is None else self.get_template_path()
            html = _environment(path).get_template(template or "error.html").render(context)
        return "text/html; charset=UTF-8", html.encode("utf-8")


# -- negotiation -----------------------------------------------------------------


def preferred_media_type(accept: Optional[str], offers: Sequence[str]) -> str:
    """Pick the offer the ``Accept`` header ranks highest (q-values respected).

    Each offer takes the q of the most specific range that matches it (exact, then
    ``type/*``, then ``*/*``). Ties, a missing header and a header that accepts
    none of the offers all give the first offer.
    """
    if not accept:
        return offers[0]
    ranges: list[tuple[str, str, float]] = []
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        kind, _, subtype = media.strip().lower().partition("/")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        if kind:
            ranges.append((kind, subtype or "*", q))

    def quality(offer: str) -> float:
        kind, _, subtype = offer.partition("/")
        best, best_specificity = 0.0, -1
        for range_kind, range_subtype, q in ranges:
            if (range_kind, range_subtype) == (kind, subtype):
                specificity = 2
            elif range_kind == kind and range_subtype == "*":
                specificity = 1
            elif range_kind == "*" and range_subtype == "*":
                specificity = 0
            else:
                continue
            if specificity > best_specificity:
                best, best_specificity = q, specificity
        return best

    scores = [quality(offer) for offer in offers]
    top = max(scores)
    return offers[0] if top <= 0 else offers[scores.index(top)]


class NegotiatedErrorMixin(JsonErrorMixin, HtmlErrorMixin):
    """JSON or HTML errors, whichever the request's ``Accept`` prefers (JSON by default)."""

    def error_body(self, error: ServletError, exc: Optional[BaseException]) -> tuple[str, bytes]:
        self.add_header("Vary", "Accept")
        accept = self.request.headers.get("Accept")
        if preferred_media_type(accept, ("application/json", "text/html")) == "text/html":
            return HtmlErrorMixin.error_body(self, error, exc)
        return JsonErrorMixin.error_body(self, error, exc)


# Built-in: every HTTPError (and so every ServletError) renders as itself. It sits
# in the table like any user handler, so a handler for a broader class such as
# Exception never captures deliberate HTTP errors.
ErrorRenderingMixin.add_error_handler(tornado.web.HTTPError, lambda handler, error: error)
