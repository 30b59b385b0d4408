"""Kafka's plumbing behind :mod:`aioconductor.boards.kafka` (Kafka has a board, no store).

- :mod:`~aioconductor._backends.kafka.link`: the board's connection: its topics, the producer,
  the state log and the group member, opened and closed together; the jobs and dead-letter
  records; a ``stream()``'s notifications.
- :mod:`~aioconductor._backends.kafka.setup`: the URL's options, the error table (aiokafka's
  errors become ``BackendUnavailable``), creating the topics, starting the producer.
- :mod:`~aioconductor._backends.kafka.records`: a posted job's state and each transition of it,
  as pure functions; the jobs and dead-letter records; reading a state (as a ``Job``, claimable,
  in claim order).
- :mod:`~aioconductor._backends.kafka.view`: the fold of the state topic into every job's state
  and every schedule's last tick (pure: no I/O); its indexes are in
  :mod:`~aioconductor._backends.kafka.indexes`, its reads in
  :mod:`~aioconductor._backends.kafka.reads`.
- :mod:`~aioconductor._backends.kafka.limits`: the limit records, the claimed jobs per limit
  key, and how many of a key one pick may take.
- :mod:`~aioconductor._backends.kafka.cancels`: the cancel verb's record and its retries.
- :mod:`~aioconductor._backends.kafka.log`: reading and writing the state topic (a transition is
  written again after each lost race).
- :mod:`~aioconductor._backends.kafka.group`: the consumer-group member on the jobs topic and
  its offset commits.
"""
