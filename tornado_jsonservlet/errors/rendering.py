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
Records go where Tornado puts them, so existing alerting keeps working:

* An unexpected exception that becomes a 500 is logged exactly once, at ERROR
  with its traceback, by ``RequestHandler.log_exception`` on the
  ``tornado.application`` logger; an application's ``log_exception`` override
  anywhere in the MRO still runs. This does not depend on this module's
  ``write_error`` running: applications override ``write_error`` too.
* A deliberate ``HTTPError``: one line on ``tornado.general``, INFO for 4xx and
  redirects, WARNING for 5xx, with status, errcode, message and the internal
  ``log_message``; never ERROR.
* An exception mapped by an error handler: one line once the handler's outcome
  is known.
* After the client disconnected: nothing is rendered and nothing is logged at
  ERROR (a bug is a WARNING).
* An exception after the headers were sent cannot become an error response: the
  connection is aborted, so the client sees a truncated response rather than a
  corrupt "success". A response that was already *finished* is not aborted.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Callable, ClassVar, NamedTuple, Optional, TypeVar, Union

import jinja2
import markupsafe
import tornado.web
from tornado.iostream import StreamClosedError
from tornado.log import app_log, gen_log

from tornado_jsonservlet import tornado_adapter as tornado_internals
from tornado_jsonservlet.core.cancellation import RequestCancelled
from tornado_jsonservlet.core.connection import abort_response
from tornado_jsonservlet.core.headers import check_header, header_value_problem, parse_accept
from tornado_jsonservlet.core.scope import scope_of
from tornado_jsonservlet.errors.exceptions import ServletError, reason_phrase
from tornado_jsonservlet.jsonio.codec import JSON_CONTENT_TYPE, encode

__all__ = [
    "ErrorHandler",
    "ErrorRenderingMixin",
    "HtmlErrorMixin",
    "JsonErrorMixin",
    "NegotiatedErrorMixin",
    "preferred_media_type",
]


#: ``handler(request_handler, exception)`` -> an error to render, or None if it wrote one.
#: This is the type of the values of an ``error_handlers`` table, which mixes
#: exception classes; :meth:`ErrorRenderingMixin.add_error_handler` checks each
#: handler against its exception class and request-handler class precisely.
ErrorHandler = Callable[[Any, Any], Optional[tornado.web.HTTPError]]

_Handler = TypeVar("_Handler", bound="ErrorRenderingMixin")
_Exc = TypeVar("_Exc", bound=BaseException)

_INTERNAL_MESSAGE = "Internal server error"
_HANDLERS_ATTR = "_jsonservlet_error_handlers"


def _internal_detail(exc: BaseException) -> str:
    """An HTTPError's ``log_message``: for the log line, never for the client."""
    message = getattr(exc, "log_message", None)
    if not message:
        return ""
    try:
        return str(message % exc.args) if exc.args else str(message)
    except (TypeError, ValueError):
        return str(message)


def _valid_reason(reason: Optional[str]) -> bool:
    """A reason phrase Tornado can put on the status line, on every version (6.4 sends
    anything, so CR/LF or non-Latin-1 text would break the response)."""
    return (
        isinstance(reason, str)
        and 0 < len(reason) <= 128
        and "<" not in reason
        and header_value_problem(reason) is None
    )


def _bodiless(status: int) -> bool:
    return status in (204, 304) or 100 <= status < 200 or 300 <= status < 400


def _cancelling(handler: tornado.web.RequestHandler) -> bool:
    """Whether the toolkit is cancelling this request; its machinery then decides the end.

    Tornado 6.6 answers a cancelled request task with ``send_error(500)``, which
    reaches this mixin first when it precedes the cancellation mixin in the MRO.
    """
    return scope_of(handler).delivered


