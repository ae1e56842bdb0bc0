"""Open a report.html in headless Chromium, for the browser test and for screenshots.

Drives the system's Chromium through its own chromedriver with Selenium (`pip install -e
".[test]"`; on Debian `apt-get install chromium chromium-driver`), so nothing is downloaded
at run time. `KDBENCH_CHROMIUM` and `KDBENCH_CHROMEDRIVER` point at other binaries.

    python -m kdbench.report.browser results/GRID/report/report.html report.png [--width 1360 --height 900]

writes a screenshot of the page as a browser shows it (`--full-page` for all of it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from kdbench.errors import KdbenchError

__all__ = ["browser_unavailable", "headless_chromium", "main", "screenshot"]

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")
# Headless, and nothing that reaches the network or a profile outside a fresh temporary one.
_FLAGS = ("--headless=new", "--disable-gpu", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars",
          "--force-device-scale-factor=1")


def _find(env: str, names: Sequence[str]) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def browser_unavailable() -> str | None:
    """Why a headless Chromium can't be driven here (None when it can)."""
    try:
        importlib.import_module("selenium")
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if _find("KDBENCH_CHROMIUM", _BROWSERS) is None:
        return "no Chromium binary (apt-get install chromium, or set KDBENCH_CHROMIUM)"
    if _find("KDBENCH_CHROMEDRIVER", _DRIVERS) is None:
        return "no chromedriver (apt-get install chromium-driver, or set KDBENCH_CHROMEDRIVER)"
    return None


@contextlib.contextmanager
def headless_chromium(width: int = 1360, height: int = 900) -> Iterator["object"]:
    """A Selenium WebDriver of a headless Chromium with a fresh profile; quits and cleans up after."""
    why = browser_unavailable()
    if why:
        raise KdbenchError(f"cannot start a headless browser: {why}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _find("KDBENCH_CHROMIUM", _BROWSERS)
    profile = tempfile.mkdtemp(prefix="kdbench-chromium-")
    for flag in _FLAGS + (f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    driver = webdriver.Chrome(service=Service(_find("KDBENCH_CHROMEDRIVER", _DRIVERS)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(page: str | os.PathLike, png: str | os.PathLike, *, width: int = 1360, height: int = 900,
               full_page: bool = False) -> Path:
    """Open `page` (a local HTML file) and save what the browser shows as `png`."""
    page, png = Path(page).resolve(), Path(png)
    if not page.is_file():
        raise KdbenchError(f"{page}: no such file")
    with headless_chromium(width, height) as driver:
        driver.get(page.as_uri())
        if full_page:
            total = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, total + 120)
        png.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(png)):
            raise KdbenchError(f"{png}: the browser could not write the screenshot")
    return png


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kdbench.report.browser PAGE PNG`: screenshot a report page."""
    parser = argparse.ArgumentParser(prog="python -m kdbench.report.browser",
                                     description="Screenshot a kdbench report.html in headless Chromium.")
    parser.add_argument("page", help="the report.html to open")
    parser.add_argument("png", help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1360, help="window width in pixels (default: 1360)")
    parser.add_argument("--height", type=int, default=900, help="window height in pixels (default: 900)")
    parser.add_argument("--full-page", action="store_true", help="the whole page, not the first screen")
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.page, args.png, width=args.width, height=args.height, full_page=args.full_page))
    except KdbenchError as exc:
        print(f"kdbench: error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
