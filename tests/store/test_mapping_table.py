"""The mapping table against a real Redis: sealed records, tags, backups."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shardbus.crypto.keys import MasterKey
from shardbus.errors import IntegrityError
from shardbus.store.mapping import MappingTable, Placement, SecretRecord, VersionRecord

pytestmark = pytest.mark.integration


def _record(name: str, version: int = 1) -> SecretRecord:
    version_record = VersionRecord(
        version=version, fragments=5, threshold=3, lifecycle="pooled", key_version=1,
        created_ms=1_700_000_000_000,
        placements=tuple(Placement(index=i, holder_id=f"h{i}") for i in range(1, 6)),
        commitments={i: bytes([i]) * 32 for i in range(1, 6)}, digest=b"\x07" * 32,
    )
    return SecretRecord(name=name, current=version, versions={version: version_record})


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_mapping_round_trip(redis, redis_prefix):
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    await table.put(_record("db/password"))
    loaded = await table.get("db/password")
    assert loaded == _record("db/password")
    assert await table.get("db/other") is None


async def test_mapping_hides_names_and_placement(redis, redis_prefix):
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    await table.put(_record("db/password"))
    keys = [key async for key in redis.scan_iter(match=f"{redis_prefix}:*")]
    assert keys, "the record was not written"
    for key in keys:
        assert b"db/password" not in key
        value = await redis.get(key) if await redis.type(key) == b"string" else b""
        assert b"db/password" not in value
        assert b"h1" not in value


async def test_mapping_rejects_other_master_key(redis, redis_prefix):
    await MappingTable(redis, MasterKey.generate(), prefix=redis_prefix).put(_record("db/password"))
    intruder = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    # Another master key computes another tag, so the record is simply absent ...
    assert await intruder.get("db/password") is None


async def test_mapping_detects_swapped_records(redis, redis_prefix):
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    await table.put(_record("db/a"))
    await table.put(_record("db/b"))
    blob_b = await redis.get(f"{redis_prefix}:secret:{table.tag('db/b')}")
    await redis.set(f"{redis_prefix}:secret:{table.tag('db/a')}", blob_b)
    with pytest.raises(IntegrityError):
        await table.get("db/a")


async def test_mapping_list_and_delete(redis, redis_prefix):
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    await table.put(_record("db/b"))
    await table.put(_record("db/a"))
    await table.put_backup("db/a", 1, 1, b"sealed")
    assert [r.name for r in await table.list()] == ["db/a", "db/b"]

    assert await table.delete("db/a") is True
    assert await table.get_backup("db/a", 1, 1) is None
    assert [r.name for r in await table.list()] == ["db/b"]
    assert await table.delete("db/a") is False


async def test_mapping_delete_backups_of_one_version(redis, redis_prefix):
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    await table.put_backup("db/a", 1, 1, b"old")
    await table.put_backup("db/a", 2, 1, b"new")
    await table.delete_backups("db/a", 1)
    assert await table.get_backup("db/a", 1, 1) is None
    assert await table.get_backup("db/a", 2, 1) == b"new"


async def test_mapping_list_skips_unreadable_record(redis, redis_prefix):
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    await table.put(_record("db/good"))
    await table.put(_record("db/bad"))
    await redis.set(f"{redis_prefix}:secret:{table.tag('db/bad')}", b"garbage")
    unreadable: list[str] = []
    assert [r.name for r in await table.list(unreadable=unreadable)] == ["db/good"]
    assert unreadable == [table.tag("db/bad")]
