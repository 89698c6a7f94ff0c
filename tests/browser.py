"""Headless Chromium for tests: Debian's ``chromium`` driven by Playwright, offline.

``conftest.py`` registers this module as a plugin, so every test module can ask for ``chromium`` or
``browser_page``.
No browser is downloaded (``playwright install`` is never run): the system Chromium is launched instead, found at
``$LUNGSCOPE_CHROMIUM``, else ``chromium`` on the PATH. Tests that need it skip without it, except on CI (``CI`` set)
where its absence fails, as the shared data does in ``conftest.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
_LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the whole session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright Python package is not installed (pip install -e '.[test]')")
    executable = os.environ.get("LUNGSCOPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).is_file():
        _missing(f"no Chromium at {executable} (apt-get install chromium, or set LUNGSCOPE_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class OfflinePage:
    """A fresh page whose every network request is refused and recorded in ``requests``."""

    page: Page
    requests: list[str] = field(default_factory=list)

    def open(self, path: str | Path) -> Page:
        """Load a local file and wait until it and everything it references have loaded."""
        self.page.goto(Path(path).resolve().as_uri(), wait_until="load")
        return self.page

    def broken_images(self) -> list[str]:
        """``src`` (first 80 characters) of every ``<img>`` that did not decode to a picture."""
        return self.page.eval_on_selector_all(
            "img", "images => images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80))"
        )


@pytest.fixture
def browser_page(chromium: Browser) -> Iterator[OfflinePage]:
    """An :class:`OfflinePage` in its own browser context, closed after the test."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    offline = OfflinePage(page)

    def refuse(route: Any) -> None:
        url = route.request.url
        if url.startswith(_LOCAL_SCHEMES):
            route.continue_()
        else:
            offline.requests.append(url)
            route.abort()

    context.route("**/*", refuse)
    yield offline
    context.close()
