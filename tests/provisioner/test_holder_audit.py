"""The provisioner's audit outbox against the real broker and Redis, with a clock the test moves."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from provisioner.holder_audit import HolderAudit
from provisioner.registry import HolderRecord, HolderState
from provisioner_harness import AUDIT_KEY, eventually, read_audit_records
from schemas import codec
from schemas.audit import AuditRecord
from schemas.topics import Topics
from shardbus.audit import ROLE_PARTITIONS, AuditLog
from shardbus.audit.verify import ChainVerifier

pytestmark = pytest.mark.integration

#: 2023-11-14 22:13:20 UTC, in milliseconds.
T0 = 1_700_000_000_000
HOLDER = HolderRecord("holder-0123456789abcdef", HolderState.PER_OPERATION, secret_name="db/pw", secret_version=2,
                      operation_id="0" * 32)


@dataclass
class FakeClock:
    now_ms: int = T0

    def __call__(self) -> int:
        return self.now_ms


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def outbox(kafka_bootstrap: str, kafka_admin, redis: Redis, topic_prefix: str,
                 clock: FakeClock) -> AsyncIterator[HolderAudit]:
    """A started HolderAudit whose audit log times out after 2 s."""
    audit_log = AuditLog(kafka_bootstrap, Topics(topic_prefix), AUDIT_KEY, role="provisioner", timeout_s=2.0)
    audit = HolderAudit(audit_log, redis, topic_prefix, clock_ms=clock)
    await audit.start()
    try:
        yield audit
    finally:
        await audit.close()


async def _records(kafka_bootstrap: str, topic_prefix: str) -> list[AuditRecord]:
    return await read_audit_records(kafka_bootstrap, Topics(topic_prefix), ROLE_PARTITIONS["provisioner"])


async def test_late_record_marked(outbox: HolderAudit, clock: FakeClock, audit_writes, kafka_bootstrap,
                                  topic_prefix) -> None:
    await audit_writes.refuse(Topics(topic_prefix).audit)
    await outbox.enqueue("holder.torn_down", HOLDER, outcome="torn_down", detail="operation completed")
    clock.now_ms += 5_000
    await audit_writes.accept(Topics(topic_prefix).audit)

    await outbox.flush()

    [record] = await _records(kafka_bootstrap, topic_prefix)
    assert (record.action, record.holder_id, record.outcome) == ("holder.torn_down", HOLDER.holder_id, "torn_down")
    assert (record.operation_id, record.secret_name, record.secret_version) == ("0" * 32, "db/pw", 2)
    assert record.reason == "recorded_late"
    assert record.detail == "happened at 2023-11-14T22:13:20.000Z, recorded 5 s later: operation completed"
    assert await outbox.outbox_size() == 0


async def test_record_on_time_not_marked(outbox: HolderAudit, kafka_bootstrap, topic_prefix) -> None:
    await outbox.enqueue("holder.returned", HOLDER, outcome="returned", detail="after lease_released")

    await outbox.flush()

    [record] = await _records(kafka_bootstrap, topic_prefix)
    assert (record.reason, record.detail) == ("", "after lease_released")


async def test_unreadable_entry_skipped(outbox: HolderAudit, redis: Redis, kafka_bootstrap, topic_prefix) -> None:
    await redis.rpush(outbox.outbox_key, b"\xc1 not an outbox entry")
    await outbox.enqueue("holder.failed", HOLDER, outcome="failed", detail="holder process exited")
    invalid = HolderRecord("not a holder id", HolderState.FAILED)
    await outbox.enqueue("holder.failed", invalid, outcome="failed", detail="holder process exited")
    await outbox.enqueue("holder.torn_down", HOLDER, outcome="torn_down", detail="after its failure")

    await outbox.flush()

    records = await _records(kafka_bootstrap, topic_prefix)
    assert [(r.action, r.holder_id) for r in records] == [
        ("holder.failed", HOLDER.holder_id), ("holder.torn_down", HOLDER.holder_id),
    ]
    assert await outbox.outbox_size() == 0


async def test_written_directly_without_redis(kafka_bootstrap, kafka_admin, topic_prefix) -> None:
    # Nothing listens on this port, so every Redis command fails as it would with Redis down.
    unreachable = Redis.from_url(f"redis://127.0.0.1:{_free_port()}/0", socket_connect_timeout=2)
    audit_log = AuditLog(kafka_bootstrap, Topics(topic_prefix), AUDIT_KEY, role="provisioner")
    audit = HolderAudit(audit_log, unreachable, topic_prefix, clock_ms=FakeClock())
    await audit.start()
    try:
        await audit.enqueue("holder.failed", HOLDER, outcome="failed", detail="no heartbeat for 12.0 s")
    finally:
        await audit.close()
        await unreachable.aclose()

    records = await _records(kafka_bootstrap, topic_prefix)
    assert [(r.action, r.detail) for r in records] == [("holder.failed", "no heartbeat for 12.0 s")]
    verifier = ChainVerifier(AUDIT_KEY.verify_key)
    assert list(verifier.feed(ROLE_PARTITIONS["provisioner"], 0, codec.encode(records[0]))) == []


async def test_outbox_of_earlier_provisioner_written(kafka_bootstrap, kafka_admin, redis: Redis, topic_prefix,
                                                     clock: FakeClock) -> None:
    # The earlier provisioner queued a record and stopped before it was written.
    earlier = HolderAudit(AuditLog(kafka_bootstrap, Topics(topic_prefix), AUDIT_KEY, role="provisioner"), redis,
                          topic_prefix, clock_ms=clock)
    await earlier.enqueue("holder.torn_down", HOLDER, outcome="torn_down", detail="orphan")
    clock.now_ms += 60_000

    later = HolderAudit(AuditLog(kafka_bootstrap, Topics(topic_prefix), AUDIT_KEY, role="provisioner"), redis,
                        topic_prefix, clock_ms=clock)
    await later.start()
    try:
        await eventually(lambda: _outbox_empty(later), "the new provisioner writes the outbox")
    finally:
        await later.close()

    [record] = await _records(kafka_bootstrap, topic_prefix)
    assert (record.action, record.reason) == ("holder.torn_down", "recorded_late")
    assert record.detail.endswith("recorded 60 s later: orphan")


async def _outbox_empty(audit: HolderAudit) -> bool:
    return await audit.outbox_size() == 0
