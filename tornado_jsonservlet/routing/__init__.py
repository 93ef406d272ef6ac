"""Routing: servlets and the registry that turns their path patterns into URL rules.

``servlets`` holds :class:`JsonServlet`/:class:`HtmlServlet` (``on_GET`` methods that
return a body); ``patterns`` compiles ``{name:converter}`` templates into linear-time
matchers, and ``registry`` turns servlets and their patterns into Tornado ``URLSpec``\\ s.
"""
