"""tornado-jsonservlet: mixins that make Tornado handlers stop work for departed clients.

The parts, each in its own module and usable alone:

* :mod:`~tornado_jsonservlet.connection` -- whether the client is still there;
* :mod:`~tornado_jsonservlet.safe_output` -- output that cannot fail after a disconnect;
* :mod:`~tornado_jsonservlet.disconnect` -- cancelling in-flight work on disconnect.
"""

from .connection import CLIENT_CLOSED_REQUEST, ClientConnectionMixin
from .disconnect import CancelOnDisconnectMixin, uncancellable
from .safe_output import SafeWriteMixin

__version__ = "0.1.0.dev0"

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "CancelOnDisconnectMixin",
    "ClientConnectionMixin",
    "SafeWriteMixin",
    "__version__",
    "uncancellable",
]
