"""A failed pooled holder is replaced, its fragment restored from the backup store."""

from __future__ import annotations

import secrets
import signal

import pytest
from redis.asyncio import Redis

from shardbus.crypto.keys import MasterKey
from shardbus.demo_watch import LifecycleWatcher
from shardbus.store.mapping import BACKUP_SLOT, MappingTable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Seconds to wait for a replacement: the provisioner notices a dead process
#: within one heartbeat interval (2 s), and the repair needs a pooled holder.
REPLACED_TIMEOUT_S = 60.0


async def _placements(deployment, name: str):
    redis = Redis.from_url(deployment.settings.redis_url)
    try:
        table = MappingTable(redis, MasterKey.load(deployment.settings.master_key_path),
                             deployment.settings.topic_prefix)
        record = await table.get(name)
    finally:
        await redis.aclose()
    assert record is not None, f"secret {name!r} is not in the mapping table"
    return {p.index: p for p in record.current_version().placements}


async def _kill_and_await_replacement(deployment, holder_id: str) -> str:
    """Kill one holder and return the id of the holder that replaced it."""
    async with LifecycleWatcher(deployment.settings.kafka_bootstrap, deployment.topics) as events:
        await deployment.signal_holders([holder_id], signal.SIGKILL)
        replaced = [
            event for event in await events.wait_for("holder_replaced", count=1, timeout_s=REPLACED_TIMEOUT_S)
            if event.holders and event.holders[0] == holder_id
        ]
    assert replaced, f"no holder_replaced event for holder {holder_id} within {REPLACED_TIMEOUT_S:g} s"
    return replaced[0].holder_id


async def test_failed_holder_replaced(shardbus_deployment):
    secret = secrets.token_bytes(32)
    stored = await shardbus_deployment.put("db/repaired", secret, fragments=3, threshold=2)
    victim = stored.holders[0]
    before = await _placements(shardbus_deployment, "db/repaired")
    victim_index = next(i for i, p in before.items() if p.holder_id == victim)

    replacement = await _kill_and_await_replacement(shardbus_deployment, victim)

    placements = await _placements(shardbus_deployment, "db/repaired")
    assert placements[victim_index].holder_id == replacement
    assert placements[victim_index].key_slot == BACKUP_SLOT
    assert victim not in {p.holder_id for p in placements.values()}
    async with shardbus_deployment.client() as client:
        async with client.lease("db/repaired") as leased:
            assert bytes(leased) == secret


async def test_every_holder_replaced_in_turn(shardbus_deployment):
    # After each original holder is replaced in turn, the secret lives only
    # on restored fragments, and a lease still rebuilds it.
    secret = secrets.token_bytes(24)
    stored = await shardbus_deployment.put("db/all-replaced", secret, fragments=3, threshold=2)

    replacements = [await _kill_and_await_replacement(shardbus_deployment, h) for h in stored.holders]

    placements = await _placements(shardbus_deployment, "db/all-replaced")
    assert sorted(p.holder_id for p in placements.values()) == sorted(replacements)
    assert all(p.key_slot == BACKUP_SLOT for p in placements.values())
    async with shardbus_deployment.client() as client:
        async with client.lease("db/all-replaced") as leased:
            assert bytes(leased) == secret
