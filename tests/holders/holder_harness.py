"""Helpers for holder tests: a real holder process and a reader of its replies."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import codec
from schemas.base import MAX_MESSAGE_SIZE, Message
from schemas.holders import HolderHeartbeat
from schemas.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
HOLDER_ID = "holder-test"
#: Maximum wait for any one reply, generous for a loaded CI machine.
REPLY_TIMEOUT_S = 30.0
HOLDER_TOPIC_CONFIG = {"max.message.bytes": str(MAX_MESSAGE_SIZE + 64 * 1024)}


class Inbox:
    """Reads topics from their beginning and keeps every decoded message."""

    def __init__(self, bootstrap: str, names: list[str]) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="earliest")
        self._names = names
        self.messages: list[Message] = []
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
            message = codec.decode(record.value)
            async with self._arrived:
                self.messages.append(message)
                self._arrived.notify_all()

    async def wait_for(self, kind: type[Message], match: Callable[[Message], bool] = lambda m: True,
                       timeout_s: float = REPLY_TIMEOUT_S) -> Message:
        """Return the first message of type `kind` that `match` accepts, waiting up to `timeout_s`."""

        def found() -> Message | None:
            return next((m for m in self.messages if isinstance(m, kind) and match(m)), None)

        async def wait() -> Message:
            async with self._arrived:
                await self._arrived.wait_for(lambda: found() is not None)
            return found()  # type: ignore[return-value]

        try:
            return await asyncio.wait_for(wait(), timeout_s)
        except asyncio.TimeoutError:
            seen = sorted({type(m).__name__ for m in self.messages})
            raise AssertionError(f"no matching {kind.__name__} within {timeout_s:g} s; seen: {seen}") from None


class HolderUnderTest:
    """A holder started as its own process, with a producer for its topic."""

    def __init__(self, process: subprocess.Popen[bytes], topics: Topics, holder_id: str,
                 producer: AIOKafkaProducer, inbox: Inbox, log_path: Path) -> None:
        self.process = process
        self.topics = topics
        self.holder_id = holder_id
        self.producer = producer
        self.inbox = inbox
        self.log_path = log_path

    async def send(self, message: Message | bytes) -> None:
        value = message if isinstance(message, bytes) else codec.encode(message)
        await self.producer.send_and_wait(self.topics.holder(self.holder_id), value, key=b"test")

    async def first_heartbeat(self) -> HolderHeartbeat:
        return await self.inbox.wait_for(HolderHeartbeat)  # type: ignore[return-value]


def read_limits(pid: int) -> dict[str, tuple[str, str]]:
    """Return the soft and hard value of each limit in /proc/PID/limits, keyed by its name ("Max data size")."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as file:
        header, *lines = file.read().splitlines()
    soft_at, hard_at, units_at = header.index("Soft Limit"), header.index("Hard Limit"), header.index("Units")
    return {
        line[:soft_at].strip(): (line[soft_at:hard_at].strip(), line[hard_at:units_at].strip())
        for line in lines
    }


def read_status(pid: int) -> dict[str, str]:
    """Return the fields of /proc/PID/status, such as VmData ("21504 kB") and SigIgn (a hex mask)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        return {name: value.strip() for name, _, value in (line.partition(":") for line in file)}


def start_holder_process(bootstrap: str, prefix: str, holder_id: str, log_path: Path,
                         heartbeat_interval_s: float = 1.0) -> subprocess.Popen[bytes]:
    env = {
        "SHARDBUS_KAFKA_BOOTSTRAP": bootstrap,
        "SHARDBUS_TOPIC_PREFIX": prefix,
        "PYTHONPATH": str(ROOT),
    }
    log_file = open(log_path, "wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "holders", "--holder-id", holder_id,
             "--heartbeat-interval", str(heartbeat_interval_s), "--parent-pid", str(os.getpid())],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    finally:
        log_file.close()
