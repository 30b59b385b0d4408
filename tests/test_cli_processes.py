"""``aioconductor run --processes N`` (issue #23): one supervisor, N conductor processes, real
processes throughout. A child killed with SIGKILL is started again and its job recovered after
the lease; SIGTERM drains every child and exits 0; a crash loop ends with one error line; the
children's names are unique; the children drain when the supervisor itself is killed.

:class:`~aioconductor.cli.supervisor.Supervisor` is also tested alone, over small ``python -c``
children, for its backoff, crash loop and signal forwarding."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from aioconductor import JobState, open_board
from aioconductor.cli.parser import build_parser
from aioconductor.cli.supervisor import Supervisor, child_argv, describe_exit

from .backends import BY_NAME, Space

REPO = Path(__file__).resolve().parent.parent
#: A file board and a server board.
BOARDS = [BY_NAME["sqlite"].param(), BY_NAME["redis"].param()]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def start_supervisor(url: str, tmp_path: Path, *options: str) -> Process:
    """``aioconductor run --processes ...`` on ``url``, its output (and its children's) in
    ``tmp_path/out`` and ``tmp_path/err``."""
    argv = [
        sys.executable, "-m", "aioconductor", "run", "--board", url,
        "--app", "tests.apps:flows", "--log-level", "WARNING", *options,
    ]  # fmt: skip
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        return await anyio.open_process(argv, cwd=REPO, stdout=out, stderr=err)


def children_of(pid: int) -> dict[str, int]:
    """The conductor processes whose parent is ``pid``: {name: pid}, from ``/proc``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        names = [a[len(b"--name=") :].decode() for a in argv if a.startswith(b"--name=")]
        if parent == pid and names:
            found[names[0]] = int(entry.name)
    return found


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    with anyio.fail_after(within):
        while not await condition():
            await anyio.sleep(0.05)


async def stop(process: Process, signum: signal.Signals = signal.SIGTERM) -> int:
    """Signal the supervisor and wait for its exit status (killed after 60 s)."""
    process.send_signal(signum)
    with anyio.move_on_after(60):
        return await process.wait()
    process.kill()
    await process.wait()
    raise AssertionError("the supervisor did not stop within 60 s")


# -- the command, end to end ---------------------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("space", BOARDS, indirect=True)
async def test_a_child_killed_is_started_again_and_its_job_recovered_after_the_lease(
    tmp_path: Path, space: Space
) -> None:
    url = space.board_url("procs")
    record, release = tmp_path / "record.txt", tmp_path / "release"
    async with open_board(url, poll_interval=0.05) as board:
        job = await board.post(
            "j", "held", {"key": 1, "record": str(record), "release": str(release)}
        )
        supervisor = await start_supervisor(
            url, tmp_path, "--processes", "2", "--name", "sup", "--lease", "1"
        )
        try:

            async def started() -> bool:
                return "hold-start 1" in lines(record)

            await wait_until(started)
            holder = await board.get(job.id)
            assert holder.claim is not None
            victim_name = holder.claim.owner.rsplit("-", 1)[0]  # sup-1 or sup-2
            victim = children_of(supervisor.pid)[victim_name]
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            release.touch()
            done = await board.wait_for(job.id, timeout=60)
            recovered_after = time.monotonic() - killed_at

            async def restarted() -> bool:
                again = children_of(supervisor.pid).get(victim_name)
                return again is not None and again != victim

            await wait_until(restarted)

            async def both_registered() -> bool:  # the new child registers once it runs
                return {"sup-1", "sup-2"} <= {info.name for info in await board.conductors()}

            await wait_until(both_registered)
        finally:
            code = await stop(supervisor)
    assert code == 0, (tmp_path / "err").read_text()
    assert done.state is JobState.COMPLETE
    assert done.attempts == 2  # the lost run counts
    assert recovered_after >= 0.5  # only once the dead child's lease ran out
    # "first" was saved in the store and not run again; "hold" ran again.
    assert lines(record) == ["first 1", "hold-start 1", "hold-start 1", "hold-end 1", "third 1"]
    err = (tmp_path / "err").read_text()
    assert f"supervisor: {victim_name} (pid {victim}) died with signal SIGKILL" in err
    assert "starting it again in 0.5 s" in err


@pytest.mark.timeout(150)
@pytest.mark.parametrize("space", BOARDS, indirect=True)
async def test_sigterm_drains_every_child_and_exits_0(tmp_path: Path, space: Space) -> None:
    url = space.board_url("procs")
    record, release = tmp_path / "record.txt", tmp_path / "release"
    async with open_board(url) as board:
        held = [
            await board.post(
                f"held-{n}", "held", {"key": n, "record": str(record), "release": str(release)}
            )
            for n in range(4)
        ]
        quick = [await board.post(f"quick-{n}", "noop", {"key": n}) for n in range(20)]
        supervisor = await start_supervisor(
            url, tmp_path, "--processes", "3", "--name", "web", "--concurrency", "2",
            "--drain-timeout", "1",
        )  # fmt: skip
        try:

            async def three_running() -> bool:
                conductors = await board.conductors()
                return len(conductors) == 3

            await wait_until(three_running)
            names = sorted(info.name for info in await board.conductors())
            owners = {info.owner for info in await board.conductors()}

            async def quick_done() -> bool:
                return all([(await board.get(j.id)).state is JobState.COMPLETE for j in quick])

            await wait_until(quick_done)

            async def all_held_running() -> bool:  # concurrency 2 each: room for the 4
                return sum(line.startswith("hold-start") for line in lines(record)) == 4

            await wait_until(all_held_running)
        finally:
            started = time.monotonic()
            code = await stop(supervisor)
        drained_in = time.monotonic() - started
        after = [await board.get(job.id) for job in held]
        left = await board.conductors()
    assert code == 0, (tmp_path / "err").read_text()
    assert names == ["web-1", "web-2", "web-3"] and len(owners) == 3
    # The drain timed out (1 s) under jobs that never end: each was given back, none left
    # CLAIMED, no attempt spent.
    assert [(j.state, j.attempts, j.releases) for j in after] == [(JobState.UNCLAIMED, 0, 1)] * 4
    assert drained_in < 20
    assert left == []  # every child unregistered
    err = (tmp_path / "err").read_text()
    assert "supervisor: SIGTERM: draining 3 conductors" in err
    assert all(f"web-{n}: SIGTERM: draining" in err for n in (1, 2, 3))
    out = (tmp_path / "out").read_text()
    assert all(f"conductor web-{n} stopped:" in out for n in (1, 2, 3))


@pytest.mark.timeout(90)
async def test_a_crash_loop_ends_with_one_error_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    # Every child fails at start: nothing listens on port 1.
    started = time.monotonic()
    supervisor = await start_supervisor("redis://127.0.0.1:1/0", tmp_path, "--processes", "2")
    with anyio.fail_after(60):
        code = await supervisor.wait()
    took = time.monotonic() - started
    assert code == 1
    assert took < 40
    err = lines(tmp_path / "err")
    assert err[-1].startswith("aioconductor run: error: conductor conductor-")
    assert "died 5 times within 60 s (last: exit code 1): crash loop, giving up" in err[-1]
    assert sum("crash loop" in line for line in err) == 1
    # Each death was said, with the backoff doubling.
    assert any("starting it again in 0.5 s" in line for line in err)
    assert any("starting it again in 4 s" in line for line in err)


@pytest.mark.timeout(90)
async def test_children_drain_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    supervisor = await start_supervisor(url, tmp_path, "--processes", "2", "--name", "orphan")
    async with open_board(url) as board:

        async def both_running() -> bool:
            return len(await board.conductors()) == 2

        await wait_until(both_running)
        children = children_of(supervisor.pid)
        assert sorted(children) == ["orphan-1", "orphan-2"]
        await stop(supervisor, signal.SIGKILL)

        async def children_gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() for pid in children.values())

        # They notice within a second, drain (nothing runs) and exit.
        await wait_until(children_gone, within=20)
        assert await board.conductors() == []
    assert "the supervisor (pid" in (tmp_path / "err").read_text()


