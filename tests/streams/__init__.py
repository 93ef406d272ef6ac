"""Tests of :mod:`tornado_jsonservlet.streams`."""
