"""Tornado's own test suites, run with the toolkit's mixins injected (scripts, not collected)."""
