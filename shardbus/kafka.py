"""Small Kafka helpers shared by the services: client settings, topic creation and deletion."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError
from aiokafka.helpers import create_ssl_context

from shardbus.config import KafkaTls, Settings
from shardbus.errors import ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)


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


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int = 1,
    replication: int = 1,
    config: dict[str, str] | None = None,
) -> None:
    """Create each topic that does not exist yet, and wait until it has a leader."""
    names = list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
    try:
        await admin.start()
    except KafkaError as exc:
        raise ServiceUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            topics = [NewTopic(n, partitions, replication, topic_configs=config or {}) for n in missing]
            try:
                await admin.create_topics(topics)
            except TopicAlreadyExistsError:
                pass  # another process created it first, which is what we wanted
        await _wait_for_leaders(admin, names)
    finally:
        await admin.close()


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


async def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete each named topic; topics already gone are fine."""
    names = list(names)
    if not names:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
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
