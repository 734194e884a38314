"""Fixtures for the browser tests: headless Debian Chromium (never a downloaded browser) driven by
Python Playwright against the real ComfyUI frontend (comfyui-frontend-package) served by the
session's `comfy_server`.

Needs /usr/bin/chromium (or $CHROMIUM) and the `playwright` package: `bash scripts/setup_browser.sh`
(scripts/setup_env.sh calls it). Missing either is a test failure with that message, not a skip.
Screenshots go to artifacts/browser/ (gitignored).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import REPO_ROOT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"
VIEWPORT = {"width": 1600, "height": 1100}


def browser_problem() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        hint = f" (a chromium is on PATH at {found}: set CHROMIUM={found})" if found else ""
        return (f"no Chromium at {CHROMIUM}{hint}: run `bash scripts/setup_browser.sh` "
                "(it runs `apt-get install -y chromium` as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the `playwright` Python package is missing: run `bash scripts/setup_browser.sh` (pip install playwright)"
    return None


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium():
    problem = browser_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as e:  # noqa: BLE001
        pw.stop()
        pytest.fail(f"could not launch {CHROMIUM} through Playwright: {e}", pytrace=False)
    try:
        yield browser
    finally:
        browser.close()
        pw.stop()


class PageLog:
    """Console messages and page errors of one page, for assertions and failure reports."""

    def __init__(self):
        self.lines: list[str] = []
        self.page_errors: list[str] = []

    def errors_mentioning(self, *needles: str) -> list[str]:
        out = [x for x in self.page_errors if any(n in x for n in needles)]
        out += [x for x in self.lines if x.startswith("error") and any(n in x for n in needles)]
        return out

    def tail(self, n: int = 40) -> str:
        return "\n".join(x[:500] for x in self.lines[-n:])


@pytest.fixture(scope="module")
def comfy_page(chromium, comfy_server):
    """A page with the ComfyUI frontend loaded from the test server (app ready, our extension in).
    Requests to any other host are aborted: the test never leaves the machine."""
    host = urlparse(comfy_server.url).netloc
    ctx = chromium.new_context(viewport=VIEWPORT, device_scale_factor=1)

    def only_local(route):
        if urlparse(route.request.url).netloc == host or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    ctx.route("**/*", only_local)
    page = ctx.new_page()
    log = PageLog()
    page.on("console", lambda m: log.lines.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))
    page.set_default_timeout(30_000)
    page.goto(comfy_server.url + "/", wait_until="domcontentloaded")
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas && "
                           "window.app.extensions && window.app.extensions.length > 0", timeout=90_000)
    page.comfy_log = log  # type: ignore[attr-defined]
    # Full node detail at every zoom (the frontend otherwise draws text-less boxes below ~0.6),
    # so fitted screenshots of whole workflows stay readable.
    try:
        page.evaluate("async () => { await app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 0); }")
    except Exception:  # noqa: BLE001 - cosmetic; an older frontend has no such setting
        pass
    # Cosmetic, for the screenshots: close the "Introducing Nodes 2.0" banner if this frontend shows it.
    try:
        banner = page.get_by_text("Introducing Nodes 2.0")
        if banner.count():
            page.evaluate("""() => { const t = Array.from(document.querySelectorAll('*')).find(e =>
                e.children.length === 0 && (e.innerText || '').includes('Introducing Nodes 2.0'));
              let p = t; for (let i = 0; p && i < 4; i++, p = p.parentElement) {
                const b = Array.from(p.querySelectorAll('button')).find(x => !(x.innerText || '').trim() ||
                  /close|dismiss/i.test(x.getAttribute('aria-label') || ''));
                if (b) { b.click(); return; } } }""")
    except Exception:  # noqa: BLE001 - purely cosmetic
        pass
    try:
        yield page
    finally:
        ctx.close()
