"""Plumbing for ``tests/test_serve.py``: the app on a free port in a thread, HTTP requests that return the status
and body of errors too, a headless Chromium (system package; ``None`` where it is missing), and waits on the page's
``data-state`` (the page sets it to loading / ready / searching / results / error)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from conftest import _free_port

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                                else None)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (to prove nothing was written)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@contextmanager
def running(service: Any) -> Iterator[str]:
    """The app over ``service`` on 127.0.0.1:<free port> in a thread (uvicorn); yields the base URL."""
    import uvicorn

    from job.serve import create_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def get(url: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, or a POST of ``data``; an HTTP error is an answer, not an exception."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def get_json(url: str, data: bytes | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body); the body must be JSON whatever the status."""
    status, ctype, body = get(url, data)
    assert ctype.startswith("application/json"), (status, ctype, body[:200])
    return status, json.loads(body)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by the system's chromedriver (never downloads one); the caller skips without it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM is not None and CHROMEDRIVER is not None
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver or a browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1000", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def browser_or_skip() -> Iterator[Any]:
    """``chromium()``, or the test skipped, saying why, where Chromium or selenium is missing."""
    import pytest

    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium chromium-driver; .ci/run installs them)")
    pytest.importorskip("selenium.webdriver")
    with chromium() as driver:
        yield driver


def wait_state(driver: Any, state: str, timeout: float = 60) -> None:
    """Wait until the page's ``body[data-state]`` is ``state`` (fails at once, with the status line, on error)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") in (state, "error"))
    assert driver.find_element("tag name", "body").get_attribute("data-state") == state, \
        driver.find_element("id", "status").text


def search_and_wait(driver: Any, action: Any) -> dict[str, Any]:
    """Do ``action`` (which starts a query), wait for its results; returns the API's response."""
    from selenium.webdriver.support.ui import WebDriverWait

    count = driver.execute_script("return window.searchTimings.length")
    action()
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.searchTimings.length") > count
                                    or d.find_element("tag name", "body").get_attribute("data-state") == "error")
    wait_state(driver, "results")
    return driver.execute_script("return window.lastResponse")
