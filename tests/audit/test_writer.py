"""AuditLog against the real broker: chains, restarts, partitions, topic settings and failing closed."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from audit_support import FakeClock, build_chain, fixed_key, op_id
from schemas import codec
from schemas.audit import AuditRecord
from schemas.topics import Topics
from shardbus.audit import ROLE_PARTITIONS, AuditLog, AuditUnavailable
from shardbus.audit.chain import GENESIS_HASH, record_hash
from shardbus.audit.topic import AUDIT_PARTITIONS
from shardbus.audit.verify import ChainVerifier
from shardbus.audit.writer import PARTITION_ENV
from shardbus.config import Settings
from shardbus.deployment import init_deployment

pytestmark = pytest.mark.integration

KEY = fixed_key(7)
# Bound on any single wait in these tests; reached only when something hangs.
WAIT_S = 60.0


async def read_partition(bootstrap: str, topic: str, partition: int) -> list[tuple[int, bytes]]:
    """Return (offset, value) of every record on one partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, begin)
        records = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=500)
            records.extend((m.offset, m.value) for m in batch.get(tp, []))
        return records
    finally:
        await consumer.stop()


def free_port() -> int:
    """Return a loopback port that nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_records_form_verified_chain(kafka_bootstrap, topic_prefix, kafka_admin):
    topics = Topics(topic_prefix)
    clock = FakeClock()
    async with AuditLog(kafka_bootstrap, topics, KEY, role="authorizer", clock=clock) as audit:
        first = await audit.record("request.accepted", operation_id=op_id(1), app_id="billing", outcome="accepted")
        clock.advance(5)
        second = await audit.record("fetch.sent", operation_id=op_id(1), holder_id="h1", detail="fragment 1")
    assert (first.sequence, second.sequence) == (0, 1)
    assert first.prev_hash == GENESIS_HASH
    assert first.at_ms == clock.now_ms - 5

    stored = await read_partition(kafka_bootstrap, topics.audit, ROLE_PARTITIONS["authorizer"])
    assert [offset for offset, _ in stored] == [0, 1]
    assert codec.decode(stored[0][1], AuditRecord) == first
    assert second.prev_hash == record_hash(stored[0][1])
    verifier = ChainVerifier(KEY.verify_key)
    breaks = [b for offset, value in stored for b in verifier.feed(ROLE_PARTITIONS["authorizer"], offset, value)]
    assert breaks == []


async def test_restart_continues_chain(kafka_bootstrap, topic_prefix, kafka_admin):
    topics = Topics(topic_prefix)
    async with AuditLog(kafka_bootstrap, topics, KEY, role="reassembler") as audit:
        for n in range(3):
            await audit.record("fragment.received", operation_id=op_id(n), holder_id="h1")
    async with AuditLog(kafka_bootstrap, topics, KEY, role="reassembler") as audit:
        assert audit.next_sequence == 3
        after = await audit.record("lease.issued", operation_id=op_id(2))
    stored = await read_partition(kafka_bootstrap, topics.audit, ROLE_PARTITIONS["reassembler"])
    assert after.sequence == 3
    assert after.prev_hash == record_hash(stored[2][1])


async def test_restart_skips_invalid_tail(kafka_bootstrap, topic_prefix, kafka_admin):
    topics = Topics(topic_prefix)
    partition = ROLE_PARTITIONS["provisioner"]
    async with AuditLog(kafka_bootstrap, topics, KEY, role="provisioner") as audit:
        await audit.record("holder.provisioned", holder_id="h1")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.audit, b"junk", partition=partition)
        await producer.send_and_wait(topics.audit, build_chain(fixed_key(9), partition, 1)[0], partition=partition)
    finally:
        await producer.stop()
    async with AuditLog(kafka_bootstrap, topics, KEY, role="provisioner") as audit:
        assert audit.next_sequence == 1
        await audit.record("holder.torn_down", holder_id="h1")
    stored = await read_partition(kafka_bootstrap, topics.audit, partition)
    verifier = ChainVerifier(KEY.verify_key)
    kinds = [str(b.kind) for offset, value in stored for b in verifier.feed(partition, offset, value)]
    assert kinds == ["undecodable", "bad_signature"]


async def test_concurrent_records_keep_call_order(kafka_bootstrap, topic_prefix, kafka_admin):
    topics = Topics(topic_prefix)
    async with AuditLog(kafka_bootstrap, topics, KEY, role="authorizer") as audit:
        many = await audit.record_many(
            dict(action="fetch.sent", operation_id=op_id(5), holder_id=f"h{i}") for i in range(50)
        )
    assert [r.sequence for r in many] == list(range(50))
    stored = await read_partition(kafka_bootstrap, topics.audit, ROLE_PARTITIONS["authorizer"])
    assert [codec.decode(v, AuditRecord).holder_id for _, v in stored] == [f"h{i}" for i in range(50)]


async def test_topic_created_with_unlimited_retention(kafka_bootstrap, topic_prefix, kafka_admin):
    topics = Topics(topic_prefix)
    async with AuditLog(kafka_bootstrap, topics, KEY, role="controller") as audit:
        await audit.record("secret.stored", secret_name="db/password", secret_version=1)
    described = (await kafka_admin.admin.describe_topics([topics.audit]))[0]
    assert len(described["partitions"]) == AUDIT_PARTITIONS
    resource = ConfigResource(ConfigResourceType.TOPIC, topics.audit, configs={"retention.ms": None})
    [response] = await kafka_admin.admin.describe_configs([resource])
    entries = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert entries["retention.ms"] == "-1"


async def test_partition_override_grows_topic(kafka_bootstrap, topic_prefix, kafka_admin, tmp_path):
    await kafka_admin.create(Topics(topic_prefix).audit, partitions=1)
    init_deployment(tmp_path)
    settings = Settings(kafka_bootstrap, "redis://unused", topic_prefix, tmp_path)
    audit = AuditLog.from_settings(settings, "authorizer", environ={PARTITION_ENV: "9"})
    assert audit.partition == 9
    async with audit:
        record = await audit.record("request.accepted", operation_id=op_id(6))
    stored = await read_partition(kafka_bootstrap, Topics(topic_prefix).audit, 9)
    assert codec.decode(stored[0][1], AuditRecord) == record


async def test_unreachable_broker_raises_audit_unavailable(topic_prefix):
    audit = AuditLog(f"127.0.0.1:{free_port()}", Topics(topic_prefix), KEY, role="authorizer", timeout_s=2.0)
    with pytest.raises(AuditUnavailable) as caught:
        await asyncio.wait_for(audit.record("request.accepted", operation_id=op_id(7)), WAIT_S)
    assert caught.value.retriable
    assert "cannot reach Kafka" in str(caught.value)
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(audit.start(), WAIT_S)


async def test_chain_survives_unacknowledged_record(kafka_bootstrap, topic_prefix, kafka_admin):
    topics = Topics(topic_prefix)
    async with AuditLog(kafka_bootstrap, topics, KEY, role="authorizer") as audit:
        await audit.record("request.accepted", operation_id=op_id(8))
        # No broker acknowledges within a microsecond, so this record fails
        # closed; it may still reach the topic when the producer is stopped.
        audit.timeout_s = 1e-6
        with pytest.raises(AuditUnavailable):
            await audit.record("fetch.sent", operation_id=op_id(8), holder_id="h1")
        assert audit.next_sequence is None
        audit.timeout_s = 10.0
        after = await audit.record("fetch.sent", operation_id=op_id(8), holder_id="h2")
    stored = await read_partition(kafka_bootstrap, topics.audit, ROLE_PARTITIONS["authorizer"])
    assert after.sequence == len(stored) - 1
    verifier = ChainVerifier(KEY.verify_key)
    assert [b for offset, value in stored for b in verifier.feed(ROLE_PARTITIONS["authorizer"], offset, value)] == []


async def test_bytes_detail_is_rejected(kafka_bootstrap, topic_prefix, kafka_admin):
    async with AuditLog(kafka_bootstrap, Topics(topic_prefix), KEY, role="authorizer") as audit:
        with pytest.raises(TypeError, match="detail must be a str"):
            await audit.record("lease.issued", detail=b"\x01\x02")
        with pytest.raises(ValueError):
            await audit.record("Not An Action")
        with pytest.raises(ValueError):
            await audit.record_many([dict(action="fetch.sent"), dict(action="fetch.sent", holder_id="bad id")])
        with pytest.raises(TypeError, match="needs 'action'"):
            await audit.record_many([dict(holder_id="h1")])
        assert audit.next_sequence == 0
    assert await read_partition(kafka_bootstrap, Topics(topic_prefix).audit, ROLE_PARTITIONS["authorizer"]) == []


def test_unknown_role_needs_partition():
    with pytest.raises(ValueError, match="role must be one of"):
        AuditLog("127.0.0.1:1", Topics("p"), KEY, role="holder")
    assert AuditLog("127.0.0.1:1", Topics("p"), KEY, role="holder", partition=6).partition == 6
