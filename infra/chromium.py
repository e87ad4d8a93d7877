"""Debian's headless Chromium as the browser tier and the docs' screenshot script start it (installed by
infra/browser.sh): the binaries by path, options that keep it on 127.0.0.1."""

from __future__ import annotations

import shutil
from typing import Any


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) on PATH, or None when either is missing (`bash infra/browser.sh`)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    return (chromium, chromedriver) if chromium and chromedriver else None


def chromium_options(binary: str, width: int, height: int) -> Any:
    """Headless, at width x height; requests to any host but 127.0.0.1 fail fast."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        f"--window-size={width},{height}",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(arg)
    return options
