"""Testing helpers: raw HTTP connections that leave on cue, and a pytest plugin.

The helpers live in ``harness`` and are re-exported here, so
``from tornado_jsonservlet.testing import RawHTTPConnection`` keeps working.
"""

from tornado_jsonservlet.testing.harness import *  # noqa: F403
from tornado_jsonservlet.testing.harness import __all__  # noqa: F401
