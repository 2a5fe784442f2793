"""Open a local HTML page in headless Chromium and report what a person would see.

A test helper (``from pagecheck import check_page``): Debian's Chromium (``/usr/bin/chromium``,
``apt-get install -y chromium``) driven by Playwright's Python API, never a downloaded browser.
:func:`check_page` collects console errors and warnings, uncaught exceptions, failed requests and
whether each image loaded, optionally clicks elements (a table header, to test sorting) and reads
a table back, and saves a full-page screenshot; :func:`screenshot_stats` tells whether that
screenshot shows a rendered page rather than a blank one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "check_page", "screenshot_stats", "column"]

CHROMIUM = "/usr/bin/chromium"
#: No sandbox: tests run as root in CI, where Chromium refuses to start sandboxed. Shared memory
#: in /tmp, not /dev/shm, which is tiny in containers (Debian's launcher means to add this flag
#: itself but its check of /dev/shm fails on some machines). The rest keeps the browser off the
#: network and quiet (no component updates, sync or first-run pages).
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")

_IMAGES_JS = """() => Array.from(document.images).map(
    img => ({src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0}))"""

_HEADERS_JS = """(sel) => {
    const table = document.querySelector(sel);
    if (!table || !table.tHead) { return null; }
    return Array.from(table.tHead.rows[0].cells).map(c => c.innerText.trim());
}"""

_TABLE_JS = """(sel) => {
    const table = document.querySelector(sel);
    if (!table) { return null; }
    const body = table.tBodies.length ? table.tBodies[0] : table;
    return Array.from(body.rows).filter(r => r.parentElement.tagName !== "THEAD")
        .map(r => Array.from(r.cells).map(c => c.innerText.trim()));
}"""


def check_page(html_path: str | os.PathLike, screenshot_path: str | os.PathLike,
               width: int = 1280, height: int = 900, click: list[str] | tuple[str, ...] = (),
               table: str = "table", timeout_s: float = 20.0) -> dict[str, Any]:
    """Load ``html_path`` in headless Chromium, screenshot it, and report what went wrong.

    Parameters
    ----------
    html_path : path
        Local HTML file, opened as a ``file://`` URL (relative links resolve beside it).
    screenshot_path : path
        Where the full-page PNG screenshot goes (taken after the clicks).
    width, height : int
        Viewport size in CSS pixels.
    click : sequence of str
        Playwright selectors (CSS, plus ``:has-text("...")``) clicked one after another once the
        page has loaded; after each click the rows of ``table`` are read back (see ``"clicks"``
        below).
    table : str
        CSS selector of the table read back (the first match).
    timeout_s : float
        Limit for launching, loading and each click.

    Returns
    -------
    dict
        ``console_errors`` and ``page_errors`` (uncaught exceptions): lists of str; console
        messages of type error and warning both count as ``console_errors``, each prefixed by
        its type. ``failed_requests``: ``"URL: reason"`` strings (including HTTP statuses of 400
        and more). ``dialogs``: alerts, confirms and prompts the page opened (dismissed).
        ``images``: ``[{"src", "ok"}]`` for every ``<img>``, ok when it loaded with a
        non-zero width. ``title``; ``text``: the body's innerText. ``headers``: the header
        texts of ``table`` (None without a ``<thead>``). ``table``: the rows of
        ``table`` (lists of cell texts, body rows only) after all clicks, or None when there is
        no such table. ``clicks``: ``[{"selector", "rows"}]``, the rows read after each click.

    Raises
    ------
    FileNotFoundError
        If Chromium or the page is missing.
    """
    from playwright.sync_api import sync_playwright

    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"no page at {html_path}")
    if not os.access(CHROMIUM, os.X_OK):
        raise FileNotFoundError(f"{CHROMIUM} not found: apt-get install -y chromium")
    ms = timeout_s * 1000
    result: dict[str, Any] = {"console_errors": [], "page_errors": [], "failed_requests": [],
                              "dialogs": [], "images": [], "title": None, "text": None,
                              "headers": None, "table": None, "clicks": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=list(CHROMIUM_ARGS), timeout=ms)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(ms)
            page.on("console", lambda m: result["console_errors"].append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: result["page_errors"].append(str(e)))
            page.on("requestfailed",
                    lambda r: result["failed_requests"].append(f"{r.url}: {r.failure}"))
            page.on("response", lambda r: result["failed_requests"].append(
                f"{r.url}: HTTP {r.status}") if r.status >= 400 else None)
            page.on("dialog", lambda d: (result["dialogs"].append(f"{d.type}: {d.message}"),
                                         d.dismiss()))
            page.goto(html_path.as_uri(), wait_until="load")
            for selector in click:
                page.click(selector)
                result["clicks"].append({"selector": selector,
                                         "rows": page.evaluate(_TABLE_JS, table)})
            result["images"] = page.evaluate(_IMAGES_JS)
            result["title"] = page.title()
            result["text"] = page.evaluate("() => document.body ? document.body.innerText : ''")
            result["headers"] = page.evaluate(_HEADERS_JS, table)
            result["table"] = page.evaluate(_TABLE_JS, table)
            page.screenshot(path=str(screenshot_path), full_page=True)
        finally:
            browser.close()
    return result


def screenshot_stats(png_path: str | os.PathLike) -> dict[str, Any]:
    """Measure a screenshot: is anything drawn on it?

    Returns
    -------
    dict
        ``width`` and ``height`` in pixels, ``nonwhite`` (fraction of pixels with any channel
        below 245 of 255) and ``colours`` (number of distinct RGB colours).
    """
    try:
        from PIL import Image

        with Image.open(png_path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ImportError:
        import matplotlib.image

        a = matplotlib.image.imread(png_path)  # float 0..1 for PNG
        rgb = np.round(a[..., :3] * 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    flat = rgb.reshape(-1, 3)
    packed = (flat[:, 0].astype(np.uint32) << 16) | (flat[:, 1].astype(np.uint32) << 8) | flat[:, 2]
    return {"width": int(w), "height": int(h),
            "nonwhite": float(np.mean((flat < 245).any(axis=1))),
            "colours": int(np.unique(packed).size)}


def column(rows: list[list[str]], index: int) -> list[str]:
    """Return the ``index``-th cell of each row (a column of a table read by check_page)."""
    return [r[index] for r in rows]
