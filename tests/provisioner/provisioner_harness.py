"""Helpers for provisioner tests: a running provisioner and a reader of its topics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from redis.asyncio import Redis

from provisioner.config import ProvisionerConfig
from provisioner.process import ProcessBackend
from provisioner.service import Provisioner
from schemas import codec
from schemas.audit import AuditRecord
from schemas.base import Message
from schemas.topics import Topics
from shardbus.audit import AuditLog
from shardbus.crypto.signing import SigningKey

#: Maximum wait for any one event, generous for a loaded CI machine.
EVENT_TIMEOUT_S = 45.0

#: Fast heartbeats and short timeouts, so failures show up within seconds.
TEST_CONFIG = ProvisionerConfig(
    pool_size=2,
    max_holders=8,
    heartbeat_interval_s=0.5,
    heartbeat_timeout_s=5.0,
    ready_timeout_s=30.0,
    stop_timeout_s=5.0,
    teardown_on_stop=True,
)

MessageT = TypeVar("MessageT", bound=Message)

#: The audit key of every provisioner these tests start, so that a second
#: provisioner on a prefix continues the first one's chain.
AUDIT_KEY = SigningKey.generate()


class Inbox:
    """Reads topics from their beginning and keeps every decoded message."""

    def __init__(self, bootstrap: str, names: list[str]) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="earliest")
        self._names = names
        self.messages: list[Message] = []
        self.undecodable = 0
        self._arrived = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign([TopicPartition(name, 0) for name in self._names])
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _read(self) -> None:
        async for record in self._consumer:
            async with self._arrived:
                try:
                    self.messages.append(codec.decode(record.value))
                except Exception:  # A test may put garbage on a topic on purpose.
                    self.undecodable += 1
                self._arrived.notify_all()

    async def wait_for(self, kind: type[MessageT], match: Callable[[MessageT], bool] = lambda m: True,
                       timeout_s: float = EVENT_TIMEOUT_S) -> MessageT:
        """Return the first message of type `kind` that `match` accepts, waiting up to `timeout_s`."""

        def found() -> MessageT | None:
            return next((m for m in self.messages if isinstance(m, kind) and match(m)), None)

        async def wait() -> MessageT:
            async with self._arrived:
                await self._arrived.wait_for(lambda: found() is not None)
            return found()  # type: ignore[return-value]

        try:
            return await asyncio.wait_for(wait(), timeout_s)
        except asyncio.TimeoutError:
            seen = sorted({type(m).__name__ for m in self.messages})
            raise AssertionError(f"no matching {kind.__name__} within {timeout_s:g} s; seen: {seen}") from None


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = EVENT_TIMEOUT_S) -> None:
    """Poll `check` until it returns True; fail with `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting until {what}")
        await asyncio.sleep(0.1)


def process_exists(pid: int) -> bool:
    """Tell whether a process with `pid` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@dataclass
class RunningProvisioner:
    """A provisioner running as a task of the test's event loop."""

    service: Provisioner
    task: asyncio.Task[None]
    topics: Topics
    inbox: Inbox
    log_dir: Path

    async def stop(self) -> None:
        """Stop the provisioner and wait until it has torn down its holders."""
        self.service.stop()
        await asyncio.wait_for(self.task, 60)


async def start_provisioner(bootstrap: str, redis: Redis, topics: Topics, log_dir: Path,
                            config: ProvisionerConfig, *, audit_key: SigningKey | None = None) -> RunningProvisioner:
    """Start a provisioner as a task and return it once it is ready with a full pool.

    Its audit records are signed with `audit_key`, by default AUDIT_KEY.
    """
    audit = AuditLog(bootstrap, topics, audit_key or AUDIT_KEY, role="provisioner")
    service = Provisioner(bootstrap, topics, ProcessBackend(log_dir), redis, config, audit=audit)
    task = asyncio.create_task(service.run())
    running = RunningProvisioner(service, task, topics, Inbox(bootstrap, [topics.lifecycle, topics.deadletter]),
                                 log_dir)
    try:
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # Raises the provisioner's own error.
        assert service.ready.is_set(), "the provisioner did not become ready within 60 s"
        await running.inbox.start()
        await service.pool.wait_filled(60)
    except BaseException:
        if not task.done():
            await running.stop()
        raise
    return running


async def read_audit_records(bootstrap: str, topics: Topics, partition: int) -> list[AuditRecord]:
    """Return every record on one partition of the audit topic, in order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topics.audit, partition)
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, begin)
        records: list[AuditRecord] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=500)
            records.extend(codec.decode(message.value, AuditRecord) for message in batch.get(tp, []))
        return records
    finally:
        await consumer.stop()
