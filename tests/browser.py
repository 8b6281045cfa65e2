"""Open a local HTML file in a real headless browser (Debian's chromium through chromedriver) and report on it.

Used by the tests of the self-contained HTML report: the page must render, its plots must be there, the browser
console must be free of errors, and nothing may be fetched from the network. A full-page screenshot can be saved
for a human to look at.

Needs `selenium` (pip) and `chromium` + `chromedriver` on PATH (scripts/install_browser.sh installs them on
Debian); `browser_available()` says why not when they are missing, for `pytest.skip`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Flags every launch uses. The network is closed on the machines this runs on: without the background-networking
# flags chromium keeps trying to reach its own services and logs the refused connections.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Containers often mount a small /dev/shm; chromium then crashes while rendering large pages.
    "--disable-dev-shm-usage",
)

PAGE_LOAD_TIMEOUT_S = 10.0
MAX_SCREENSHOT_HEIGHT = 20000

_INSTALL_HINT = "run scripts/install_browser.sh (Debian: apt-get install chromium chromium-driver)"

# One script for everything read from the page, so the page is inspected in one consistent state.
_INSPECT_JS = """
const images = Array.from(document.images);
return {
  title: document.title,
  svg_count: document.getElementsByTagName('svg').length,
  images_total: images.length,
  images_loaded: images.filter(img => img.complete && img.naturalWidth > 0).length,
  text: document.body ? document.body.innerText : '',
  resources: performance.getEntriesByType('resource').map(entry => entry.name),
};
"""

# Height of the whole page in CSS pixels: the body's scrollHeight, or the root element's height when that is larger
# (it also holds the body's margins, and margins of the body's children that collapse through it).
_PAGE_HEIGHT_JS = """
const body = document.body ? document.body.scrollHeight : 0;
return Math.ceil(Math.max(body, document.documentElement.getBoundingClientRect().height));
"""


@dataclass(frozen=True)
class BrowserPage:
    """What the browser saw when it loaded a page."""

    title: str
    # Every SEVERE entry of the browser log (console.error, uncaught exceptions, failed loads), as chromium wrote
    # it; nothing is filtered out.
    console_errors: tuple[str, ...]
    svg_count: int
    images_total: int
    # <img> elements that finished loading with a real image (naturalWidth > 0).
    images_loaded: int
    # document.body.innerText
    text: str
    # Resource Timing entries whose URL is neither file: nor data: (failed requests are listed too).
    network_requests: tuple[str, ...]
    screenshot: Path | None
    # Loading did not finish within the load timeout; it was stopped and the page inspected as it stood.
    load_timed_out: bool = False

    @property
    def used_network(self) -> bool:
        return bool(self.network_requests)


def _executables() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def browser_available() -> str | None:
    """None when a page can be opened with `open_in_browser`; otherwise why not (a reason for `pytest.skip`)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'selenium>=4.20')"
    chromium, chromedriver = _executables()
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", chromedriver)) if path is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH; {_INSTALL_HINT}"
    return None


def open_in_browser(
    html_path: Path,
    screenshot: Path | None = None,
    width: int = 1400,
    height: int = 2000,
    load_timeout_s: float = PAGE_LOAD_TIMEOUT_S,
) -> BrowserPage:
    """Load `html_path` (a local file) in a fresh headless chromium and report what it saw.

    `width` x `height` is the viewport the page is laid out in. With `screenshot`, a PNG of the whole page (up to
    MAX_SCREENSHOT_HEIGHT pixels high) is written there. Loading is stopped after `load_timeout_s` seconds
    and the page is inspected as far as it got (`load_timed_out`). Raises RuntimeError when the browser is not
    available.
    """
    reason = browser_available()
    if reason is not None:
        raise RuntimeError(reason)
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _executables()
    assert chromium is not None and chromedriver is not None
    url = html_path.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="edgebench-chromium-", ignore_cleanup_errors=True) as profile:
        options = webdriver.ChromeOptions()
        # Giving both paths keeps selenium from running Selenium Manager, which would try to download a browser.
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        try:
            driver.set_page_load_timeout(load_timeout_s)
            driver.set_script_timeout(load_timeout_s)
            # The headless window has a frame, so the window size is not the viewport: set the viewport itself.
            _set_viewport(driver, width, height)
            timed_out = False
            try:
                driver.get(url)
            except TimeoutException:
                timed_out = True
                driver.execute_script("window.stop();")
            seen: dict[str, Any] = driver.execute_script(_INSPECT_JS)
            log = _browser_log(driver)
            if screenshot is not None:
                page_height = int(driver.execute_script(_PAGE_HEIGHT_JS))
                _set_viewport(driver, width, max(1, min(page_height, MAX_SCREENSHOT_HEIGHT)))
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(driver.get_screenshot_as_png())
                # Resizing can make a page log too (a resize handler throwing); keep those entries as well.
                log += _browser_log(driver)
        finally:
            driver.quit()
    return BrowserPage(
        title=str(seen["title"]),
        console_errors=tuple(str(entry["message"]) for entry in log if entry.get("level") == "SEVERE"),
        svg_count=int(seen["svg_count"]),
        images_total=int(seen["images_total"]),
        images_loaded=int(seen["images_loaded"]),
        text=str(seen["text"]),
        network_requests=tuple(str(name) for name in seen["resources"] if not str(name).startswith(("file:", "data:"))),
        screenshot=screenshot,
        load_timed_out=timed_out,
    )


def _set_viewport(driver: Any, width: int, height: int) -> None:
    """Make the page's viewport exactly `width` x `height` CSS pixels at scale 1 (what a screenshot captures)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def _browser_log(driver: Any) -> list[dict[str, Any]]:
    """The browser log entries since the last call (chromedriver clears them as they are read)."""
    return list(driver.get_log("browser"))
