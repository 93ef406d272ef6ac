"""Tests against real components started on loopback: nginx, PostgreSQL, Redis, Chromium."""
