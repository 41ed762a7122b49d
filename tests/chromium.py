"""Debian's Chromium, driven by Playwright, as the browser tests and the tutorial use it.

Playwright's own browser download is not used (no download at install time): `scripts/test`
installs Debian's `chromium` (scripts/lib.sh ensure_chromium), launched without its sandbox
(unavailable in containers) and without background networking (loopback only).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's sync API), closed on exit."""
    assert CHROMIUM is not None, "no Chromium here: scripts/test installs Debian's `chromium`"
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MB
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
