"""Routing: servlets and the registry that turns their path patterns into URL rules.

``servlets`` holds :class:`JsonServlet`/:class:`HtmlServlet` (``on_GET`` methods that
return a body); ``registry`` compiles ``{name:converter}`` patterns into Tornado
``URLSpec``\\ s.
"""
