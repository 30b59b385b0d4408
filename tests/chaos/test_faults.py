"""Backend and network faults under conductor processes: nothing lost, no human action needed.

- A private server on a free loopback port (``redis-server`` with its append-only file fsynced
  on every write; PostgreSQL), killed (SIGKILL; ``pg_ctl stop -m immediate``) and restarted
  mid-run.
- The library's server connections killed mid-run (``pg_terminate_backend``, ``CLIENT KILL``;
  for Kafka, whose broker cannot drop a client, ``ss -K`` of the broker's sockets).
- Network faults through :class:`tests.chaos.proxy.ChaosProxy`: latency, reset, half-close and a
  blackhole longer than the lease, between one conductor and its server while another conductor
  reaches the server directly (for Kafka, a proxy that rewrites the broker's advertised address,
  so the conductor stays behind it).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import anyio
import pytest

from aioconductor import open_board

from .backends import BY_NAME, Target, backend_params, open_target, params, scale
from .cluster import (
    Cluster,
    board_final,
    finished,
    history_folder,
    post_jobs,
    report,
    wait_finished,
)
from .history import load
from .proxy import KafkaChaosProxy

pytestmark = [pytest.mark.chaos]

LEASE = 1.0
SWEEP = 0.5


def first_consume_after(folder: Path, moment: float, owner: str | None = None) -> float | None:
    """Seconds from ``moment`` to the first consume after it (by ``owner`` if given)."""
    for event in load(folder):
        if event["ev"] == "consumed" and event["t"] > moment:
            if owner is None or event.get("owner") == owner:
                return round(float(event["t"]) - moment, 3)
    return None


# -- a private server, killed and restarted -------------------------------------------------------


@pytest.mark.timeout(scale(120, 600))
@pytest.mark.parametrize("backend", params(private_server=True))
async def test_a_server_killed_and_restarted_loses_no_job(backend: str, tmp_path: Path) -> None:
    jobs, procs, restarts = scale(300, 3000), scale(2, 4), scale(1, 3)
    folder = history_folder(tmp_path)
    make_server = BY_NAME[backend].private_server
    assert make_server is not None
    recoveries = []
    async with make_server(tmp_path) as server:
        url = f"{server.url}?namespace=chaos"
        cluster = Cluster(Target(backend, url, url), folder, lease=LEASE, sweep=SWEEP)
        try:
            async with open_board(url) as board:
                # Every run the outage interrupts spends an attempt: allow for them.
                await post_jobs(board, jobs, prefix="aof", args={"work": 0.02}, max_attempts=20)
                for n in range(procs):
                    cluster.start(f"p{n}")
                for n in range(restarts):
                    with anyio.fail_after(60):
                        while await finished(board) < jobs * (n + 1) / (restarts + 2):
                            await anyio.sleep(0.1)
                    cluster.harness.write("fault", what=f"{backend} server killed")
                    await server.crash()
                    await anyio.sleep(1.0)
                    await server.start()
                    healed = time.time()
                    cluster.harness.write("heal", what=f"{backend} server restarted")
                    with anyio.fail_after(30):
                        while (recovery := first_consume_after(folder, healed)) is None:
                            await anyio.sleep(0.1)
                    recoveries.append(recovery)
                await wait_finished(board, jobs, scale(60, 500), cluster)
                cluster.stop_all()
                final = await board_final(board)
        finally:
            cluster.kill_all()
    result = report(f"{backend}-restart", backend, folder, final, {"recovery_s": recoveries})
    assert not result.violations, result.violations
    assert result.figures["lost"] == 0 and result.figures["consumed"] == jobs


# -- the library's connections killed -------------------------------------------------------------


@pytest.mark.timeout(scale(120, 600))
@pytest.mark.parametrize("backend", backend_params(processes=True, network=True))
async def test_killed_server_connections_lose_no_job(backend: str, tmp_path: Path) -> None:
    jobs, procs, kills = scale(300, 3000), scale(2, 4), scale(4, 20)
    folder = history_folder(tmp_path)
    rng = random.Random(7)
    killed = 0
    async with open_target(backend, tmp_path) as target:
        assert target.kill_connections is not None
        async with open_board(target.board_url) as board:
            await post_jobs(board, jobs, prefix="conn", args={"work": 0.02}, max_attempts=20)
            cluster = Cluster(target, folder, lease=LEASE, sweep=SWEEP)
            try:
                for n in range(procs):
                    cluster.start(f"p{n}")
                await cluster.started("p0")
                for _ in range(kills):
                    await anyio.sleep(rng.uniform(0.3, 0.8))
                    cluster.harness.write("fault", what="kill connections")
                    killed += await target.kill_connections()
                healed = time.time()
                await wait_finished(board, jobs, scale(60, 500), cluster)
                cluster.stop_all()
            finally:
                cluster.kill_all()
            final = await board_final(board)
    extra = {"connections_killed": killed, "recovery_s": first_consume_after(folder, healed)}
    result = report("connection-kills", backend, folder, final, extra)
    assert killed > 0, "no connection was killed: the test proved nothing"
    assert not result.violations, result.violations
    assert result.figures["lost"] == 0 and result.figures["consumed"] == jobs


# -- network faults through the proxy -------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_the_kafka_proxy_keeps_a_client_behind_it(tmp_path: Path) -> None:
    """A Kafka client connects to the broker addresses it is told: the proxy must rewrite them,
    or its faults would miss every connection but the bootstrap one."""
    async with open_target("kafka", tmp_path) as target:
        assert target.server is not None
        async with KafkaChaosProxy(target.server) as proxy:
            behind = target.through("127.0.0.1", proxy.port)
            async with open_board(behind.board_url) as board:
                await post_jobs(board, 1, prefix="proxied")
                assert await board.claim_next("me") is not None
                assert proxy.rewritten > 0 and proxy.leaks == 0
                proxy.blackhole()
                with anyio.move_on_after(1.5) as cut_off:
                    await board.job_count()  # a sync record: a produce and a fetch
                assert cut_off.cancelled_caught, "the board reached the broker around the proxy"
                proxy.heal()
                with anyio.fail_after(10):
                    assert await board.job_count() == 1


@pytest.mark.timeout(scale(120, 600))
@pytest.mark.parametrize("backend", backend_params(processes=True, network=True))
async def test_network_faults_lose_no_job_and_fence_the_partitioned(
    backend: str, tmp_path: Path
) -> None:
    jobs, rounds = scale(300, 2000), scale(1, 3)
    folder = history_folder(tmp_path)
    async with open_target(backend, tmp_path) as target:
        assert target.server is not None
        async with target.proxy(target.server) as proxy, open_board(target.board_url) as board:
            await post_jobs(board, jobs, prefix="net", args={"work": 0.05}, max_attempts=30)
            # p0 reaches the server through the proxy, p1 directly: while p0 is cut off, p1
            # takes over its jobs; when p0 is back, its writes must be refused.
            direct = Cluster(target, folder, lease=LEASE, sweep=SWEEP)
            faulty = Cluster(target.through("127.0.0.1", proxy.port), folder, lease=LEASE)
            try:
                faulty.start("p0")
                direct.start("p1")
                victim = await faulty.started("p0")
                for _ in range(rounds):
                    await anyio.sleep(0.5)
                    proxy.latency = 0.05
                    await anyio.sleep(2.0)
                    proxy.heal()
                    faulty.harness.write("fault", what="reset", connections=proxy.reset())
                    await anyio.sleep(1.0)
                    faulty.harness.write("fault", what="half-close", connections=proxy.half_close())
                    await anyio.sleep(1.0)
                    faulty.harness.write("stop", target="p0", victim=victim, what="blackhole")
                    proxy.blackhole()
                    await anyio.sleep(3 * LEASE)
                    proxy.heal()
                    healed = time.time()
                    faulty.harness.write("cont", target="p0", victim=victim, what="healed")
                left_at_heal = jobs - await finished(board)
                await wait_finished(board, jobs, scale(90, 500), direct)
                recovered = first_consume_after(folder, healed, owner=victim)
                # In a thread: the proxy runs on this event loop and must go on forwarding
                # while the conductors drain and say goodbye to the server.
                codes = await anyio.to_thread.run_sync(faulty.stop_all)
                codes += await anyio.to_thread.run_sync(direct.stop_all)
            finally:
                direct.kill_all()
                faulty.kill_all()
            final = await board_final(board)
    extra = {
        "proxied_connections": proxy.connections,
        "resets": proxy.resets,
        "jobs_left_at_heal": left_at_heal,
        "partitioned_recovery_s": recovered,
        "exit_after_sigterm_s": faulty.exit_seconds | direct.exit_seconds,
    }
    result = report("network", backend, folder, final, extra)
    assert not result.violations, result.violations
    assert result.figures["lost"] == 0 and result.figures["consumed"] == jobs
    assert result.figures["stale_accepted"] == 0 and result.figures["consumed_twice"] == 0
    assert proxy.resets > 0
    assert proxy.leaks == 0, "the proxy let the conductor reach the server around it"
    assert codes == [0, 0], "a conductor did not drain and exit after the faults"
    if left_at_heal > 40:
        # Recovery without human action: the partitioned conductor works again.
        assert recovered is not None, "the partitioned conductor never consumed again"
