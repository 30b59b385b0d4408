"""Dashboard fixtures: a real headless Chromium driven by Selenium, and a served app."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from tests.conftest import service_missing

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium (Debian's ``chromium`` and ``chromium-driver`` packages).

    Skips when it is missing, except under CI=true, where that fails the test: ``.ci/run``
    installs both.
    """
    binary: str | None = next((p for name in CHROMIUM if (p := shutil.which(name))), None)
    driver_path = shutil.which("chromedriver") or shutil.which(CHROMEDRIVER)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        service_missing("selenium")
    if binary is None or driver_path is None:
        service_missing("Chromium and chromedriver (apt-get install chromium chromium-driver)")
    assert binary is not None and driver_path is not None  # service_missing() raised if not
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,960",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager must not try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in this event loop on a free loopback port; yields its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    # Not uvicorn's signal handlers: the test runner owns SIGINT.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                while not server.started:
                    await anyio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()
