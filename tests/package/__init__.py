"""Tests of the package as a whole: layout, layering, conventions, old paths, the README."""
