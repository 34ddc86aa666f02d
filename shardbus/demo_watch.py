"""Follow the lifecycle topic and describe each event in one line."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer

from schemas import codec
from schemas.messages import EventKind, HolderLifecycle, LifecycleEvent
from schemas.topics import Topics
from shardbus.errors import DecodeError, ServiceUnavailable
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
            for event in await self._next_events():
                events.append(event)
                if event.event == until:
                    seen += 1
        return events

    async def per_operation_cycle(self, secret_name: str, *, timeout_s: float) -> list[LifecycleEvent]:
        """Return every event until the per-operation holders provisioned for `secret_name` are all torn down.

        Raises ServiceUnavailable, naming the holders still running, when
        that has not happened within `timeout_s` seconds.
        """
        events: list[LifecycleEvent] = []
        provisioned: set[str] = set()
        torn_down: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while not provisioned or not provisioned <= torn_down:
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(_cycle_incomplete(secret_name, provisioned, torn_down, timeout_s))
            for event in await self._next_events():
                events.append(event)
                if (event.event is EventKind.HOLDER_PROVISIONED and event.secret_name == secret_name
                        and event.detail == HolderLifecycle.PER_OPERATION.value):
                    provisioned.update(event.holders)
                elif event.event is EventKind.HOLDER_TORN_DOWN:
                    torn_down.add(event.holder_id)
        return events

    async def _next_events(self) -> list[LifecycleEvent]:
        """Return the lifecycle events of the next batch of records, skipping records that do not decode."""
        events = []
        batches = await self._consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                try:
                    event = codec.decode(record.value)
                except DecodeError:
                    continue
                if isinstance(event, LifecycleEvent):
                    events.append(event)
        return events


def _cycle_incomplete(secret_name: str, provisioned: set[str], torn_down: set[str], timeout_s: float) -> str:
    if not provisioned:
        return (f"no per-operation holders were provisioned for {secret_name!r} within {timeout_s:g} s; "
                "see the provisioner's and the authorizer's logs")
    running = ", ".join(sorted(provisioned - torn_down))
    return (f"the per-operation holders {running} of {secret_name!r} were not torn down within {timeout_s:g} s "
            "after they were provisioned; see the provisioner's log")


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
