"""The conductor: claims jobs from a board and runs each one's flow, its progress saved.

A walk through the package, in the order a job meets it:

- :mod:`~aioconductor.conductor.core`: :class:`Conductor`, its options and lifecycle
  (``run``, ``stop``, ``async with``), the lease keeper and the heartbeat;
- :mod:`~aioconductor.conductor.dispatch`: the dispatcher, which takes free slots, claims
  that many jobs in one call, and starts a task for each;
- :mod:`~aioconductor.conductor.jobrun`: one claimed job's run, from building its flow to the
  one board verb that ends it, given what it needs by name, never the conductor;
- :mod:`~aioconductor.conductor.solo`: the gate that lets a job on its last attempt run alone;
- :mod:`~aioconductor.conductor.retention`: how long finished jobs are kept, and the service
  that purges them, one conductor of the fleet at a time;
- :mod:`~aioconductor.conductor.stats` and :mod:`~aioconductor.conductor.options`: the
  counters, and the checks of the options.
"""

from __future__ import annotations

from aioconductor.conductor.core import Conductor
from aioconductor.conductor.retention import Retention
from aioconductor.conductor.stats import ConductorStats

__all__ = ["Conductor", "ConductorStats", "Retention"]
