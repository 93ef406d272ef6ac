"""Tests of :mod:`tornado_jsonservlet.jsonio`."""
