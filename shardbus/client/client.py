"""Request secrets over Kafka and receive them as short leases.

A client publishes a signed OperationRequest and waits for the one final
reply for its operation id on the application's reply topic: a LeaseReply
sealed to a fresh HPKE key made for that request, or an ErrorReply. When the
application is done, ``release()`` wipes the secret and publishes a signed
ReleaseRequest, which the authorizer verifies before it ends the lease.

Several client instances of one application may share the reply topic: each
reads every reply and ignores the operation ids it did not send.

The reply topic is untrusted input like any other topic. A record that does
not decode as a reply (garbage, a tombstone, another message type) is
logged and counted in ``rejected_replies``, and the reader goes on with the
next record. An application may not write to the dead-letter topic, so the
client cannot report it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from schemas import codec
from schemas.messages import ErrorReply, LeaseReply, OperationRequest, ReleaseRequest
from schemas.sealed import LeasePayload, lease_info
from schemas.topics import Topics
from shardbus.crypto import envelope, signing
from shardbus.crypto.wipe import wipe
from shardbus.errors import DecodeError, Denied, IntegrityError, ServiceUnavailable
from shardbus.kafka import client_options

log = logging.getLogger(__name__)

# Pause after a failed read of the reply topic before the next attempt.
_READ_RETRY_S = 1.0


@dataclass
class Lease:
    """A secret on loan: `secret` is a buffer that `release()` zeroes."""

    operation_id: str
    secret_name: str
    secret: bytearray = field(repr=False)
    expires_at_ms: int

    def release(self) -> None:
        wipe(self.secret)


class ShardbusClient:
    """An application's connection to shardbus.

    Use it as an async context manager, then call `lease()`::

        async with ShardbusClient(bootstrap, "billing", signing_key) as client:
            async with client.lease("db/password") as secret:
                connect(password=bytes(secret))
    """

    def __init__(
        self,
        bootstrap: str,
        app_id: str,
        signing_key: signing.SigningKey,
        *,
        topics: Topics | None = None,
        kem: str = "x25519",
        timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
        kafka_options: dict[str, Any] | None = None,
    ) -> None:
        """Describe the client; `start()` connects.

        `kafka_options` are the Kafka security settings, by default
        `shardbus.kafka.client_options()` of this process: mutual TLS when
        the SHARDBUS_KAFKA_TLS_* variables name the app's certificate.
        """
        self._bootstrap = bootstrap
        self._kafka_options = client_options() if kafka_options is None else kafka_options
        self._app_id = app_id
        self._signing_key = signing_key
        self._topics = topics or Topics()
        self._kem = kem
        self._timeout_s = timeout_s
        self._clock = clock
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[LeaseReply | ErrorReply]] = {}
        #: Records on the reply topic that were not a valid reply.
        self.rejected_replies = 0

    @classmethod
    def from_env(cls, app_id: str, *, key_path: str | None = None, **options: object) -> ShardbusClient:
        """Build a client from the SHARDBUS_* settings, as the CLI does.

        The signing key is read from `key_path`, or from
        ``$SHARDBUS_HOME/apps/<app_id>.key`` where `shardbus app add` writes it.
        """
        from pathlib import Path

        from shardbus.config import Settings
        from shardbus.deployment import load_signing_key

        settings = Settings.from_env()
        path = Path(key_path) if key_path else settings.home / "apps" / f"{app_id}.key"
        return cls(
            settings.kafka_bootstrap, app_id, load_signing_key(path),
            topics=Topics(settings.topic_prefix), **options,  # type: ignore[arg-type]
        )

    async def __aenter__(self) -> ShardbusClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect, and position the reply reader at the end of the reply topic."""
        reply_topic = self._topics.replies(self._app_id)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True, **self._kafka_options
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, auto_offset_reset="latest",
            **self._kafka_options,
        )
        try:
            await self._producer.start()
            await self._consumer.start()
            partitions = await self._wait_for_partitions(reply_topic)
            self._consumer.assign(partitions)
            # Replies sent before this point belong to earlier clients; waiting
            # for the end offsets here means no reply to us can be skipped.
            await self._consumer.seek_to_end(*partitions)
            for partition in partitions:
                await self._consumer.position(partition)
        except Exception:
            await self.stop()
            raise
        self._reader = asyncio.create_task(self._read_replies(), name=f"shardbus-replies-{self._app_id}")

    async def _wait_for_partitions(self, topic: str) -> list[TopicPartition]:
        assert self._consumer is not None
        deadline = time.monotonic() + self._timeout_s
        while True:
            partitions = self._consumer.partitions_for_topic(topic)
            if partitions:
                return [TopicPartition(topic, p) for p in sorted(partitions)]
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"reply topic {topic} does not exist; register the app with "
                    f"'shardbus app add {self._app_id} --grant PATTERN', and check that "
                    f"SHARDBUS_TOPIC_PREFIX matches the deployment (this client uses {self._topics.prefix!r})"
                )
            await self._consumer._client.force_metadata_update()  # noqa: SLF001
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ServiceUnavailable("client stopped before the reply arrived"))
        self._pending.clear()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def request(self, secret_name: str, operation: str = "lease") -> Lease:
        """Send one signed request and wait for its final reply.

        Raises Denied (with the reason code) for an ErrorReply, and
        ServiceUnavailable when no reply arrives within the timeout.
        """
        if self._producer is None:
            raise RuntimeError("call start() or use 'async with' before request()")
        reply_keys = envelope.EnvelopeKeyPair.generate(self._kem)
        operation_id = uuid.uuid4().hex
        unsigned = OperationRequest(
            operation_id=operation_id,
            app_id=self._app_id,
            secret_name=secret_name,
            operation=operation,
            reply_public_key=reply_keys.public_bytes(),
            reply_kem=self._kem,
            issued_at_ms=int(self._clock() * 1000),
            signature=b"",
        )
        request = _with_signature(unsigned, signing.sign(self._signing_key, unsigned.signing_bytes()))

        future: asyncio.Future[LeaseReply | ErrorReply] = asyncio.get_running_loop().create_future()
        self._pending[operation_id] = future
        try:
            await self._producer.send_and_wait(
                self._topics.requests, codec.encode(request), key=Topics.partition_key(request)
            )
            try:
                reply = await asyncio.wait_for(future, self._timeout_s)
            except asyncio.TimeoutError:
                raise ServiceUnavailable(
                    f"no reply for operation {operation_id} on secret {secret_name!r} "
                    f"within {self._timeout_s:g} s; check that the authorizer and reassembler run"
                ) from None
        finally:
            self._pending.pop(operation_id, None)

        if isinstance(reply, ErrorReply):
            holders = f" (holders: {', '.join(reply.holders)})" if reply.holders else ""
            raise Denied(str(reply.reason), f"{reply.detail}{holders}")
        plaintext = envelope.open_(
            reply_keys, reply.sealed_lease, info=lease_info(operation_id, self._app_id)
        )
        payload = LeasePayload.from_bytes(plaintext)
        if payload.operation_id != operation_id:
            raise IntegrityError()
        return Lease(operation_id, secret_name, bytearray(payload.secret), payload.expires_at_ms)

    @contextlib.asynccontextmanager
    async def lease(self, secret_name: str) -> AsyncIterator[bytearray]:
        """Lease a secret for the block; its buffer is zeroed when the block ends."""
        granted = await self.request(secret_name)
        try:
            yield granted.secret
        finally:
            await self.release(granted)

    async def release(self, granted: Lease) -> None:
        """Zero the lease's buffer, then send a signed ReleaseRequest so that shardbus ends the lease.

        A release that cannot be sent is logged, not raised, because the
        secret is wiped either way; the lease then ends at its expiry.
        """
        granted.release()
        unsigned = ReleaseRequest(
            operation_id=granted.operation_id,
            app_id=self._app_id,
            released_at_ms=int(self._clock() * 1000),
            signature=b"",
        )
        release = replace(unsigned, signature=signing.sign(self._signing_key, unsigned.signing_bytes()))
        try:
            if self._producer is None:
                raise ServiceUnavailable("the client is stopped")
            # The operation id keys it, so it follows its request on the same partition.
            await self._producer.send_and_wait(
                self._topics.requests, codec.encode(release), key=Topics.partition_key(release)
            )
        except Exception as exc:  # noqa: BLE001 - the secret is already wiped; say so and go on.
            log.warning("could not send the release of operation %s; the lease ends at its expiry: %s",
                        granted.operation_id, exc)

    async def _read_replies(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                record = await self._consumer.getone()
            except KafkaError as exc:
                # getone raises an error such as a denied read once per fetch;
                # the next call fetches again.
                log.error("reading the reply topic of app %s failed: %s; retrying", self._app_id, exc)
                await asyncio.sleep(_READ_RETRY_S)
                continue
            self._handle_reply(record.topic, record.partition, record.offset, record.value)

    def _handle_reply(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        try:
            reply = codec.decode(value if value is not None else b"", (LeaseReply, ErrorReply))
        except DecodeError as exc:
            self.rejected_replies += 1
            # Count every rejected record but log only the first and then
            # every hundredth, so a flood of garbage does not flood the log.
            if self.rejected_replies % 100 == 1:
                log.warning("ignored a malformed reply at %s[%d]@%d (%d so far): %s",
                            topic, partition, offset, self.rejected_replies, exc)
            return
        future = self._pending.get(reply.operation_id)
        if future is not None and not future.done():
            future.set_result(reply)


def _with_signature(request: OperationRequest, signature: bytes) -> OperationRequest:
    return replace(request, signature=signature)
