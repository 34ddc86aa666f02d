"""Helpers for the stream service tests: a deployment folder, secrets, holders, readers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from provisioner.registry import HolderRegistry, HolderState
from schemas import codec
from schemas.base import Message
from schemas.messages import OperationRequest
from schemas.topics import Topics
from shardbus import deployment
from shardbus.config import Settings
from shardbus.crypto import envelope, signing
from shardbus.crypto.keys import MasterKey
from shardbus.kafka import ensure_topics
from shardbus.sharing.fragmentation import FragmentSet, Policy, split_secret
from shardbus.store.mapping import MappingTable, Placement, SecretRecord, VersionRecord
from streams.app import DEFAULT_PARTITIONS, LARGE_RECORD_CONFIG

# Upper bound for anything the tests wait for: a faust app joins its group
# in about 2 s on the development stack, so 30 s only ends a test that hangs.
WAIT_S = 30.0


@dataclass
class Deployment:
    """A deployment folder made by the CLI's own functions, and what it holds."""

    settings: Settings
    redis_prefix: str
    master_key: MasterKey
    reassembler: envelope.EnvelopeKeyPair = field(repr=False)
    signing_keys: dict[str, signing.SigningKey] = field(repr=False)

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.topic_prefix)


def make_deployment(
    home: Path, *, kafka_bootstrap: str, redis_url: str, topic_prefix: str, redis_prefix: str,
    grants: dict[str, list[str]],
) -> Deployment:
    """Create a deployment folder with one registered app per entry of `grants`."""
    deployment.init_deployment(home)
    keys = {}
    for app_id, patterns in grants.items():
        keys[app_id] = deployment.load_signing_key(deployment.add_app(home, app_id, patterns, lease_ttl_s=60))
    settings = Settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=topic_prefix, home=home)
    return Deployment(
        settings=settings,
        redis_prefix=redis_prefix.rstrip(":"),
        master_key=MasterKey.load(settings.master_key_path),
        reassembler=deployment.load_reassembler_key(settings.reassembler_key_path),
        signing_keys=keys,
    )


def signed_request(
    app_id: str,
    key: signing.SigningKey,
    secret_name: str,
    *,
    issued_at_ms: int | None = None,
    operation_id: str | None = None,
) -> tuple[OperationRequest, envelope.EnvelopeKeyPair]:
    """Return a request signed as the client SDK signs it, and its reply key pair."""
    reply_keys = envelope.EnvelopeKeyPair.generate()
    unsigned = OperationRequest(
        operation_id=operation_id or uuid.uuid4().hex,
        app_id=app_id,
        secret_name=secret_name,
        operation="lease",
        reply_public_key=reply_keys.public_bytes(),
        reply_kem="x25519",
        issued_at_ms=int(time.time() * 1000) if issued_at_ms is None else issued_at_ms,
        signature=bytes(64),
    )
    return replace(unsigned, signature=signing.sign(key, unsigned.signing_bytes())), reply_keys


@dataclass
class StoredSecret:
    """A secret stored in the mapping table, with its fragments kept for synthetic holders."""

    name: str
    secret: bytes = field(repr=False)
    fragments: FragmentSet = field(repr=False)
    version: VersionRecord
    holder_keys: dict[str, envelope.EnvelopeKeyPair] = field(repr=False)


async def store_secret(
    redis: Redis, dep: Deployment, name: str, secret: bytes, holder_ids: list[str], *, threshold: int,
    lifecycle: str = "pooled",
) -> StoredSecret:
    """Split `secret` and store its mapping record, fragment i placed on holder_ids[i-1]."""
    master = dep.master_key
    fragments = split_secret(
        secret, Policy(fragments=len(holder_ids), threshold=threshold),
        secret_id=name, version=1, verify_key=master.verify_key(name, 1),
    )
    version = VersionRecord(
        version=1,
        fragments=len(holder_ids),
        threshold=threshold,
        lifecycle=lifecycle,
        key_version=master.version,
        created_ms=int(time.time() * 1000),
        placements=tuple(Placement(index=i, holder_id=h) for i, h in enumerate(holder_ids, start=1)),
        commitments=dict(fragments.commitments),
        digest=fragments.digest,
    )
    await MappingTable(redis, master, dep.redis_prefix).put(SecretRecord(name=name, current=1, versions={1: version}))
    holder_keys = {holder_id: envelope.EnvelopeKeyPair.generate() for holder_id in holder_ids}
    return StoredSecret(name, secret, fragments, version, holder_keys)


