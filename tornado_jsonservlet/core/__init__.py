"""The core: whether the client is still there, and what happens when it leaves.

The lowest layer of the toolkit. Everything per request lives in one
:class:`~tornado_jsonservlet.core.scope.RequestScope`; the mixins here detect a
departed client (``connection``), keep output quiet afterwards (``safe_output``)
and cancel the request's work (``cancellation``), with deadlines and the context
variables that carry them to child tasks and threads (``context``, ``threads``).
Strict header parsing (``headers``) lives here too, because every layer above reads
headers. Nothing in this package imports from the layers above it.
"""
