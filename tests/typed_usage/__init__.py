"""User code checked with ``mypy --strict`` in CI (not collected by pytest)."""
