"""Tests of :mod:`tornado_jsonservlet.json`."""
