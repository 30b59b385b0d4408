"""The board conformance suite on every backend of ``tests/backends.py``: the suite is shipped in
:mod:`aioconductor.testing.conformance`, so a backend of someone else's runs the same tests."""

from __future__ import annotations

from aioconductor.testing.conformance.boards_cancel import *  # noqa: F403
from aioconductor.testing.conformance.boards_claims import *  # noqa: F403
from aioconductor.testing.conformance.boards_endings import *  # noqa: F403
from aioconductor.testing.conformance.boards_keys import *  # noqa: F403
from aioconductor.testing.conformance.boards_limits import *  # noqa: F403
from aioconductor.testing.conformance.boards_retention import *  # noqa: F403
from aioconductor.testing.conformance.boards_search import *  # noqa: F403
from aioconductor.testing.conformance.boards_streams import *  # noqa: F403
from aioconductor.testing.conformance.boards_ticks import *  # noqa: F403