def _builtin_error(exc: tornado.web.HTTPError) -> ServletError:
    """An HTTPError as rendered: its reason phrase, never its ``log_message``."""
    if isinstance(exc, RequestCancelled):
        cancelled = exc.cancel_reason
        return ServletError(cancelled.status, cancelled.message, cancelled.errcode)
    if isinstance(exc, ServletError):
        return exc
    status = exc.status_code
    if not (isinstance(status, int) and 100 <= status <= 599):
        # Not a status HTTP can carry: an internal error, not a bogus status line.
        return ServletError(500, _INTERNAL_MESSAGE, "UNKNOWN")
    reason = exc.reason
    error = ServletError(status, reason or reason_phrase(status))
    if reason and _valid_reason(reason):
        error.reason = reason
    return error


def _render_http_error(handler: Any, error: tornado.web.HTTPError) -> tornado.web.HTTPError:
    """The built-in error handler: an HTTPError renders as itself."""
    return error


def _log_http_error(
    handler: tornado.web.RequestHandler, error: ServletError, exc: BaseException
) -> None:
    """One line for a deliberate error, where Tornado logs HTTP errors; never ERROR."""
    level = logging.WARNING if error.code >= 500 else logging.INFO
    detail = _internal_detail(exc)
    gen_log.log(
        level,
        "%d %s: %s (%s)%s",
        error.code,
        error.errcode,
        error.msg,
        tornado_internals.request_summary(handler),
        f" -- {detail}" if detail else "",
    )


@functools.cache
def _has_application_log_exception(cls: Any) -> bool:
    """Whether a class other than the toolkit's and Tornado's overrides ``log_exception``.

    For a deliberate HTTPError the mixin logs its own line instead of Tornado's;
    an application's override further down the MRO must still run.
    """
    for klass in cls.__mro__[1:]:
        if klass.__module__ == "tornado.web":
            return False
        if "log_exception" in klass.__dict__ and not klass.__module__.startswith(
            "tornado_jsonservlet."
        ):
            return True
    return False


class _HandlerOutcome(NamedTuple):
    """What an error handler did with an exception: returned ``result`` or ``raised``."""

    error: BaseException
    handler: ErrorHandler
    result: object
    raised: Optional[Exception]


