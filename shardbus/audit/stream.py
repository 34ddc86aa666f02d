"""Read whole topics once, from the start or from a time, merged into one stream by timestamp.

The reader captures each partition's end offset when it opens and stops
there, so a replay of a busy deployment ends. It uses no consumer group and
commits nothing, so auditors can run it as often as they like.

Records come out in timestamp order across partitions (ties broken by topic,
partition and offset), and in offset order within a partition. The merge
buffers at most ``batch_size`` records per partition, on top of what the
Kafka client prefetches (up to ``max_partition_fetch_bytes`` per partition).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shardbus.errors import ServiceUnavailable
from shardbus.kafka import client_options

log = logging.getLogger(__name__)

#: Seconds without a single new record, while records remain, after which
#: the reader gives up.
STALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicRecord:
    """One Kafka record as read: where it is, its timestamp and its raw bytes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class PartitionRange:
    """The offsets one partition is read between: ``start`` included, ``end`` excluded."""

    topic: str
    partition: int
    #: The partition's first offset still on the broker.
    log_start: int
    start: int
    end: int


class TopicReader:
    """A reader of the named topics, up to the end offsets captured when it is entered.

    Use it as an async context manager, then iterate ``records()`` once.
    Topics that do not exist are left out and listed in ``missing_topics``.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        since_ms: int | None = None,
        batch_size: int = 500,
        client_id: str = "shardbus-audit-reader",
        stall_timeout_s: float = STALL_TIMEOUT_S,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not topics:
            raise ValueError("topics must name at least one topic")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.since_ms = since_ms
        self.batch_size = batch_size
        self.stall_timeout_s = stall_timeout_s
        self.ranges: list[PartitionRange] = []
        self.missing_topics: list[str] = []
        #: Records returned so far, for progress reports.
        self.records_read = 0
        self._client_id = client_id
        # Security settings from shardbus.kafka.client_options; None reads the environment.
        self._kafka_options = dict(client_options() if kafka_options is None else kafka_options)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._kafka_options,
        )

    @property
    def records_total(self) -> int:
        """The number of offsets between the start and end of every partition (an upper bound on records)."""
        return sum(r.end - r.start for r in self.ranges)

    async def __aenter__(self) -> TopicReader:
        try:
            await self._consumer.start()
            await self._plan()
        except KafkaError as exc:
            await self._consumer.stop()
            raise ServiceUnavailable(f"cannot read topics from Kafka at {self.bootstrap}: {exc}") from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def _plan(self) -> None:
        partitions: list[TopicPartition] = []
        for topic, numbers in (await self._partitions()).items():
            if numbers is None:
                self.missing_topics.append(topic)
            else:
                partitions.extend(TopicPartition(topic, number) for number in numbers)
        if not partitions:
            return
        self._consumer.assign(partitions)
        begins = await self._consumer.beginning_offsets(partitions)
        ends = await self._consumer.end_offsets(partitions)
        starts = dict(begins)
        if self.since_ms is not None:
            found = await self._consumer.offsets_for_times({tp: self.since_ms for tp in partitions})
            for tp in partitions:
                # No record at or after the time: nothing to read there.
                starts[tp] = ends[tp] if found[tp] is None else found[tp].offset
        for tp in partitions:
            self.ranges.append(PartitionRange(tp.topic, tp.partition, begins[tp], starts[tp], ends[tp]))
            self._consumer.seek(tp, starts[tp])

    async def _partitions(self) -> dict[str, list[int] | None]:
        """Return the partition numbers of each topic, or None for a topic that does not exist."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id=f"{self._client_id}-admin", **self._kafka_options,
        )
        await admin.start()
        try:
            # Listing every topic does not create missing ones, unlike asking
            # for a topic by name on a broker with auto.create.topics.enable.
            existing = set(await admin.list_topics())
            found = [topic for topic in self.topics if topic in existing]
            described = {item["topic"]: item for item in await admin.describe_topics(found)} if found else {}
        finally:
            await admin.close()
        return {
            topic: sorted(p["partition"] for p in described[topic]["partitions"]) if topic in described else None
            for topic in self.topics
        }

    async def records(self) -> AsyncIterator[TopicRecord]:
        """Yield every record of the planned ranges, merged by timestamp."""
        ends = {TopicPartition(r.topic, r.partition): r.end for r in self.ranges}
        order = {topic: index for index, topic in enumerate(self.topics)}
        buffers: dict[TopicPartition, collections.deque] = {tp: collections.deque() for tp in ends}
        active = {tp for tp in buffers if await self._consumer.position(tp) < ends[tp]}
        while active:
            await self._fill(buffers, active, ends)
            if not active:
                break
            tp = min(
                (tp for tp in active if buffers[tp]),
                key=lambda tp: (buffers[tp][0].timestamp, order[tp.topic], tp.partition, buffers[tp][0].offset),
            )
            message = buffers[tp].popleft()
            if not buffers[tp] and message.offset >= ends[tp] - 1:
                active.discard(tp)
            self.records_read += 1
            yield TopicRecord(tp.topic, tp.partition, message.offset, message.timestamp, message.key, message.value)

    async def _fill(self, buffers: dict, active: set, ends: dict) -> None:
        """Fetch until every active partition has a buffered record or is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stall_timeout_s
        while True:
            empty = [tp for tp in active if not buffers[tp]]
            if not empty:
                return
            batch = await self._consumer.getmany(*empty, timeout_ms=200, max_records=self.batch_size)
            for tp, messages in batch.items():
                buffers[tp].extend(m for m in messages if m.offset < ends[tp])
            for tp in empty:
                # A partition can end in offsets that hold no record, such as
                # transaction markers, so the position decides when it is done.
                if not buffers[tp] and await self._consumer.position(tp) >= ends[tp]:
                    active.discard(tp)
            if batch:
                deadline = loop.time() + self.stall_timeout_s
            elif loop.time() > deadline:
                waiting = ", ".join(f"{tp.topic}:{tp.partition}" for tp in empty)
                raise ServiceUnavailable(
                    f"no records from {waiting} for {self.stall_timeout_s:g} s although the end offsets "
                    f"say more remain; check that Kafka at {self.bootstrap} runs"
                )
