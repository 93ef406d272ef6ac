"""Tests of :mod:`tornado_jsonservlet.outbound`."""
