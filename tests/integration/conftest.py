"""Fixtures of the integration tests: the browser ones live in ``browser.py``."""

from tests.integration.browser import browser, page  # noqa: F401 (pytest fixtures)
