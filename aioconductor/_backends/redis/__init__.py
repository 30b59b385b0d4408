"""Redis's plumbing, shared by :mod:`aioconductor.boards.redis` and
:mod:`aioconductor.persistence.redis`: the link (a client, the error translation, read retries)
and its pipelining of scripts, the board's and the store's Lua scripts and the records they
read back, and the board's pub/sub subscription.
"""
