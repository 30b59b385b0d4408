"""Kafka's plumbing behind :mod:`aioconductor.boards.kafka` (Kafka has a board, no store).

- :mod:`~aioconductor._backends.kafka.setup`: the URL's options, creating the topics, starting
  the producer.
- :mod:`~aioconductor._backends.kafka.view`: the fold of the state topic into every job's state
  (pure: no I/O).
- :mod:`~aioconductor._backends.kafka.log`: reading and writing the state topic, and the
  notifications a ``stream()`` gets from it.
- :mod:`~aioconductor._backends.kafka.group`: the consumer-group member on the jobs topic and
  its offset commits.
"""
