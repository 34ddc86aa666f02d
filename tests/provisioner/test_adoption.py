"""Holders outlive the provisioner, and the next provisioner adopts them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from provisioner.api import request_holders
from provisioner.registry import HolderRegistry, HolderState
from provisioner_harness import (
    TEST_CONFIG,
    Inbox,
    eventually,
    process_exists,
    read_audit_records,
    start_provisioner,
)
from schemas.holders import EventKind, LifecycleEvent
from schemas.topics import Topics
from shardbus.audit import ROLE_PARTITIONS
from shardbus.audit.chain import load_signing_key, verify_record
from shardbus.deployment import init_deployment
from shardbus.services import ServiceGroup

pytestmark = pytest.mark.integration

KEEP_CONFIG = replace(TEST_CONFIG, teardown_on_stop=False)
LIVE_STATES = (HolderState.POOL, HolderState.ASSIGNED, HolderState.PER_OPERATION, HolderState.WARMING)


async def _live_pids(registry: HolderRegistry) -> dict[str, int]:
    pids = {}
    for state in LIVE_STATES:
        for holder_id in await registry.ids_in_state(state):
            record = await registry.get(holder_id)
            if record is not None and record.pid:
                pids[holder_id] = record.pid
    return pids


def _kill_leftovers(pids) -> None:
    # A failed test must not leave holder processes behind.
    for pid in pids:
        if process_exists(pid):
            os.kill(pid, signal.SIGKILL)


def _heartbeat_after(registry: HolderRegistry, holder_id: str, after_ms: int):
    async def check() -> bool:
        record = await registry.get(holder_id)
        return record is not None and record.last_heartbeat_ms > after_ms
    return check


async def test_stop_keeps_ready_holders(kafka_bootstrap: str, kafka_admin, redis: Redis, topic_prefix: str,
                                        tmp_path: Path) -> None:
    topics = Topics(topic_prefix)
    registry = HolderRegistry(redis, topic_prefix)
    first = await start_provisioner(kafka_bootstrap, redis, topics, tmp_path / "logs", KEEP_CONFIG)
    pids: dict[str, int] = {}
    try:
        granted = await request_holders(kafka_bootstrap, topics, 1, "pooled", secret_name="db/pw",
                                        secret_version=1, timeout_s=60)
        await first.service.pool.wait_filled(60)
        pooled = first.service.pool.ready_ids()
        pids = await _live_pids(registry)
        await first.stop()
        await first.inbox.stop()

        for holder_id, pid in pids.items():
            assert process_exists(pid), f"holder {holder_id} stopped with the provisioner"
        assigned = await registry.get(granted[0].holder_id)
        assert assigned is not None
        assert assigned.state is HolderState.ASSIGNED

        restarted_ms = int(time.time() * 1000)
        second = await start_provisioner(kafka_bootstrap, redis, topics, tmp_path / "logs", TEST_CONFIG)
        try:
            assert granted[0].holder_id in second.service.backend.holder_ids()
            assert set(pooled) <= set(second.service.pool.ready_ids())
            await eventually(_heartbeat_after(registry, granted[0].holder_id, restarted_ms),
                             "the adopted holder's heartbeats are recorded again")
            again = await request_holders(kafka_bootstrap, topics, 1, "pooled", timeout_s=60)
            assert again[0].holder_id in pooled
        finally:
            await second.stop()
            await second.inbox.stop()

        for holder_id, pid in pids.items():
            assert not process_exists(pid), f"holder {holder_id} survived a stop with teardown"
    finally:
        _kill_leftovers(pids.values())


async def test_adopted_holder_failure_reported(kafka_bootstrap: str, kafka_admin, redis: Redis, topic_prefix: str,
                                               tmp_path: Path) -> None:
    topics = Topics(topic_prefix)
    registry = HolderRegistry(redis, topic_prefix)
    first = await start_provisioner(kafka_bootstrap, redis, topics, tmp_path / "logs", KEEP_CONFIG)
    pids: dict[str, int] = {}
    try:
        pooled = first.service.pool.ready_ids()
        pids = await _live_pids(registry)
        await first.stop()
        await first.inbox.stop()

        second = await start_provisioner(kafka_bootstrap, redis, topics, tmp_path / "logs", TEST_CONFIG)
        try:
            victim = pooled[0]
            os.kill(pids[victim], signal.SIGKILL)
            event = await second.inbox.wait_for(
                LifecycleEvent, lambda e: e.event == EventKind.HOLDER_FAILED and e.holder_id == victim
            )
            assert "exited" in event.detail
            await second.service.pool.wait_filled(60)
        finally:
            await second.stop()
            await second.inbox.stop()
    finally:
        _kill_leftovers(pids.values())


async def test_sigkill_restart_adopts_holders(kafka_bootstrap: str, kafka_admin, redis: Redis, redis_url: str,
                                              topic_prefix: str, tmp_path: Path) -> None:
    topics = Topics(topic_prefix)
    registry = HolderRegistry(redis, topic_prefix)
    # The provisioner signs its audit records with the deployment's audit key.
    home = tmp_path / "deployment"
    init_deployment(home)
    env = dict(os.environ)
    env.update({
        "SHARDBUS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SHARDBUS_REDIS_URL": redis_url,
        "SHARDBUS_TOPIC_PREFIX": topic_prefix,
        "SHARDBUS_HOME": str(home),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    })
    group = ServiceGroup(env=env, log_dir=tmp_path / "logs", ready_timeout_s=90)
    pids: dict[str, int] = {}
    inbox = Inbox(kafka_bootstrap, [topics.lifecycle])
    try:
        await asyncio.to_thread(group.start, ["provisioner"])
        granted = await request_holders(kafka_bootstrap, topics, 1, "pooled", secret_name="db/pw",
                                        secret_version=1, timeout_s=60)
        assigned = granted[0].holder_id
        pids = await _live_pids(registry)
        pooled = [h for h in await registry.ids_in_state(HolderState.POOL) if h in pids]
        assert pooled, "the pool had no ready holder to watch"

        group.kill("provisioner")
        for holder_id, pid in pids.items():
            assert process_exists(pid), f"holder {holder_id} died with the provisioner"
        # A holder that dies while no provisioner runs is reported by the next one.
        dead = pooled[0]
        os.kill(pids[dead], signal.SIGKILL)

        restarted_ms = int(time.time() * 1000)
        await inbox.start()
        group.start_one("provisioner")
        await asyncio.to_thread(group.wait_ready, "provisioner")

        event = await inbox.wait_for(
            LifecycleEvent, lambda e: e.event == EventKind.HOLDER_FAILED and e.holder_id == dead
        )
        assert "no longer runs" in event.detail
        await eventually(_heartbeat_after(registry, assigned, restarted_ms),
                         "the adopted holder's heartbeats are recorded again")
        record = await registry.get(assigned)
        assert record is not None
        assert record.state is HolderState.ASSIGNED
        assert record.pid == pids[assigned]

        # The restarted provisioner records the failure on the chain the first one began.
        async def failure_recorded() -> bool:
            records = await read_audit_records(kafka_bootstrap, topics, ROLE_PARTITIONS["provisioner"])
            return ("holder.failed", dead) in [(r.action, r.holder_id) for r in records]

        await eventually(failure_recorded, f"the failure of holder {dead} is an audit record")
        records = await read_audit_records(kafka_bootstrap, topics, ROLE_PARTITIONS["provisioner"])
        assert [r.sequence for r in records] == list(range(len(records)))
        assert [(r.action, r.holder_id) for r in records][0] == ("holder.provisioned", assigned)
        verify_key = load_signing_key(home / "audit.key").verify_key
        for record in records:
            verify_record(record, ROLE_PARTITIONS["provisioner"], verify_key)
    finally:
        await inbox.stop()
        await asyncio.to_thread(group.stop)
        _kill_leftovers(list(pids.values()) + list((await _live_pids(registry)).values()))

    for holder_id, pid in pids.items():
        assert not process_exists(pid), f"holder {holder_id} survived the provisioner's teardown"
