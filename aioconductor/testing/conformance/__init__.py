"""The board and store conformance suites, shipped for backends of your own.

Every board and store of aioconductor passes these tests; a third-party backend runs them
too, the way TaskFlow ships its jobboard test mixin. Importing this package needs pytest
(``pip install 'aioconductor-taskflow[testing]'``); nothing else in aioconductor does. The tests are
``async def`` functions: run them with pytest-asyncio in auto mode (``asyncio_mode = "auto"``).

In your test folder, give the suites a way to open your board (and store) in a namespace,
as fixtures named ``backend`` (and ``store_backend``), then collect the suites::

    # conftest.py
    import pytest
    from aioconductor import open_board, open_store
    from aioconductor.testing.conformance import OpenedBoards, OpenedStores

    pytest_plugins = ["aioconductor.testing.conformance.fixtures"]

    @pytest.fixture
    async def backend():
        async with OpenedBoards(lambda ns, **kw: open_board(f"mine://h?namespace={ns}", **kw)) as b:
            yield b

    @pytest.fixture
    async def store_backend():
        async with OpenedStores(lambda ns, **kw: open_store(f"mine://h?namespace={ns}", **kw)) as s:
            yield s

    # test_conformance.py
    from aioconductor.testing.conformance.boards_cancel import *  # noqa: F403
    from aioconductor.testing.conformance.boards_claims import *  # noqa: F403
    from aioconductor.testing.conformance.boards_endings import *  # noqa: F403
    from aioconductor.testing.conformance.boards_keys import *  # noqa: F403
    from aioconductor.testing.conformance.boards_limits import *  # noqa: F403
    from aioconductor.testing.conformance.boards_retention import *  # noqa: F403
    from aioconductor.testing.conformance.boards_search import *  # noqa: F403
    from aioconductor.testing.conformance.boards_streams import *  # noqa: F403
    from aioconductor.testing.conformance.boards_ticks import *  # noqa: F403
    from aioconductor.testing.conformance.stores_fencing import *  # noqa: F403
    from aioconductor.testing.conformance.stores_saving import *  # noqa: F403

Each test opens its namespaces fresh: point ``backend`` at a server, database or file that
holds nothing else, and clean it up after the test.
"""

from __future__ import annotations

from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import OpenedBoards
from aioconductor.testing.conformance._common import OpenedStores
from aioconductor.testing.conformance._common import StoreOpener

__all__ = ["BoardOpener", "OpenedBoards", "OpenedStores", "StoreOpener"]
