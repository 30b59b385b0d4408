"""Connecting the Kafka board: its URL's options, its topics and its producer.

Topics are created when missing, with the replication factor asked for (or the number of
brokers, at most 3); a broker that refuses gets a ``BackendUnavailable`` naming the topic and the
broker's error, so an operator can create it by hand.

Every aiokafka error becomes ``BackendUnavailable`` naming the broker and the call that failed:
:func:`errors` is the table every Kafka module hands to
:func:`~aioconductor._backends.base.map_exceptions`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from aioconductor._backends.base import ErrorTable
from aioconductor._backends.base import map_exceptions
from aioconductor._urls import redact_url
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import ConfigurationError
from aioconductor.errors import SchemaMissing

__all__ = [
    "TopicSpec",
    "batch_size",
    "bool_option",
    "bootstrap_servers",
    "ensure_topics",
    "errors",
    "start_producer",
    "unavailable",
]

_CLEANUP_TIMEOUT = 5.0
#: CreateTopics' "already exists": another board instance created it meanwhile.
_TOPIC_EXISTS = 36


def unavailable(url: str, what: str, exc: BaseException) -> BackendUnavailable:
    """The ``BackendUnavailable`` to raise for an aiokafka error during ``what``."""
    return BackendUnavailable(f"Kafka at {url}: {what} failed: {exc!r}")


@functools.lru_cache(maxsize=256)
def errors(url: str, what: str) -> ErrorTable:
    """The table (for :func:`~aioconductor._backends.base.map_exceptions`) that makes an
    aiokafka error during ``what`` on the Kafka at ``url`` :func:`unavailable`.

    Cached: a board asks for a handful of tables, on every write, and need not build one.
    """
    return ((KafkaError, functools.partial(unavailable, url, what)),)


def bool_option(options: dict[str, str], name: str, default: bool) -> bool:
    """Read a boolean library option (``true``/``false``, ``1``/``0``, ``yes``/``no``)."""
    raw = options.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"option {name}={raw!r} is not a boolean")


def bootstrap_servers(driver_url: str) -> str:
    """``host:port,...`` from a ``kafka://`` URL (port 9092 where none is given).

    Raises:
        ConfigurationError: no host, or a user or password (SASL is not supported).
    """
    rest = driver_url.split("://", 1)[1]
    hosts = rest.split("?", 1)[0].split("/", 1)[0]
    if not hosts:
        raise ConfigurationError("a kafka:// URL needs a host: kafka://host:9092")
    if "@" in hosts:
        # Else the user part would be taken for a host, and shown wherever the brokers are.
        raise ConfigurationError(
            f"{redact_url(driver_url)}: a kafka:// URL takes no user or password "
            "(SASL is not supported)"
        )
    return ",".join(h if ":" in h else f"{h}:9092" for h in hosts.split(","))


@dataclass(frozen=True)
class TopicSpec:
    """A topic the board needs: its name, partitions and settings."""

    name: str
    partitions: int
    configs: dict[str, str]


async def ensure_topics(
    bootstrap: str,
    url: str,
    topics: Sequence[TopicSpec],
    replication: int | None,
    *,
    create: bool = True,
) -> int:
    """Create the missing ``topics`` (with ``create=False``, refuse to go on without them);
    the partition count of the first one as it exists.

    Raises:
        BackendUnavailable: the broker is unreachable or refused to create a topic.
        SchemaMissing: with ``create=False``, a topic is missing.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    with map_exceptions(errors(url, "connecting")):
        await admin.start()
    try:
        with map_exceptions(errors(url, "reading the topics")):
            existing = set(await admin.list_topics())
            brokers = len((await admin.describe_cluster())["brokers"])
        factor = replication or max(1, min(3, brokers))
        missing = [
            NewTopic(t.name, t.partitions, factor, topic_configs=t.configs)
            for t in topics
            if t.name not in existing
        ]
        if missing and not create:
            names = ", ".join(topic.name for topic in missing)
            raise SchemaMissing(
                f"Kafka at {url}: no aioconductor board here (topics {names} are missing), "
                "and this command does not create anything; run `aioconductor migrate` (or "
                "start a conductor) on it first"
            )
        if missing:
            with map_exceptions(errors(url, "creating the topics")):
                response = await admin.create_topics(missing)
            for name, code, message in (error[:3] for error in response.topic_errors):
                if code not in (0, _TOPIC_EXISTS):
                    raise BackendUnavailable(
                        f"Kafka at {url} refused to create topic {name!r} (error {code}: "
                        f"{message}); create it yourself or fix the broker's settings "
                        "(replication, partitions)"
                    )
        with map_exceptions(errors(url, "reading the topics")):
            described = await admin.describe_topics([topics[0].name])
        count = len(described[0]["partitions"]) if described else 0
        if count < 1:
            raise BackendUnavailable(f"Kafka at {url}: topic {topics[0].name} is missing")
        return count
    finally:
        # Closing only drops sockets; shielded so a cancelled connect still frees them.
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            with contextlib.suppress(Exception):
                await admin.close()


async def start_producer(
    bootstrap: str, url: str, idempotence: bool, max_request_size: int
) -> AIOKafkaProducer:
    """A started producer: ``acks="all"``, idempotent unless told otherwise.

    Raises:
        BackendUnavailable: the broker is unreachable, or refused an idempotent producer (the
            message says to add ``?idempotence=false``).
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=idempotence,
        max_request_size=max_request_size,
        max_batch_size=batch_size(max_request_size),
        linger_ms=0,
    )
    table = _refused_idempotence(url) if idempotence else errors(url, "starting the producer")
    try:
        with map_exceptions(table):
            await producer.start()
    except BaseException:
        # Shielded and bounded: a failed or cancelled start must still close its sockets.
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            with contextlib.suppress(Exception):
                await producer.stop()
        raise
    return producer


#: A record batch's overhead (header) on top of its records, in bytes (Kafka's v2 format: 61).
BATCH_OVERHEAD = 64
#: The producer's batches are at most this big (bigger ones help ``post_many`` little, and these
#: fit the jobs topic's default ``max.message.bytes``, 1 MiB).
BATCH_MOST = 512 * 1024


def batch_size(record_limit: int) -> int:
    """The producer's ``max_batch_size`` for topics whose ``max.message.bytes`` is
    ``record_limit``: a whole batch (records and header) must fit the topic's limit, which
    bounds a batch, not a record. (aiokafka puts a record bigger than the batch size alone in a
    batch of its own: the board keeps each record under ``record_limit`` less the overhead.)"""
    return max(16 * 1024, min(BATCH_MOST, record_limit - BATCH_OVERHEAD))


def _refused_idempotence(url: str) -> ErrorTable:
    def refused(exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(
            f"Kafka at {url} refused an idempotent producer ({exc!r}); if the broker does "
            "not support them (Tansu does not), add ?idempotence=false"
        )

    return ((KafkaError, refused),)
