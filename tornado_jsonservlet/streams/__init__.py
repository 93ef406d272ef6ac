"""Streams: responses that go on for a while, and the fan-out that feeds them.

``sse_format`` is the server-sent events wire format, ``writer`` writes a stream in
order, ``mixins`` holds the SSE, JSON-lines and long-poll mixins, ``servlets`` the
registry's ``EventStreamServlet``, and ``broadcast``/``redis_broadcast`` publish to
many subscribers, in one process or across processes.
"""
