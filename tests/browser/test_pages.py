"""Every chapter of the built book, opened in a real browser.

Run by ``.ci/run`` after ``make book``; ``make test`` leaves this folder out. It installs
nothing: it needs ``_build/html``, Debian's Chromium (``/usr/bin/chromium``, or the path in
the CHROMIUM environment variable) and the ``playwright`` package.

    .venv/bin/python -m pytest tests/browser

For each page built from a notebook ``book/NN_*.ipynb`` it checks that no cell failed, that
every image loaded, that MathJax typeset every formula, that widgets rendered where the page
has any, and that the page requested nothing outside the local server. A full-page
screenshot of each goes to ``_build/screenshots/``.
"""

import os
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = sorted(path.stem for path in (ROOT / "book").glob("*.ipynb"))
# Chapters whose point is an interactive widget: the page must contain rendered widgets.
WIDGET_CHAPTER_PREFIXES = ("06b_",)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google's services.
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
TIMEOUT_MS = 60_000
# sphinx-thebe 0.3.1 under Sphinx 7.4 writes its configuration script twice into every page
# (`const THEBE_JS_URL = ...`), so the second copy throws. Thebe (live code) is not enabled in
# this book and nothing else on the page depends on that script. Any other error fails.
KNOWN_PAGE_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)

# Text a reader sees, without code, scripts and typeset math.
VISIBLE_PROSE_JS = """() => {
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style, mjx-container, .MathJax')
      .forEach((node) => node.remove());
  return body.textContent;
}"""
BROKEN_IMAGES_JS = """() => Array.from(document.images)
  .filter((img) => !(img.complete && img.naturalWidth > 0))
  .map((img) => img.getAttribute('src'))"""
UNTYPESET_MATH_JS = """() => Array.from(document.querySelectorAll('.math'))
  .filter((node) => !node.querySelector('mjx-container'))
  .map((node) => node.textContent.slice(0, 80))"""
STDERR_ERRORS_JS = """() => Array.from(document.querySelectorAll('.output.stderr'))
  .map((node) => node.textContent)
  .filter((text) => text.includes('Error'))
  .map((text) => text.slice(0, 200))"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output free of one access-log line per request."""


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The built book served on 127.0.0.1 at a free port, for the duration of the module."""
    assert (HTML / "index.html").is_file(), f"{HTML} has no index.html: run `make book` first"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(HTML)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def is_local(url: str, site: str) -> bool:
    return url.startswith((f"{site}/", "data:", "blob:", "about:"))


def open_page(browser: Browser, site: str, url: str) -> tuple[Page, list[str], list[str]]:
    """Open ``url``; return the page, the requests that left the machine, and what failed
    on the page (local requests, JavaScript errors)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []
    failed: list[str] = []

    def on_request(request: Request) -> None:
        if not is_local(request.url, site):
            outside.append(request.url)

    def on_finished(request: Request) -> None:
        response = request.response()
        if response is not None and response.status >= 400:
            failed.append(f"HTTP {response.status} for {request.url}")

    def on_failed(request: Request) -> None:
        if is_local(request.url, site):  # outside requests are aborted on purpose
            failed.append(f"request failed: {request.url}")

    page.on("request", on_request)
    page.on("requestfinished", on_finished)
    page.on("requestfailed", on_failed)

    def on_page_error(error: Exception) -> None:
        if str(error) not in KNOWN_PAGE_ERRORS:
            failed.append(f"JavaScript error: {error}")

    page.on("pageerror", on_page_error)
    # Nothing may leave the machine: abort such requests at once (they are recorded above).
    page.route(
        "**/*",
        lambda route: route.continue_() if is_local(route.request.url, site) else route.abort(),
    )
    page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
    return page, outside, failed


def wait_for_mathjax(page: Page) -> None:
    page.wait_for_function(
        "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
        timeout=TIMEOUT_MS,
    )
    page.evaluate("() => MathJax.startup.promise.then(() => true)")


def test_book_has_chapter_pages() -> None:
    assert CHAPTERS, "no book/*.ipynb: the browser test has no chapter to check"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page(chapter: str, browser: Browser, site: str) -> None:
    html = HTML / "book" / f"{chapter}.html"
    assert html.is_file(), f"{html} was not built: is book/{chapter}.ipynb in _toc.yml?"
    page, outside, failed = open_page(browser, site, f"{site}/book/{chapter}.html")
    problems: list[str] = []
    try:
        has_math = page.locator(".math").count() > 0
        if has_math:
            wait_for_mathjax(page)
            untypeset = page.evaluate(UNTYPESET_MATH_JS)
            if untypeset:
                problems.append(f"math left untypeset: {untypeset[:5]}")
        prose = page.evaluate(VISIBLE_PROSE_JS)
        for raw in ("\\(", "\\[", "$$"):
            if raw in prose:
                start = prose.index(raw)
                problems.append(f"raw TeX {raw!r} in the text: ...{prose[start : start + 60]!r}")

        widget_views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]')
        if chapter.startswith(WIDGET_CHAPTER_PREFIXES) or widget_views.count() > 0:
            try:
                page.wait_for_selector(
                    ".jupyter-widgets, .widget-area", state="attached", timeout=TIMEOUT_MS
                )
            except PlaywrightTimeoutError:
                problems.append("no rendered ipywidgets (.jupyter-widgets / .widget-area)")

        tracebacks = page.locator(".output.traceback").count()
        if tracebacks:
            problems.append(f"{tracebacks} cell output(s) with a traceback")
        if "Traceback (most recent call last)" in page.inner_text("body"):
            problems.append("'Traceback (most recent call last)' in the page")
        problems += [f"stderr with an error: {text!r}" for text in page.evaluate(STDERR_ERRORS_JS)]

        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
        broken = page.evaluate(BROKEN_IMAGES_JS)
        if broken:
            problems.append(f"images that did not load: {broken}")

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{chapter}.png"), full_page=True)
    finally:
        page.close()
    problems += [f"request left the machine: {url}" for url in outside]
    problems += failed
    assert not problems, f"book/{chapter}.html:\n  " + "\n  ".join(problems)
