"""Follow the lifecycle topic and describe each event in one line."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer

from schemas import codec
from schemas.messages import LifecycleEvent
from schemas.topics import Topics
from shardbus.errors import DecodeError
from shardbus.kafka import topic_partitions
from shardbus.kafka import client_options


class LifecycleWatcher:
    """Collects lifecycle events published after it starts.

    `kafka_options` are the Kafka security settings, by default
    `shardbus.kafka.client_options()` of this process.
    """

    def __init__(self, bootstrap: str, topics: Topics, *, kafka_options: dict[str, Any] | None = None) -> None:
        options = client_options() if kafka_options is None else kafka_options
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **options)
        self._topic = topics.lifecycle

    async def __aenter__(self) -> LifecycleWatcher:
        await self._consumer.start()
        assigned = await topic_partitions(self._consumer, [self._topic])
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        for partition in assigned:
            await self._consumer.position(partition)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def wait_for(self, kind: str, *, count: int, timeout_s: float) -> list[LifecycleEvent]:
        """Return the events of kind `kind`, once `count` arrived or at the timeout."""
        return [e for e in await self.events(until=kind, count=count, timeout_s=timeout_s) if e.event == kind]

    async def collect(self, *, until: str, count: int, timeout_s: float) -> list[str]:
        """Return one line per event until `count` events of kind `until` arrived, or the timeout."""
        return [describe(e) for e in await self.events(until=until, count=count, timeout_s=timeout_s)]

    async def events(self, *, until: str, count: int, timeout_s: float) -> list[LifecycleEvent]:
        """Return every event until `count` events of kind `until` arrived, or the timeout."""
        events: list[LifecycleEvent] = []
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < count and time.monotonic() < deadline:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        event = codec.decode(record.value)
                    except DecodeError:
                        continue
                    if not isinstance(event, LifecycleEvent):
                        continue
                    events.append(event)
                    if event.event == until:
                        seen += 1
        return events


def describe(event: LifecycleEvent) -> str:
    parts = [str(event.event)]
    if event.holder_id:
        parts.append(f"holder {event.holder_id}")
    if event.operation_id:
        parts.append(f"operation {event.operation_id[:8]}…")
    if event.holders:
        parts.append(f"holders {', '.join(event.holders)}")
    if event.detail:
        parts.append(f"({event.detail})")
    return " ".join(parts)
