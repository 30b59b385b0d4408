"""Each backend's plumbing, one folder a backend: its link to the server (connections, error
translation, retries), its scripts or statements, its notification channel and its schema.

The public classes stay where users import them (``aioconductor.boards.redis``,
``aioconductor.persistence.redis``, ...); they are thin, and keep their plumbing here.
:mod:`aioconductor._backends.base` holds what every backend shares.
"""
