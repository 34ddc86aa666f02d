"""Small Kafka helpers shared by the services: topic creation and deletion."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from shardbus.errors import ServiceUnavailable

log = logging.getLogger(__name__)


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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
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
