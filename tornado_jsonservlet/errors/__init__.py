"""Errors: exception classes with machine-readable codes, and their rendering.

``exceptions`` holds the classes (:class:`ServletError` and its subclasses),
``rendering`` turns any exception into a JSON or HTML error response, and
``cors`` adds CORS headers to successes and errors alike. The exception classes
are re-exported here, so ``from tornado_jsonservlet.errors import NotFound`` works.
"""

from tornado_jsonservlet.errors.exceptions import *  # noqa: F403
from tornado_jsonservlet.errors.exceptions import __all__  # noqa: F401
