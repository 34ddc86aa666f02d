"""Ask the provisioner for holders: the client side of ``{p}.provisioner``.

The CLI requests pooled holders when it stores a secret, and the authorizer
requests per-operation holders when it serves a request. Both send a ProvisionRequest
and wait for the ProvisionReply with the same request id on a reply topic.
Several callers may share one reply topic, because each picks out its own
request ids.

    holders = await request_holders(bootstrap, Topics("shardbus"), count=3, lifecycle="pooled")
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import codec
from schemas.holders import HolderLifecycle, ProvisionReply, ProvisionRequest
from schemas.topics import Topics
from shardbus.audit import AuditUnavailable
from shardbus.errors import DecodeError, ServiceUnavailable
from shardbus.kafka import RELIABLE_PRODUCER, client_options, ensure_topics, topic_partitions

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0

#: The code that starts a ProvisionReply's error when the provisioner could
#: not write the audit record of the provision, and so handed out no holder.
AUDIT_UNAVAILABLE_ERROR = "audit_unavailable"


def is_audit_unavailable(error: str) -> bool:
    """Return whether a ProvisionReply's `error` reports that the provisioner's audit log was unavailable."""
    return error.startswith(AUDIT_UNAVAILABLE_ERROR + ":")


class GrantedHolder(NamedTuple):
    """A holder the provisioner handed out: its id and HPKE public key."""

    holder_id: str
    public_key: bytes
    kem: str


class ProvisionerClient:
    """Sends ProvisionRequests and matches the replies; use it as an async context manager.

    One client may have many requests in flight. `reply_topic` is created if
    it does not exist, and read from its end, so start the client before
    sending requests.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        *,
        reply_topic: str | None = None,
        make_request_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self.reply_topic = reply_topic or topics.provisioner_replies
        self._make_request_id = make_request_id
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._pending: dict[str, asyncio.Future[ProvisionReply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProvisionerClient:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect to Kafka and start reading the reply topic from its end."""
        await ensure_topics(self._bootstrap, [self.reply_topic, self._topics.provisioner])
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **RELIABLE_PRODUCER, **client_options())
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
                                    **client_options())
        try:
            await producer.start()
            await consumer.start()
            partitions = await topic_partitions(consumer, [self.reply_topic])
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for partition in partitions:
                await consumer.position(partition)
        except KafkaError as exc:
            await consumer.stop()
            await producer.stop()
            raise ServiceUnavailable(f"cannot reach Kafka at {self._bootstrap}: {exc}") from None
        self._producer, self._consumer = producer, consumer
        self._reader = asyncio.create_task(self._read_replies(), name="provision-replies")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def request(
        self,
        count: int,
        lifecycle: str | HolderLifecycle,
        *,
        operation_id: str = "",
        secret_name: str = "",
        secret_version: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> list[GrantedHolder]:
        """Ask for `count` holders and return them once the provisioner replies.

        Raises ServiceUnavailable when no reply arrives within `timeout_s`
        or the provisioner replies with an error, AuditUnavailable (a
        ServiceUnavailable) when that error is that the provisioner's audit
        log was unavailable, and ValueError for an invalid request (for
        example per_operation without an operation id).
        """
        if self._producer is None:
            raise RuntimeError("start the ProvisionerClient before sending requests")
        request = ProvisionRequest(
            request_id=self._make_request_id(),
            count=count,
            lifecycle=lifecycle,
            operation_id=operation_id,
            secret_name=secret_name,
            secret_version=secret_version,
            reply_topic=self.reply_topic,
        )
        future: asyncio.Future[ProvisionReply] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        try:
            try:
                await self._producer.send_and_wait(
                    self._topics.provisioner, codec.encode(request), key=Topics.partition_key(request)
                )
            except KafkaError as exc:
                raise ServiceUnavailable(f"cannot send the provision request to Kafka: {exc}") from None
            try:
                reply = await asyncio.wait_for(future, timeout_s)
            except asyncio.TimeoutError:
                raise ServiceUnavailable(
                    f"the provisioner did not reply to request {request.request_id} for {count} holders "
                    f"within {timeout_s:g} s; check that `python -m provisioner` runs for prefix "
                    f"{self._topics.prefix!r}"
                ) from None
        finally:
            self._pending.pop(request.request_id, None)
        if reply.error:
            failure = AuditUnavailable if is_audit_unavailable(reply.error) else ServiceUnavailable
            raise failure(f"the provisioner could not provide {count} holders: {reply.error}")
        return [GrantedHolder(h.holder_id, h.public_key, h.kem.value) for h in reply.holders]

    async def _read_replies(self) -> None:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("the reply consumer is not running")
        async for record in consumer:
            try:
                reply = codec.decode(record.value or b"", ProvisionReply)
            except DecodeError as exc:
                log.warning("ignored an invalid record at %s[%d]@%d: %s",
                            record.topic, record.partition, record.offset, exc)
                continue
            future = self._pending.get(reply.request_id)
            if future is not None and not future.done():
                future.set_result(reply)


async def request_holders(
    bootstrap: str,
    topics: Topics,
    count: int,
    lifecycle: str | HolderLifecycle,
    *,
    operation_id: str = "",
    secret_name: str = "",
    secret_version: int = 0,
    reply_topic: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[GrantedHolder]:
    """Ask the provisioner for `count` holders with a client of its own.

    A caller that asks often should keep a ProvisionerClient open instead,
    which saves connecting to Kafka for every request.
    """
    async with ProvisionerClient(bootstrap, topics, reply_topic=reply_topic) as client:
        return await client.request(
            count, lifecycle, operation_id=operation_id, secret_name=secret_name,
            secret_version=secret_version, timeout_s=timeout_s,
        )
