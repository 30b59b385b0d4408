"""Process settings for a process that runs conductors: :func:`tune_gc`.

A conductor makes and drops many small container objects for every job (the job's models, its
task and coroutines, futures, the batches of its board and store calls). CPython's cyclic
garbage collector runs its youngest generation every 700 such allocations (its default): a
conductor collects every dozen jobs or so, and fully, over every object of the process, every
thousand or two. Measured in a conductor process draining 6,000 jobs from
PostgreSQL (``benchmarks/README.md``, session 11): 150 to 175 ms of collections (about 25 us a
job, a tenth of the conductor's CPU) with CPython's default, 16 to 19 ms at :data:`GC_YOUNG`;
more in a process that holds a large heap.

The collector is the process's, not the library's: a ``Conductor`` never changes it. The
``aioconductor run`` command, which owns its process, calls :func:`tune_gc` (``--gc-young``); an
application that runs a conductor in its own process (a worker started by a FastAPI lifespan,
say) may call it at start-up.
"""

from __future__ import annotations

import gc

__all__ = ["GC_YOUNG", "tune_gc"]

#: The youngest generation's threshold :func:`tune_gc` sets by default: objects allocated (net)
#: between its collections. Garbage caught in reference cycles waits that much longer for its
#: collection (a few MB at most); everything else is freed at once, as ever.
GC_YOUNG = 20_000


def tune_gc(young: int = GC_YOUNG) -> tuple[int, int, int]:
    """Collect the youngest generation every ``young`` allocations (the other thresholds kept).

    Args:
        young: the youngest generation's threshold, at least 1 (CPython's default is 700).

    Returns:
        The thresholds before the call (``gc.get_threshold()``), to restore them with
        ``gc.set_threshold(*previous)``.

    Raises:
        ValueError: ``young`` is not a whole number of at least 1 (0 would turn the collector
            off, which this function does not do).
    """
    if isinstance(young, bool) or not isinstance(young, int) or young < 1:
        raise ValueError(f"young must be a whole number >= 1, not {young!r}")
    previous = gc.get_threshold()
    gc.set_threshold(young, *previous[1:])
    return previous
