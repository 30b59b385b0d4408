"""The FastAPI lifespan starts conductors with the app and drains them on shutdown."""

from __future__ import annotations

import anyio
import httpx
from fastapi import FastAPI

from aioconductor import Conductor, JobState
from aioconductor.integrations.fastapi import lifespan
from aioconductor.testing import InMemoryJobBoard

from ..apps import flows


async def test_lifespan_runs_conductor_and_drains_it() -> None:
    board = InMemoryJobBoard()
    conductor = Conductor("api", board, flows=flows)
    app = FastAPI(lifespan=lifespan(conductor))

    @app.post("/jobs/{key}")
    async def post_job(key: int) -> dict[str, str]:
        job = await board.post(f"job-{key}", "sleepy", {"key": key, "seconds": 0.2})
        return {"id": job.id}

    async with app.router.lifespan_context(app):
        assert conductor.is_running and board.connected
        assert app.state.conductors == [conductor]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/jobs/1")
        job_id = response.json()["id"]
        with anyio.fail_after(5):
            while conductor.stats.claimed == 0:
                await anyio.sleep(0.01)
    # Shutdown drained the running job instead of abandoning it.
    assert not conductor.is_running
    assert board.job(job_id).state is JobState.COMPLETE
    assert not board.connected
