"""SecretStore against a real Redis: what `put` and `rotate` report about a per-operation secret."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from schemas.topics import Topics
from shardbus.crypto import aead
from shardbus.crypto.keys import MasterKey
from shardbus.sharing.fragment import Fragment
from shardbus.sharing.fragmentation import Policy
from shardbus.store.mapping import BACKUP_SLOT, MappingTable
from shardbus.store.secrets import SecretStore

pytestmark = pytest.mark.integration


async def no_holders(count: int, lifecycle: str, name: str, version: int) -> list[str]:
    raise AssertionError("a per_operation secret must not request holders when it is stored")


@dataclass
class Deployment:
    store: SecretStore
    mapping: MappingTable
    master_key: MasterKey

    async def backup_fragments(self, name: str, version: int, count: int) -> list[Fragment]:
        fragments = []
        for index in range(1, count + 1):
            sealed = await self.mapping.get_backup(name, version, index)
            assert sealed is not None, f"no backup of fragment {index}"
            plaintext = aead.open_fragment(
                self.master_key.fragment_key(name, version, index, BACKUP_SLOT),
                sealed,
                secret_id=name, version=version, index=index,
                holder_id=BACKUP_SLOT, key_version=self.master_key.version,
            )
            fragments.append(Fragment.from_bytes(plaintext))
        return fragments


@pytest.fixture
async def deployment(redis_url: str, redis_prefix: str):
    client = Redis.from_url(redis_url)
    master_key = MasterKey.generate()
    mapping = MappingTable(client, master_key, prefix=redis_prefix)
    # Per-operation secrets are only written to the backup store, so the
    # Kafka address is never used.
    store = SecretStore(
        bootstrap="127.0.0.1:1",
        topics=Topics(redis_prefix.rstrip(":")),
        master_key=master_key,
        mapping=mapping,
        request_holders=no_holders,
    )
    yield Deployment(store, mapping, master_key)
    await client.aclose()


@pytest.mark.parametrize(("length", "scheme"), [(32, "shamir"), (5000, "krawczyk")])
async def test_put_reports_fragment_size(deployment, length, scheme):
    policy = Policy(fragments=5, threshold=3)
    stored = await deployment.store.put("db/sized", b"s" * length, policy, "per_operation")

    assert stored.fragment_size == policy.fragment_size(length)
    fragments = await deployment.backup_fragments("db/sized", stored.version, 5)
    assert {fragment.scheme for fragment in fragments} == {scheme}
    assert {len(fragment.payload) for fragment in fragments} == {stored.fragment_size}


async def test_rotate_reports_new_fragment_size(deployment):
    policy = Policy(fragments=4, threshold=2)
    await deployment.store.put("db/rotated", b"s" * 32, policy, "per_operation")
    rotated = await deployment.store.rotate("db/rotated", b"t" * 3000)

    assert rotated.version == 2
    assert rotated.fragment_size == policy.fragment_size(3000)
    fragments = await deployment.backup_fragments("db/rotated", 2, 4)
    assert {len(fragment.payload) for fragment in fragments} == {rotated.fragment_size}
