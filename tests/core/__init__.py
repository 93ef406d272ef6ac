"""Tests of :mod:`tornado_jsonservlet.core`, one file per module."""
