"""Shared test configuration: service URLs, skip-or-fail when a service is missing, and a
fresh space on any backend."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.backends import BY_NAME, Space

REDIS_URL = os.environ.get("AIOCONDUCTOR_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get(
    "AIOCONDUCTOR_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def service_missing(what: str) -> None:
    """Skip the test because ``what`` is unavailable; under CI=true fail it instead."""
    if IN_CI:
        pytest.fail(f"{what} is not available, and CI=true forbids skipping", pytrace=False)
    pytest.skip(f"{what} is not available")


@pytest.fixture
async def space(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Space]:
    """A fresh space (``tests/backends.py``) on the backend the test is parametrised with,
    removed after it: ``@pytest.mark.parametrize("space", params(...), indirect=True)``."""
    async with BY_NAME[request.param].open(tmp_path) as opened:
        yield opened


@pytest.fixture(autouse=True)
def _gc_thresholds_restored() -> Iterator[None]:
    """``aioconductor run`` sets the garbage collector's thresholds of its process, which is
    the test run's when a test calls the command in process: each test gets them back."""
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
