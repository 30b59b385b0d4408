"""PostgreSQL's plumbing, shared by :mod:`aioconductor.boards.postgres` and
:mod:`aioconductor.persistence.postgres`: the link (an asyncpg pool and the error translation),
the schema and its migrations, the board's SQL and its LISTEN subscription.
"""
