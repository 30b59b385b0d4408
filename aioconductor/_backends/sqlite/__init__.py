"""SQLite's plumbing: the link (one connection run in a worker thread, group commit, the
schema versions), the board's schema and statements, and the store's.

The public classes stay in :mod:`aioconductor.boards.sqlite` and
:mod:`aioconductor.persistence.sqlite`.
"""