class ErrorRenderingMixin(tornado_internals.RequestLifecycle):
    """The shared pipeline: exception -> :class:`ServletError` -> logged once -> rendered.

    Subclasses provide :meth:`error_body`. Use :class:`JsonErrorMixin`,
    :class:`HtmlErrorMixin` or :class:`NegotiatedErrorMixin` rather than this class.
    """

    #: ``{ExceptionClass: handler}`` applied to this class and its subclasses.
    error_handlers: ClassVar[Mapping[type[BaseException], ErrorHandler]] = {}

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
        """Log an exception once, at the level its outcome deserves.

        An unexpected exception is logged by Tornado's ``log_exception`` (ERROR on
        ``tornado.application``, with your override's chain intact); a deliberate
        ``HTTPError``/``ServletError`` is an INFO or WARNING line on ``tornado.general``;
        an exception after the client left is at most a WARNING.
        """
        if value is None or isinstance(value, StreamClosedError):
            super().log_exception(typ, value, tb)
            return
        if getattr(self, "client_disconnected", False):
            # Nobody is waiting for the answer; a bug is still worth a warning.
            if not isinstance(value, tornado.web.HTTPError):
                app_log.warning(
                    "Exception after client disconnected: %s",
                    tornado_internals.request_summary(self),
                    exc_info=(typ, value, tb),  # type: ignore[arg-type]
                )
            return
        handler = self.find_error_handler(value)
        if handler is _render_http_error and isinstance(value, tornado.web.HTTPError):
            _log_http_error(self, _builtin_error(value), value)
            if _has_application_log_exception(type(self)):  # type: ignore[arg-type]
                super().log_exception(typ, value, tb)
            return
        ran: Optional[_HandlerOutcome] = scope_of(self).error_outcome
        if ran is not None and ran.error is value and ran.raised is None and ran.result is None:
            # The handler ran already (see _jsonservlet_handle_exception) and wrote
            # the response itself.
            self._jsonservlet_log_outcome(value, None, True)
            return
        if (
            handler is None
            or tornado_internals.is_finished(self)
            or tornado_internals.headers_sent(self)
        ):
            super().log_exception(typ, value, tb)  # Tornado's "Uncaught exception"
            return
        # An error handler decides the outcome; write_error logs it once known
        # (or send_error, should an overridden write_error never get there).
        scope_of(self).pending_log = value

    def _jsonservlet_handle_exception(
        self, error: BaseException, handle: Callable[[BaseException], None]
    ) -> None:
        # An exception that an error handler maps to an HTTP error is reported as
        # that error from the start: whoever wraps log_exception (a tracer, an
        # error monitor) sees the 404 the client gets, not a 500.
        mapped = self._jsonservlet_mapped_error(error)
        if mapped is None:
            super()._jsonservlet_handle_exception(error, handle)
            return
        try:
            raise mapped from error
        except tornado.web.HTTPError as reported:
            super()._jsonservlet_handle_exception(reported, handle)

    def _jsonservlet_mapped_error(self, error: BaseException) -> Optional[ServletError]:
        """The HTTP error an error handler maps ``error`` to, or None to go the usual way.

        Only for exceptions other than HTTP errors, while the client is there. The
        handler runs here, once; what it did is kept in the scope for
        ``log_exception`` and ``write_error``, which would otherwise run it.
        """
        if isinstance(error, tornado.web.HTTPError) or scope_of(self).client_gone:
            return None
        handler = self.find_error_handler(error)
        if handler is None or handler is _render_http_error:
            return None
        outcome = self._jsonservlet_run_error_handler(handler, error)
        if outcome.raised is None and isinstance(outcome.result, tornado.web.HTTPError):
            scope_of(self).error_outcome = None  # reported as the mapped error itself
            return _builtin_error(outcome.result)
        return None

    def _jsonservlet_run_error_handler(
        self, handler: ErrorHandler, error: BaseException
    ) -> _HandlerOutcome:
        """Run ``handler`` for ``error`` at most once per request and exception."""
        scope = scope_of(self)
        cached: Optional[_HandlerOutcome] = scope.error_outcome
        if cached is not None and cached.error is error:
            return cached
        try:
            outcome = _HandlerOutcome(error, handler, handler(self, error), None)
        except Exception as raised:
            outcome = _HandlerOutcome(error, handler, None, raised)
        scope.error_outcome = outcome
        return outcome

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """Tornado's ``send_error``; after the headers went out, the connection is aborted.

        A response whose headers were already sent cannot become an error response; the
        client then sees a truncated response rather than a corrupt "success".
        """
        if (
            tornado_internals.headers_sent(self)
            and not tornado_internals.is_finished(self)
            and not _cancelling(self)
        ):
            if "exc_info" not in kwargs:
                app_log.error(
                    "Error %d after the headers were sent; connection aborted: %s",
                    status_code,
                    tornado_internals.request_summary(self),
                )
            self.set_status(status_code)  # for the access log only
            abort_response(self)
            return
        try:
            super().send_error(status_code, **kwargs)
        finally:
            scope = scope_of(self)
            pending, scope.pending_log = scope.pending_log, None
            if pending is not None:
                # An overridden write_error rendered it without this mixin's help:
                # Tornado made it a 500 (or the HTTPError's status).
                if isinstance(pending, tornado.web.HTTPError):
                    _log_http_error(self, _builtin_error(pending), pending)
                else:
                    super().log_exception(type(pending), pending, pending.__traceback__)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Render the error through the error-handler table and :meth:`error_body`.

        Replaces Tornado's HTML page with the mixin's format; ``ServletError`` and
        ``HTTPError`` give their status and ``errcode``, anything else a bare 500.
        """
        exc: Optional[BaseException] = kwargs["exc_info"][1] if "exc_info" in kwargs else None
        error, expected = self._jsonservlet_resolve_error(status_code, exc)
        scope = scope_of(self)
        pending, scope.pending_log = scope.pending_log, None
        if exc is not None and pending is exc:
            self._jsonservlet_log_outcome(exc, error, expected)
        if error is not None:
            self._jsonservlet_write_error_response(error, exc)

    # -- machinery -------------------------------------------------------------

    def _jsonservlet_resolve_error(
        self, status_code: int, exc: Optional[BaseException]
    ) -> tuple[Optional[ServletError], Optional[bool]]:
        """``(error to render, or None if a handler wrote the response; expected?)``.

        ``expected`` is None when a broken error handler was already logged.
        """
        if exc is None:
            # send_error(code) called directly: the reason given, if any, is the message.
            return ServletError(
                status_code, tornado_internals.reason_phrase(self) or reason_phrase(status_code)
            ), True
        handler = self.find_error_handler(exc)
        if handler is None:
            return self._jsonservlet_internal_error(exc), False
        outcome = self._jsonservlet_run_error_handler(handler, exc)
        scope_of(self).error_outcome = None
        if outcome.raised is not None:
            raised = outcome.raised
            app_log.error(
                "Error handler %r failed while handling %r",
                handler,
                exc,
                exc_info=(type(raised), raised, raised.__traceback__),
            )
            return self._jsonservlet_internal_error(exc), None
        result = outcome.result
        if result is None:
            return None, True
        if isinstance(result, tornado.web.HTTPError):
            return _builtin_error(result), True
        app_log.error("Error handler %r returned %r, not an HTTPError or None", handler, result)
        return self._jsonservlet_internal_error(exc), None

    def _jsonservlet_internal_error(self, exc: BaseException) -> ServletError:
        fields: dict[str, Any] = {}
        if self.settings.get("serve_traceback"):
            fields["traceback"] = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return ServletError(500, _INTERNAL_MESSAGE, "UNKNOWN", **fields)

    def _jsonservlet_log_outcome(
        self, exc: BaseException, error: Optional[ServletError], expected: Optional[bool]
    ) -> None:
        """Log an exception that an error handler turned into ``error``."""
        if expected is None:
            return  # the broken error handler was logged already
        if error is None:
            gen_log.info(
                "%s handled by its error handler: %s",
                type(exc).__name__,
                tornado_internals.request_summary(self),
            )
        elif not expected:
            super().log_exception(type(exc), exc, exc.__traceback__)
        else:
            _log_http_error(self, error, exc)

    def _jsonservlet_write_error_response(
        self, error: ServletError, exc: Optional[BaseException]
    ) -> None:
        try:
            # ServletError checks its headers when it is created; this catches ones
            # changed afterwards. A response is never sent without a header it
            # promised (a redirect without Location): it becomes a 500 instead.
            headers = [(name, check_header(name, value)) for name, value in error.headers.items()]
        except ValueError as problem:
            app_log.error("Cannot send the %d response: %s", error.code, problem)
            error, headers = self._jsonservlet_internal_error(exc or error), []
        reason = error.reason if _valid_reason(error.reason) else reason_phrase(error.code)
        self.set_status(error.code, reason)
        for name, value in headers:
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
            app_log.error("Could not render error body for %r", error, exc_info=True)
            self.set_status(500)
            content_type, body = "text/plain; charset=UTF-8", _INTERNAL_MESSAGE.encode()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class JsonErrorMixin(ErrorRenderingMixin):
    """Render errors as ``{"errcode": ..., "error": ..., **fields}``.

    .. versionadded:: 0.1
    """

    def error_body(self, error: ServletError, exc: Optional[BaseException]) -> tuple[str, bytes]:
        """``{"errcode": ..., "error": ...}`` plus the error's extra fields (and
        ``traceback`` with ``serve_traceback``), as ``application/json``.
        """
        body = error.to_dict()
        # With RequestIdMixin: the ID a client quotes when it reports the error.
        request_id = scope_of(self).request_id
        if request_id is not None and "request_id" not in body:
            body["request_id"] = request_id
        return JSON_CONTENT_TYPE, encode(body)


# -- HTML ----------------------------------------------------------------------

ErrorTemplate = Union[None, str, jinja2.Template]


# ASCII that no HTML context can give a meaning to: letters, digits and the
# punctuation below. Everything else of ASCII is written as a character reference.
_INERT_ASCII = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.,:;!?()@%+~*/[]{}|^$#"
)
_NAMED = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"}


def html_value(value: object) -> markupsafe.Markup:
    """``value`` as HTML text that stays a value in text and in every attribute.

    ``markupsafe.escape`` covers text and quoted attributes. An *unquoted*
    attribute (``<p class={msg}>``) also ends at whitespace, and ``=`` or a
    backtick there is trouble, so those, and every other ASCII character that is
    not a letter, digit or inert punctuation, become numeric character
    references: ``x onmouseover=alert(1)`` stays one attribute value. Browsers
    decode the references, so the page reads the same. Non-ASCII characters cannot
    end an attribute and are kept as they are.
    """
    text = str(value)
    out = []
    for char in text:
        if char in _INERT_ASCII or ord(char) > 0x7F:
            out.append(char)
        else:
            out.append(_NAMED.get(char) or f"&#{ord(char)};")
    return markupsafe.Markup("".join(out))


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

    .. versionadded:: 0.1
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
        """The error page rendered from ``error_template``, every value escaped,
        with headers that forbid framing.
        """
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", "frame-ancestors 'none'")
        template = self.error_template
        # The shipped page puts values in text only, where escaping suffices and
        # keeps the page's source readable; an application's template may put them
        # anywhere the README allows, unquoted attributes included.
        value = markupsafe.escape if template is None else html_value
        context = {
            "code": error.code,
            "reason": value(error.reason or reason_phrase(error.code)),
            "msg": value(error.msg),
            "errcode": value(error.errcode),
        }
        if "traceback" in error.fields:
            context["traceback"] = value("".join(error.fields["traceback"]))
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

    The header is client input, so parsing is strict and bounded
    (:func:`~tornado_jsonservlet.headers.parse_accept`): ASCII only, at most 4 KB
    and 64 ranges, weights written as RFC 9110 qvalues. Whatever cannot be read
    counts as no preference, never as an error: this runs while an error is
    being rendered.
    """
    ranges = parse_accept(accept)
    if not ranges:
        return offers[0]

    def quality(offer: str) -> float:
        kind, _, subtype = offer.partition("/")
        best, best_specificity = 0.0, -1
        for media_range in ranges:
            if (media_range.type, media_range.subtype) == (kind, subtype):
                specificity = 2
            elif media_range.type == kind and media_range.subtype == "*":
                specificity = 1
            elif media_range.type == "*" and media_range.subtype == "*":
                specificity = 0
            else:
                continue
            if specificity > best_specificity:
                best, best_specificity = media_range.q, specificity
        return best

    scores = [quality(offer) for offer in offers]
    top = max(scores)
    return offers[0] if top <= 0 else offers[scores.index(top)]


class NegotiatedErrorMixin(JsonErrorMixin, HtmlErrorMixin):
    """JSON or HTML errors, whichever the request's ``Accept`` prefers (JSON by default).

    .. versionadded:: 0.1
    """

    def error_body(self, error: ServletError, exc: Optional[BaseException]) -> tuple[str, bytes]:
        """JSON or HTML, chosen from the request's ``Accept`` header (JSON on a tie)."""
        self.add_header("Vary", "Accept")
        accept = self.request.headers.get("Accept")
        if preferred_media_type(accept, ("application/json", "text/html")) == "text/html":
            return HtmlErrorMixin.error_body(self, error, exc)
        return JsonErrorMixin.error_body(self, error, exc)


# Built-in: every HTTPError (and so every ServletError) renders as itself. It sits
# in the table like any user handler, so a handler for a broader class such as
# Exception never captures deliberate HTTP errors.
ErrorRenderingMixin.add_error_handler(tornado.web.HTTPError, _render_http_error)
