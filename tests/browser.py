"""Open a built book in headless Chromium (Debian's) and collect what a reader's browser would see."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

VIEWPORT = {"width": 1280, "height": 900}  # an ordinary laptop screen: every table and figure must fit it
# Tables and images wider than the element that holds them, or running past the text column (a sideways
# scrolling box counts as too wide: the reader has to scroll to see the table).
TOO_WIDE_JS = """() => {
  const column = document.querySelector('main article') || document.querySelector('article') || document.body;
  const limit = column.getBoundingClientRect().right + 1;
  const found = [];
  for (const el of column.querySelectorAll('table, img')) {
    const box = el.getBoundingClientRect();
    const holder = el.parentElement;
    if (box.width === 0) continue;
    if (box.right > limit || box.width > holder.clientWidth + 1 || holder.scrollWidth > holder.clientWidth + 1) {
      const text = el.tagName === 'IMG' ? el.src.split('/').pop() : el.innerText.slice(0, 60).replace(/\\s+/g, ' ');
      found.push(`${el.tagName.toLowerCase()} ${Math.round(box.width)} px in ${holder.clientWidth} px: ${text}`);
    }
  }
  return found;
}"""
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda *a: None  # the browser dropping a connection is not a test failure
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def inspect_pages(html_dir: Path, pages: list[str]) -> dict[str, dict]:
    """For each page at a 1280 px window: outside requests, console errors, images (src, loaded width),
    table texts, the tables and images wider than their container, and the page's text."""
    from playwright.sync_api import sync_playwright

    results = {}
    with serve(html_dir) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            for page_path in pages:
                page = browser.new_page(viewport=VIEWPORT)
                seen = {"outside": [], "errors": []}
                page.on("request", lambda r, s=seen: None if r.url.startswith((base, "data:", "blob:"))
                        else s["outside"].append(r.url))
                page.on("console", lambda m, s=seen: s["errors"].append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, s=seen: s["errors"].append(str(e)))
                response = page.goto(f"{base}/{page_path}", wait_until="load")
                page.wait_for_load_state("networkidle")
                seen["status"] = response.status if response else None
                seen["url"] = page.url
                seen["images"] = page.evaluate(
                    "Array.from(document.images).map(i => ({src: i.src, complete: i.complete, width: i.naturalWidth}))")
                seen["tables"] = page.evaluate("Array.from(document.querySelectorAll('table')).map(t => t.innerText)")
                seen["too_wide"] = page.evaluate(TOO_WIDE_JS)
                seen["text"] = page.evaluate("document.body.innerText")
                results[page_path] = seen
                page.close()
        finally:
            browser.close()
    return results
