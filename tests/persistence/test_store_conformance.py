"""The store conformance suite on every backend of ``tests/backends.py`` that has a store: the
suite is shipped in :mod:`aioconductor.testing.conformance`, so a store of someone else's runs
the same tests."""

from __future__ import annotations

from aioconductor.testing.conformance.stores_fencing import *  # noqa: F403
from aioconductor.testing.conformance.stores_saving import *  # noqa: F403
