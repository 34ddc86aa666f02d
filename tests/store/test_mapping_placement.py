"""Placements restored from the backup store: key slots, record formats, atomic replacement."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from redis.asyncio import Redis

from shardbus.crypto import aead
from shardbus.crypto.keys import MasterKey
from shardbus.store.mapping import BACKUP_SLOT, MappingTable, Placement, SecretRecord, VersionRecord

pytestmark = pytest.mark.integration


def _record(name: str, placements: tuple[Placement, ...]) -> SecretRecord:
    version = VersionRecord(
        version=1, fragments=len(placements), threshold=2, lifecycle="pooled", key_version=1,
        created_ms=1_700_000_000_000, placements=placements,
        commitments={p.index: bytes([p.index]) * 32 for p in placements}, digest=b"\x07" * 32,
    )
    return SecretRecord(name=name, current=1, versions={1: version})


def _plain(count: int = 3) -> tuple[Placement, ...]:
    return tuple(Placement(index=i, holder_id=f"h{i}") for i in range(1, count + 1))


async def _stored_format(redis: Redis, table: MappingTable, master: MasterKey, prefix: str, name: str) -> int:
    tag = table.tag(name)
    blob = await redis.get(f"{prefix}:secret:{tag}")
    plaintext = aead.open_(master.mapping_key(), blob, b"shardbus/mapping/v1\x00" + tag.encode())
    return msgpack.unpackb(plaintext, raw=False)["v"]


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def test_placement_key_slot_defaults_to_holder() -> None:
    assert Placement(1, "h1").fragment_key_slot == "h1"
    assert Placement(1, "h9", BACKUP_SLOT).fragment_key_slot == BACKUP_SLOT


async def test_key_slot_round_trip(redis, redis_prefix) -> None:
    master = MasterKey.generate()
    table = MappingTable(redis, master, prefix=redis_prefix)
    record = _record("db/slot", (Placement(1, "h1"), Placement(2, "h9", BACKUP_SLOT)))

    await table.put(record)

    assert await table.get("db/slot") == record
    assert await _stored_format(redis, table, master, redis_prefix, "db/slot") == 2


async def test_record_without_slots_stays_format_1(redis, redis_prefix) -> None:
    master = MasterKey.generate()
    table = MappingTable(redis, master, prefix=redis_prefix)

    await table.put(_record("db/plain", _plain()))

    assert await _stored_format(redis, table, master, redis_prefix, "db/plain") == 1
    assert await table.get("db/plain") == _record("db/plain", _plain())


async def test_replace_placement_moves_fragment(redis, redis_prefix) -> None:
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    await table.put(_record("db/moved", _plain()))

    moved = await table.replace_placement("db/moved", 1, "h2", Placement(2, "h-new", BACKUP_SLOT))

    assert moved
    record = await table.get("db/moved")
    assert record is not None
    assert record.versions[1].placements == (Placement(1, "h1"), Placement(2, "h-new", BACKUP_SLOT), Placement(3, "h3"))


async def test_replace_placement_twice_is_noop(redis, redis_prefix) -> None:
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)
    await table.put(_record("db/twice", _plain()))
    assert await table.replace_placement("db/twice", 1, "h2", Placement(2, "h-first", BACKUP_SLOT))

    again = await table.replace_placement("db/twice", 1, "h2", Placement(2, "h-second", BACKUP_SLOT))

    assert not again
    record = await table.get("db/twice")
    assert record is not None
    assert record.versions[1].holder_of(2) == "h-first"


async def test_replace_placement_missing_secret(redis, redis_prefix) -> None:
    table = MappingTable(redis, MasterKey.generate(), prefix=redis_prefix)

    assert not await table.replace_placement("db/none", 1, "h1", Placement(1, "h-new", BACKUP_SLOT))
    await table.put(_record("db/other-version", _plain()))
    assert not await table.replace_placement("db/other-version", 2, "h1", Placement(1, "h-new", BACKUP_SLOT))


async def test_concurrent_replacements_both_kept(redis_url, redis_prefix) -> None:
    master = MasterKey.generate()
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    try:
        tables = [MappingTable(client, master, prefix=redis_prefix) for client in clients]
        await tables[0].put(_record("db/race", _plain(5)))

        results = await asyncio.gather(*(
            tables[i % 2].replace_placement("db/race", 1, f"h{i}", Placement(i, f"h-new{i}", BACKUP_SLOT))
            for i in range(1, 6)
        ))

        assert results == [True] * 5
        record = await tables[0].get("db/race")
        assert record is not None
        for i in range(1, 6):
            assert record.versions[1].holder_of(i) == f"h-new{i}"
    finally:
        for client in clients:
            await client.aclose()
