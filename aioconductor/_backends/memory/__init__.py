"""The memory backend's state: the process-wide backends that ``memory://NAME`` names, shared
by boards and stores, and the board's in-process jobs (records, and the heaps that make claims
cheap).

The public classes stay in :mod:`aioconductor.boards.memory` and
:mod:`aioconductor.persistence.memory`.
"""
