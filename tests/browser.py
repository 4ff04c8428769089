"""A real headless Chromium for the dashboard tests (``make browser`` installs it; the
tests that import this module are skipped without it, and fail in CI)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import playwright.async_api as playwright_api
import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():  # `make test` installs it; never downloaded by playwright
    if os.environ.get("CI"):  # in CI a missing browser is a broken setup, not a skip
        raise RuntimeError("chromium is not installed: `make browser` should have installed it")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)


@contextlib.asynccontextmanager
async def dashboard_page(info: dict[str, Any], height: int = 1000) -> AsyncIterator[Any]:
    """The dashboard loaded with the API token, in a fresh headless Chromium; the page's
    script errors collect in ``page.errors``."""
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1440, "height": height})
            page = await context.new_page()
            page.errors = []
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            await page.goto(f"{info['http_url']}/#token={info['api_token']}")
            await page.wait_for_selector("body[data-loaded='true']", timeout=15_000)
            yield page
        finally:
            await browser.close()