def test_processes_1_is_the_conductor_itself(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "aioconductor", "run", "--board", "memory://",
            "--app", "tests.apps:flows", "--processes", "1", "--max-dispatches", "0",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "supervisor" not in result.stderr
    assert "conductor conductor-" in result.stdout


# -- the options a child gets ----------------------------------------------------------------------


def test_a_child_gets_every_run_option_but_processes_name_and_the_urls() -> None:
    parser = build_parser()
    given = [
        "run", "--board", "redis://u:secret@h/0", "--store", "redis://u:secret@h/1",
        "--app", "myapp:flows", "--schedules", "myapp:ticks", "--concurrency", "8",
        "--name", "web", "--lease", "12", "--drain-timeout", "5", "--log-level", "debug",
        "--keep-complete", "forever", "--keep-trashed", "2d", "--loop", "uvloop",
        "--processes", "4",
    ]  # fmt: skip
    args = parser.parse_args(given)
    argv = child_argv(args, "web-3")
    assert not any("secret" in a for a in argv)  # the URLs go through the environment
    child = parser.parse_args([*argv, "--board", args.board, "--store", args.store])
    assert (child.name, child.processes, child.supervised) == ("web-3", 1, True)
    mine = {k: v for k, v in vars(args).items() if k not in ("name", "processes", "supervised")}
    theirs = {k: v for k, v in vars(child).items() if k not in ("name", "processes", "supervised")}
    assert mine == theirs
    # Defaults are left to the child's own defaults.
    plain = child_argv(parser.parse_args(["run", "--board", "x://", "--app", "a:b"]), "c-1")
    assert plain == ["run", "--app=a:b", "--name=c-1", "--supervised"]


def test_processes_takes_a_count_or_auto() -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--app", "a:b", "--processes", "auto"]).processes == (
        os.cpu_count() or 1
    )
    assert parser.parse_args(["run", "--app", "a:b"]).processes == 1
    for bad in ("0", "-2", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "--app", "a:b", "--processes", bad])


