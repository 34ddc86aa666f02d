"""The holder registry against a real Redis server."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from provisioner.registry import HolderRegistry, HolderState

pytestmark = pytest.mark.integration

OPERATION = "ab" * 16


class Clock:
    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


async def test_add_then_get_warming(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix, clock_ms=Clock())
    await registry.add("h1", pid=42, detail="pid 42, running")

    record = await registry.get("h1")

    assert record is not None
    assert record.state is HolderState.WARMING
    assert record.pid == 42
    assert record.updated_ms == 1_000_000
    assert await registry.ids_in_state(HolderState.WARMING) == ["h1"]


async def test_get_unknown_is_none(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix)

    assert await registry.get("nobody") is None


async def test_set_state_moves_between_sets(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix)
    await registry.add("h1")
    await registry.set_state("h1", HolderState.POOL, public_key=b"k" * 32, kem="x25519")
    await registry.set_state("h1", HolderState.ASSIGNED, secret_name="db/pw", secret_version=2, lifecycle="pooled")

    record = await registry.get("h1")

    assert record is not None
    assert record.state is HolderState.ASSIGNED
    assert record.public_key == b"k" * 32
    assert record.kem == "x25519"
    assert (record.secret_name, record.secret_version, record.lifecycle) == ("db/pw", 2, "pooled")
    assert await registry.ids_in_state(HolderState.WARMING) == []
    assert await registry.ids_in_state(HolderState.POOL) == []
    assert await registry.ids_in_state(HolderState.ASSIGNED) == ["h1"]


async def test_set_state_rejects_unknown_field(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix)

    with pytest.raises(ValueError, match="no field 'colour'"):
        await registry.set_state("h1", HolderState.POOL, colour="blue")


async def test_final_state_expires(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix, retention_s=600)
    await registry.add("h1")
    await registry.set_state("h1", HolderState.TORN_DOWN, detail="done")

    ttl = await redis.ttl(f"{topic_prefix}:holder:h1")

    assert 0 < ttl <= 600


async def test_holders_of_secret(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix)
    await registry.set_state("a", HolderState.ASSIGNED, secret_name="db/pw", secret_version=1, fragment_index=2)
    await registry.set_state("b", HolderState.ASSIGNED, secret_name="db/pw", secret_version=1, fragment_index=1)
    await registry.set_state("c", HolderState.ASSIGNED, secret_name="db/pw", secret_version=2, fragment_index=1)
    await registry.set_state("d", HolderState.ASSIGNED, secret_name="other", secret_version=1, fragment_index=1)
    await registry.set_state("e", HolderState.FAILED, secret_name="db/pw", secret_version=1, fragment_index=3)

    every_version = await registry.holders_of_secret("db/pw")
    version_one = await registry.holders_of_secret("db/pw", 1)

    assert [r.holder_id for r in every_version] == ["b", "a", "c"]
    assert [r.holder_id for r in version_one] == ["b", "a"]


async def test_holders_of_operation(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix)
    await registry.set_state("a", HolderState.PER_OPERATION, operation_id=OPERATION)
    await registry.set_state("b", HolderState.PER_OPERATION, operation_id=OPERATION)

    assert await registry.holders_of_operation(OPERATION) == ["a", "b"]

    await registry.forget_operation(OPERATION)
    assert await registry.holders_of_operation(OPERATION) == []


async def test_heartbeat_records_index(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix)
    await registry.set_state("h1", HolderState.ASSIGNED, secret_name="db/pw", secret_version=1)

    await registry.record_heartbeat("h1", 5_000, [("db/pw", 1, 4), ("other", 1, 2)])
    record = await registry.get("h1")

    assert record is not None
    assert record.last_heartbeat_ms == 5_000
    assert record.fragment_index == 4


async def test_heartbeat_ignored_after_teardown(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix)
    await registry.set_state("h1", HolderState.TORN_DOWN)

    await registry.record_heartbeat("h1", 5_000, [])
    record = await registry.get("h1")

    assert record is not None
    assert record.last_heartbeat_ms == 0


async def test_alive_within_bound(redis: Redis, topic_prefix: str) -> None:
    clock = Clock(10_000)
    registry = HolderRegistry(redis, topic_prefix, clock_ms=clock)
    await registry.set_state("fresh", HolderState.POOL)
    await registry.set_state("stale", HolderState.POOL)
    await registry.set_state("silent", HolderState.POOL)
    await registry.set_state("failed", HolderState.FAILED)
    await registry.record_heartbeat("fresh", 9_000, [])
    await registry.record_heartbeat("stale", 4_000, [])

    alive = await registry.alive(["fresh", "stale", "silent", "failed", "unknown"], max_age_ms=2_000)

    assert alive == ["fresh"]


async def test_expired_final_records_leave_set(redis: Redis, topic_prefix: str) -> None:
    registry = HolderRegistry(redis, topic_prefix)
    await registry.set_state("gone", HolderState.TORN_DOWN)
    await registry.set_state("kept", HolderState.TORN_DOWN)
    await redis.delete(f"{topic_prefix}:holder:gone")  # As its expiry would.

    assert await registry.ids_in_state(HolderState.TORN_DOWN) == ["kept"]
    assert await redis.smembers(f"{topic_prefix}:holders:torn_down") == {b"kept"}
