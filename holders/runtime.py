"""The holder service: its Kafka consumer, producer and heartbeat.

A holder reads only its own topic, ``{p}.holder.{holder_id}``, which has one
partition. It is assigned that partition directly (no consumer group) and
reads it from the beginning: the topic is created just before the holder
starts, so everything on it was meant for this holder.

Replies go out keyed by ``Topics.partition_key``: FragmentResponse to
``{p}.fragments``, HolderAck to ``{p}.acks``, heartbeats to
``{p}.heartbeats``. A record that does not decode, or that names another
holder, goes to ``{p}.deadletter`` as its size and SHA-256 only, and the
holder carries on with the next record.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from holders.handlers import CommandHandler
from schemas import codec
from schemas.audit import DeadLetter
from schemas.base import MAX_MESSAGE_SIZE, Message
from schemas.holders import DestroyFragment, HolderHeartbeat, HolderStatus, LoadedFragment, StoreFragment
from schemas.operations import FetchCommand, FragmentError, FragmentResponse
from schemas.topics import Topics
from shardbus.errors import DecodeError
from shardbus.kafka import RELIABLE_PRODUCER, client_options

log = logging.getLogger(__name__)

COMMAND_TYPES = (StoreFragment, DestroyFragment, FetchCommand)
DEFAULT_HEARTBEAT_INTERVAL_S = 2.0

# Room for the Kafka record and batch headers around the largest command.
_FETCH_BYTES = codec.max_size_for(COMMAND_TYPES) + 64 * 1024
_REQUEST_BYTES = MAX_MESSAGE_SIZE + 64 * 1024


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class HolderService:
    """Runs one holder until `stop()` is called.

    `handler` owns the key pair and the fragment store. `clock_ms` is used
    for heartbeats and dead letters. The handler has its own clock for
    deadlines.
    """

    def __init__(
        self,
        handler: CommandHandler,
        bootstrap: str,
        topics: Topics,
        *,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        if heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {heartbeat_interval_s} s")
        self.handler = handler
        self.holder_id = handler.holder_id
        self._bootstrap = bootstrap
        self._topics = topics
        self._topic = topics.holder(self.holder_id)
        self._heartbeat_interval_s = heartbeat_interval_s
        self._clock_ms = clock_ms
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._heartbeat_failures = 0

    def stop(self) -> None:
        """Ask the service to stop; safe to call from a signal handler."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume commands and send heartbeats until stopped, then wipe the store."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=f"holder-{self.holder_id}",
            **RELIABLE_PRODUCER,
            max_request_size=_REQUEST_BYTES,
            **client_options(),
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id=f"holder-{self.holder_id}",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=_FETCH_BYTES,
            fetch_max_bytes=max(_FETCH_BYTES, 50 * 1024 * 1024),
            **client_options(),
        )
        await producer.start()
        self._producer = producer
        try:
            await consumer.start()
            try:
                partition = TopicPartition(self._topic, 0)
                consumer.assign([partition])
                await consumer.seek_to_beginning(partition)
                # The position is known only once the consumer has asked the
                # broker, so the holder reads its topic before its first
                # heartbeat announces it.
                await consumer.position(partition)
                log.info("holder %s is consuming %s", self.holder_id, self._topic)
                await self._serve(consumer)
            finally:
                await consumer.stop()
            await self._send_heartbeat(HolderStatus.DRAINING)
        finally:
            self.handler.store.clear()
            self._producer = None
            await producer.stop()
            log.info("holder %s stopped and wiped its fragments", self.holder_id)

    async def _serve(self, consumer: AIOKafkaConsumer) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        commands = asyncio.create_task(self._command_loop(consumer), name="commands")
        stopping = asyncio.create_task(self._stopping.wait(), name="stopping")
        try:
            done, _ = await asyncio.wait({heartbeat, commands, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (heartbeat, commands, stopping):
                task.cancel()
            await asyncio.gather(heartbeat, commands, stopping, return_exceptions=True)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._send_heartbeat(HolderStatus.READY)
            await asyncio.sleep(self._heartbeat_interval_s)

    def heartbeat(self, status: HolderStatus) -> HolderHeartbeat:
        """Return the heartbeat this holder sends now."""
        loaded = tuple(
            LoadedFragment(secret_name=name, secret_version=version, fragment_index=index)
            for name, version, index in self.handler.store.loaded()
        )
        return HolderHeartbeat(
            holder_id=self.holder_id,
            at_ms=self._clock_ms(),
            public_key=self.handler.keypair.public_bytes(),
            kem=self.handler.keypair.kem,
            pid=os.getpid(),
            status=status,
            loaded=loaded,
        )

    async def _send_heartbeat(self, status: HolderStatus) -> None:
        try:
            await self._send(self._topics.heartbeats, self.heartbeat(status))
        except KafkaError as exc:
            self._heartbeat_failures += 1
            # A broker outage fails every heartbeat, so only the first failure
            # and then every hundredth is logged.
            if self._heartbeat_failures % 100 == 1:
                log.warning("holder %s could not send a heartbeat (%d failures in a row): %s",
                            self.holder_id, self._heartbeat_failures, exc)
        else:
            if self._heartbeat_failures:
                log.info("holder %s sends heartbeats again after %d failures",
                         self.holder_id, self._heartbeat_failures)
            self._heartbeat_failures = 0

    async def _command_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            record = await consumer.getone()
            try:
                await self._handle_record(record.topic, record.partition, record.offset, record.value)
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the holder.
                log.exception("holder %s failed on the record at %s[%d]@%d", self.holder_id,
                              record.topic, record.partition, record.offset)
                payload = record.value if record.value is not None else b""
                await self._dead_letter(record.topic, record.partition, record.offset, payload,
                                        f"the holder failed on this record: {type(exc).__name__}")

    async def _handle_record(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        payload = value if value is not None else b""
        try:
            command = codec.decode(payload, COMMAND_TYPES)
        except DecodeError as exc:
            await self._dead_letter(topic, partition, offset, payload, str(exc))
            return
        if command.holder_id != self.holder_id:
            reason = f"{command.type_name}.holder_id: expected {self.holder_id!r}, got {command.holder_id!r}"
            await self._dead_letter(topic, partition, offset, payload, reason)
            return
        try:
            if isinstance(command, FetchCommand):
                reply: Message = self._fetch(command)
                reply_topic = self._topics.fragments
            elif isinstance(command, StoreFragment):
                reply = self.handler.store_fragment(command)
                reply_topic = self._topics.acks
            else:
                reply = self.handler.destroy_fragment(command)
                reply_topic = self._topics.acks
            await self._send(reply_topic, reply)
        except KafkaError as exc:
            log.error("holder %s could not send its reply to %s at offset %d: %s",
                      self.holder_id, command.type_name, offset, exc)

    def _fetch(self, command: FetchCommand) -> FragmentResponse:
        try:
            return self.handler.fetch(command)
        except Exception:
            # A bug must not stop the holder or leave the reassembler waiting
            # until its deadline. The traceback names no key or fragment bytes.
            log.exception("fetch %s for %s failed unexpectedly", command.operation_id, command.secret_name)
            return FragmentResponse(
                operation_id=command.operation_id,
                holder_id=self.holder_id,
                fragment_index=command.fragment_index,
                sealed_fragment=b"",
                error=FragmentError.OPEN_FAILED,
            )

    async def _dead_letter(self, topic: str, partition: int, offset: int, payload: bytes, reason: str) -> None:
        log.warning("holder %s sent the record at %s[%d]@%d to the dead-letter topic: %s",
                    self.holder_id, topic, partition, offset, reason)
        letter = DeadLetter(
            source_topic=topic,
            partition=partition,
            offset=offset,
            reason=reason[:2048],
            payload_size=len(payload),
            payload_sha256=hashlib.sha256(payload).digest(),
            at_ms=self._clock_ms(),
        )
        try:
            await self._send(self._topics.deadletter, letter)
        except KafkaError as exc:
            log.error("holder %s could not send a dead letter: %s", self.holder_id, exc)

    async def _send(self, topic: str, message: Message) -> None:
        if self._producer is None:
            raise RuntimeError("the holder's producer is not running")
        await self._producer.send_and_wait(topic, codec.encode(message), key=Topics.partition_key(message))