async def register_holders(redis: Redis, dep: Deployment, stored: StoredSecret, *, heartbeat_age_ms: int = 0) -> None:
    """Enter each holder of `stored` in the holder registry with a heartbeat `heartbeat_age_ms` old."""
    registry = HolderRegistry(redis, dep.redis_prefix)
    now_ms = int(time.time() * 1000)
    for placement in stored.version.placements:
        keys = stored.holder_keys[placement.holder_id]
        await registry.set_state(
            placement.holder_id, HolderState.ASSIGNED,
            public_key=keys.public_bytes(), kem=keys.kem, pid=1,
            secret_name=stored.name, secret_version=1, fragment_index=placement.index,
            last_heartbeat_ms=now_ms - heartbeat_age_ms,
        )


async def create_topics(dep: Deployment, *extra: str) -> None:
    """Create the shared topics with the partition counts the services use, and `extra` topics."""
    topics = dep.topics
    bootstrap = dep.settings.kafka_bootstrap
    plain = [topics.requests, topics.provisioner, topics.lifecycle, topics.audit, topics.deadletter,
             f"{topics.prefix}.authorizer.provisioned"]
    await ensure_topics(bootstrap, plain, partitions=DEFAULT_PARTITIONS)
    await ensure_topics(bootstrap, [topics.plans, topics.fragments], partitions=DEFAULT_PARTITIONS,
                        config=LARGE_RECORD_CONFIG)
    replies = [topics.replies(app_id) for app_id in dep.signing_keys]
    await ensure_topics(bootstrap, [*replies, *extra], config=LARGE_RECORD_CONFIG)


class Producer:
    """Sends messages and raw bytes the way the services' peers do."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2**21)

    async def __aenter__(self) -> Producer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def send(self, topic: str, message: Message) -> None:
        await self._producer.send_and_wait(topic, codec.encode(message), key=Topics.partition_key(message))

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        await self._producer.send_and_wait(topic, value, key=key)


class TopicReader:
    """Reads one topic from its beginning and decodes every record."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="earliest", max_partition_fetch_bytes=2**21)
        self.records: list[tuple[bytes, Message]] = []

    async def start(self) -> None:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self.topic)
        deadline = time.monotonic() + WAIT_S
        while not partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic} has no partitions")
            await self._consumer._client.force_metadata_update()  # noqa: SLF001
            partitions = self._consumer.partitions_for_topic(self.topic)
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_beginning(*assigned)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def wait_for(
        self, condition: Callable[[list[Message]], bool], *, what: str, timeout_s: float = WAIT_S
    ) -> list[Message]:
        """Read until `condition` holds for the messages read so far; return them."""
        deadline = time.monotonic() + timeout_s
        while not condition([m for _, m in self.records]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what} on {self.topic}; read {[m for _, m in self.records]}")
            batches = await self._consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for record in batch:
                    self.records.append((record.value, codec.decode(record.value)))
        return [m for _, m in self.records]

    async def wait_for_type(self, kind: type[Message], count: int = 1, **matching: object) -> list[Message]:
        """Read until `count` messages of `kind` whose fields equal `matching` arrived; return those."""
        def found(messages: list[Message]) -> list[Message]:
            return [
                m for m in messages
                if isinstance(m, kind) and all(getattr(m, k) == v for k, v in matching.items())
            ]
        await self.wait_for(lambda messages: len(found(messages)) >= count, what=f"{count} {kind.__name__} {matching}")
        return found([m for _, m in self.records])

    async def read_to_end(self) -> list[Message]:
        """Read every record written before this call; return all messages read so far."""
        assigned = list(self._consumer.assignment())
        ends = await self._consumer.end_offsets(assigned)
        deadline = time.monotonic() + WAIT_S
        while True:
            positions = [await self._consumer.position(tp) for tp in assigned]
            if all(position >= ends[tp] for position, tp in zip(positions, assigned)):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out reading {self.topic} to its end")
            batches = await self._consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for record in batch:
                    self.records.append((record.value, codec.decode(record.value)))
        return [m for _, m in self.records]


@contextlib.asynccontextmanager
async def readers(bootstrap: str, *topics: str) -> AsyncIterator[list[TopicReader]]:
    started = []
    try:
        for topic in topics:
            reader = TopicReader(bootstrap, topic)
            await reader.start()
            started.append(reader)
        yield started
    finally:
        for reader in started:
            await reader.stop()


@contextlib.asynccontextmanager
async def running(serve: Callable[[asyncio.Event], Awaitable[None]]) -> AsyncIterator[None]:
    """Run a service's `serve(stopped)` as a task for the duration of the block."""
    stopped = asyncio.Event()
    task = asyncio.create_task(serve(stopped))
    try:
        yield
    finally:
        stopped.set()
        await asyncio.wait_for(task, WAIT_S)
