"""Shared test configuration: service URLs, and skip-or-fail when a service is missing."""

from __future__ import annotations

import os

import pytest

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
