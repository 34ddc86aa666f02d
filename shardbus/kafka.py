"""Small Kafka helpers shared by the services: client settings, topic creation and deletion.

| Variable | Meaning | Default |
|---|---|---|
| SHARDBUS_REPLICATION_FACTOR | replicas of each topic shardbus creates | the number of brokers, at most 3 |
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.helpers import create_ssl_context

from shardbus.config import KafkaTls, Settings
from shardbus.errors import ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)

#: Environment variable with the replication factor of the topics shardbus creates.
REPLICATION_ENV = "SHARDBUS_REPLICATION_FACTOR"

#: Replication factor used when REPLICATION_ENV is not set and the cluster has
#: at least this many brokers. With the broker setting min.insync.replicas=2
#: and producers that use acks=all, a topic with 3 replicas keeps accepting
#: writes, and loses no acknowledged record, while one broker is down.
MAX_DEFAULT_REPLICATION = 3

#: Settings of every producer whose records must not be lost or duplicated
#: when a broker fails: acks=all waits for the in-sync replicas, and an
#: idempotent producer's retries do not write a record twice.
RELIABLE_PRODUCER: dict[str, Any] = {"acks": "all", "enable_idempotence": True}

# Kafka's error code for a topic that exists already.
_TOPIC_ALREADY_EXISTS = 36


def client_options(settings: Settings | KafkaTls | None = None) -> dict[str, Any]:
    """Return the security settings of every Kafka client of this process.

    Pass them to AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient or
    kafka-python's KafkaAdminClient as keyword arguments. `settings` may be
    the process's Settings, a KafkaTls, or None to read the
    SHARDBUS_KAFKA_TLS_* variables from the environment. Without TLS
    settings the result selects plaintext, the development default.

    Raises ConfigError when a TLS file cannot be read.
    """
    tls = settings.kafka_tls if isinstance(settings, Settings) else settings
    if settings is None:
        tls = KafkaTls.from_env()
    if tls is None:
        return {"security_protocol": "PLAINTEXT"}
    try:
        # create_ssl_context starts from ssl.create_default_context, which
        # checks the broker's certificate and host name.
        context = create_ssl_context(cafile=str(tls.ca), certfile=str(tls.certificate), keyfile=str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the Kafka TLS files (CA {tls.ca}, certificate {tls.certificate}, key {tls.key}): {exc}; "
            "check SHARDBUS_KAFKA_TLS_CA, SHARDBUS_KAFKA_TLS_CERT and SHARDBUS_KAFKA_TLS_KEY"
        ) from None
    return {"security_protocol": "SSL", "ssl_context": context}


def configured_replication(environ: Mapping[str, str] | None = None) -> int | None:
    """Return the replication factor SHARDBUS_REPLICATION_FACTOR sets, or None when it is not set.

    Raises ConfigError for a value that is not a positive integer.
    """
    env = os.environ if environ is None else environ
    raw = env.get(REPLICATION_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{REPLICATION_ENV}={raw!r} is invalid: expected a positive integer such as 3")
    return value


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int = 1,
    replication: int | None = None,
    config: dict[str, str] | None = None,
    kafka_options: dict[str, Any] | None = None,
) -> None:
    """Create each topic that does not exist yet, and wait until it has a leader.

    `replication` defaults to SHARDBUS_REPLICATION_FACTOR, and without it to
    the number of brokers, at most MAX_DEFAULT_REPLICATION: 1 on a
    development broker, 3 on a cluster. Topics that exist keep their
    replication. Raises ConfigError when the cluster has fewer brokers than
    the replication factor. `kafka_options` defaults to
    `client_options()` of this process.
    """
    names = list(names)
    options = client_options() if kafka_options is None else kafka_options
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    try:
        await admin.start()
    except KafkaError as exc:
        raise ServiceUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            replicas = replication or configured_replication() or await _default_replication(admin)
            topics = [NewTopic(n, partitions, replicas, topic_configs=config or {}) for n in missing]
            try:
                response = await admin.create_topics(topics)
            except TopicAlreadyExistsError:
                pass  # another process created it first, which is what we wanted
            else:
                _check_created(response, replicas)
        await _wait_for_leaders(admin, names)
    finally:
        await admin.close()


async def _default_replication(admin: AIOKafkaAdminClient) -> int:
    cluster = await admin.describe_cluster()
    return max(1, min(MAX_DEFAULT_REPLICATION, len(cluster["brokers"])))


def _check_created(response: Any, replicas: int) -> None:
    for topic, code, message in getattr(response, "topic_errors", ()):
        if code in (0, _TOPIC_ALREADY_EXISTS):
            continue
        error = for_code(code)
        if error is InvalidReplicationFactorError:
            raise ConfigError(
                f"cannot create topic {topic} with {replicas} replicas: {message}; "
                f"set {REPLICATION_ENV} to at most the number of brokers"
            )
        raise ServiceUnavailable(f"creating topic {topic} failed: {error.__name__}: {message}")


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        ready = all(
            t.get("error_code", 0) == 0
            and t.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
            for t in described
        )
        if ready:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise ServiceUnavailable(f"topics {names} have no leader after {timeout_s:g} s")
        await asyncio.sleep(0.1)


async def delete_topics(
    bootstrap: str, names: Iterable[str], *, kafka_options: dict[str, Any] | None = None
) -> None:
    """Delete each named topic; topics already gone are fine.

    `kafka_options` defaults to `client_options()` of this process.
    """
    names = list(names)
    if not names:
        return
    options = client_options() if kafka_options is None else kafka_options
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [n for n in names if n in existing]
        if present:
            try:
                await admin.delete_topics(present)
            except UnknownTopicOrPartitionError:
                pass
    finally:
        await admin.close()


async def topic_partitions(consumer: Any, topics: Iterable[str], *, timeout_s: float = 15.0) -> list[Any]:
    """Return every partition of each topic, refreshing the consumer's metadata until all are known.

    `consumer.topics()` does not fill `partitions_for_topic()` in aiokafka
    0.14, so a reader that trusted it would see only partition 0 of a topic
    another service created with more. Raises ServiceUnavailable naming a
    topic that does not appear within `timeout_s`.
    """
    from aiokafka import TopicPartition

    names = list(topics)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
        known = {name: consumer.partitions_for_topic(name) for name in names}
        missing = [name for name, partitions in known.items() if not partitions]
        if not missing:
            return [TopicPartition(name, number) for name in names for number in sorted(known[name])]
        if asyncio.get_running_loop().time() > deadline:
            raise ServiceUnavailable(f"topic {missing[0]} has no partitions after {timeout_s:g} s; was it created?")
        await asyncio.sleep(0.2)
