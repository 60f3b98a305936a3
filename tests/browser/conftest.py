"""Fixtures of the real-browser tests: a headless JupyterLab and Debian's Chromium through Playwright.

``jupyterlab_url`` (session): a private JupyterLab on 127.0.0.1 serving the repo root; stopped by its
own pid at the end. ``browser_page`` (per test): a fresh Chromium page; when the test fails, a
screenshot and the browser console go to ``test-artifacts/browser/``.

Missing Chromium or Playwright skips these tests on a laptop but fails them when CI is set: CI never
skips them. Install: ``make chromium`` (apt-get install chromium) and ``pip install -e .[dev]``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from lab_server import ARTIFACTS_DIR, start_jupyterlab, stop_jupyterlab

BROWSER_ARTIFACTS_DIR = ARTIFACTS_DIR / "browser"
INSTALL_HINT = (
    "the browser tests need Debian's Chromium and Playwright: `make chromium` "
    "(apt-get install -y chromium) and `.venv/bin/pip install playwright` (or `make venv`)"
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "browser: drives JupyterLab in headless Chromium (Playwright); fails, never skips, when CI is set",
    )


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(message: str):
    if _in_ci():
        pytest.fail(f"{message}; {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"{message}; {INSTALL_HINT}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so ``browser_page`` knows whether the test failed."""
    report = yield
    setattr(item, f"_report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def browser_artifacts_dir() -> Path:
    BROWSER_ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return BROWSER_ARTIFACTS_DIR


@pytest.fixture(scope="session")
def jupyterlab_server(tmp_path_factory, browser_artifacts_dir):
    """A private JupyterLab server (see ``lab_server.py``); its log is kept as an artifact."""
    server = start_jupyterlab(
        work_dir=tmp_path_factory.mktemp("jupyterlab"),
        log_path=browser_artifacts_dir / "jupyterlab-server.log",
    )
    try:
        yield server
    finally:
        stop_jupyterlab(server)


@pytest.fixture(scope="session")
def jupyterlab_url(jupyterlab_server) -> str:
    """Base URL of the test JupyterLab, ending with ``/`` (e.g. ``http://127.0.0.1:40123/``)."""
    return jupyterlab_server.url


@pytest.fixture(scope="session")
def chromium_browser():
    """Debian's Chromium, headless, launched once per session through Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed")
    import lab

    if not (os.path.isfile(lab.CHROMIUM_EXECUTABLE) or shutil.which(lab.CHROMIUM_EXECUTABLE)):
        _missing(f"{lab.CHROMIUM_EXECUTABLE} is missing")
    playwright = sync_playwright().start()
    try:
        browser = lab.launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def browser_page(request, chromium_browser, browser_artifacts_dir):
    """A fresh page (own context, 1280x900). On failure: ``<test>-failure.png`` and ``<test>-console.log``."""
    import lab

    context = chromium_browser.new_context(viewport=lab.VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(30_000)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"[{message.type}] {message.text}"))
    page.on("pageerror", lambda error: console.append(f"[pageerror] {error}"))
    try:
        yield page
    finally:
        report = getattr(request.node, "_report_call", None)
        if report is not None and report.failed:
            stem = request.node.name.replace("/", "_")
            try:
                lab.save_screenshot(page, f"browser/{stem}-failure.png", full_page=True)
            except Exception as error:  # the page may have crashed; keep the console log anyway
                console.append(f"[screenshot failed] {error!r}")
            (browser_artifacts_dir / f"{stem}-console.log").write_text("\n".join(console) + "\n")
        context.close()
