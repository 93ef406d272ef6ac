"""Tests of :mod:`tornado_jsonservlet.testing`."""
