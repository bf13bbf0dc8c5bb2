"""A real browser for page tests: Debian's Chromium driven by Playwright for Python.

Loaded with `pytest_plugins = ["tests.support.browser"]`. Skipped with the reason where Chromium
or Playwright is missing; a failure instead when ZYPHER_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Playwright's sync API runs an event loop in the test thread, which also uses the ORM.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"Debian's chromium is not installed at {CHROMIUM} (`make browser` installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (requirements.txt)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = browser_missing()
    if reason:
        if os.environ.get("ZYPHER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ZYPHER_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
