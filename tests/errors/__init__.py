"""Tests of :mod:`tornado_jsonservlet.errors`."""
