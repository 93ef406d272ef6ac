"""Tests of :mod:`tornado_jsonservlet.production`."""
