"""Tests of :mod:`tornado_jsonservlet.routing`."""