def test_exits_are_described() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(None) == "still running"


# -- the Supervisor alone --------------------------------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_the_supervisor_gives_up_on_a_crash_loop_with_the_last_exit() -> None:
    said: list[str] = []
    supervisor = Supervisor(
        [("a", python("import sys; sys.exit(3)")), ("b", python("import time; time.sleep(60)"))],
        first_delay=0.01,
        crash_limit=3,
        say=said.append,
    )
    with anyio.fail_after(30):
        code = await supervisor.run()
    assert code == 1
    assert supervisor.failure is not None
    assert "conductor a died 3 times within 60 s (last: exit code 3)" in supervisor.failure
    # b was stopped (SIGTERM) for it.
    assert supervisor.children[1].returncode == -signal.SIGTERM
    assert [line.split(" in ")[-1] for line in said if "again in" in line] == ["0.01 s", "0.02 s"]


async def test_the_backoff_starts_over_once_a_child_ran_a_while() -> None:
    said: list[str] = []
    # Dies at once twice, then runs 0.3 s before dying: stable_after 0.2 resets the backoff.
    script = (
        "import os, sys, time\n"
        "p = sys.argv[1]\n"
        "n = int(open(p).read()) if os.path.exists(p) else 0\n"
        "open(p, 'w').write(str(n + 1))\n"
        "time.sleep(0.3 if n == 2 else 0)\n"
        "sys.exit(1)\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        counter = str(Path(folder) / "n")
        supervisor = Supervisor(
            [("a", [*python(script), counter])],
            first_delay=0.01,
            stable_after=0.2,
            crash_limit=5,
            say=said.append,
        )
        with anyio.fail_after(30):
            assert await supervisor.run() == 1
    delays = [line.split(" in ")[-1] for line in said if "again in" in line]
    assert delays == ["0.01 s", "0.02 s", "0.01 s", "0.02 s"]


async def test_stop_forwards_the_signal_and_a_second_one_again() -> None:
    # A child that counts the SIGTERMs it gets, and exits 0 on the second.
    script = (
        "import signal, sys, time\n"
        "seen = []\n"
        "def on(s, f):\n"
        "    seen.append(s)\n"
        "    print('got', len(seen), flush=True)\n"
        "    if len(seen) == 2: sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on)\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.01)\n"
    )
    supervisor = Supervisor([("a", python(script)), ("b", python(script))], say=print)
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            assert await supervisor.run() == 0

        tg.start_soon(run)
        with anyio.fail_after(20):
            while not all(child.alive for child in supervisor.children):
                await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # their handlers are set
            supervisor.stop()
            await anyio.sleep(0.3)
            assert all(child.alive for child in supervisor.children)  # draining
            supervisor.stop()
    assert [child.returncode for child in supervisor.children] == [0, 0]


@pytest.mark.timeout(60)
async def test_an_app_that_does_not_import_fails_once_before_any_child(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    argv = [
        sys.executable, "-m", "aioconductor", "run", "--board", url,
        "--app", "no.such.module:flows", "--processes", "3",
    ]  # fmt: skip
    result = await anyio.run_process(argv, cwd=REPO, check=False)
    assert result.returncode == 1
    err = result.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "cannot import 'no.such.module'" in err[0]
    assert not (tmp_path / "jobs.db").exists()  # no child started
