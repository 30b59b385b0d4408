"""Run conductors for as long as an ASGI app (FastAPI, Starlette) runs.

Example::

    from fastapi import FastAPI
    from aioconductor.integrations.fastapi import lifespan

    conductor = Conductor("api-worker", board, store=store, flows=flows)
    app = FastAPI(lifespan=lifespan(conductor))

The lifespan connects each conductor's board and store (if they are not yet), starts the
conductors with the app and, on shutdown, stops them with a drain: running jobs may finish within
their ``drain_timeout``, then they are suspended and released. It speaks the ASGI lifespan
protocol only, so it needs nothing from FastAPI itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from aioconductor.conductor import Conductor

__all__ = ["lifespan"]

AppLifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


def lifespan(*conductors: Conductor, inner: AppLifespan | None = None) -> AppLifespan:
    """A lifespan that runs ``conductors`` while the app runs.

    Args:
        conductors: the conductors to start with the app and drain on shutdown.
        inner: the app's own lifespan, entered after the conductors start (its state, if any,
            is the lifespan's state).

    Returns:
        A callable for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``. The app's
        ``state.conductors`` holds the conductors.
    """

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            for conductor in conductors:
                await stack.enter_async_context(conductor)
            async with anyio.create_task_group() as tg:
                for conductor in conductors:
                    await tg.start(conductor.run, name=f"conductor {conductor.name}")
                try:
                    state = getattr(app, "state", None)
                    if state is not None:
                        state.conductors = list(conductors)
                    if inner is None:
                        yield None
                    else:
                        async with inner(app) as inner_state:
                            yield inner_state
                finally:
                    for conductor in conductors:
                        conductor.stop(drain=True)

    return run
