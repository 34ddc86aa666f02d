"""Fixtures for provisioner tests: Redis, a running provisioner and an inbox of its events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from provisioner.process import ProcessBackend
from provisioner.config import ProvisionerConfig
from provisioner.service import Provisioner
from provisioner_harness import Inbox, RunningProvisioner
from schemas.topics import Topics

TEST_CONFIG = ProvisionerConfig(
    pool_size=2,
    max_holders=8,
    heartbeat_interval_s=0.5,
    heartbeat_timeout_s=5.0,
    ready_timeout_s=30.0,
    stop_timeout_s=5.0,
)


@pytest.fixture
async def redis(redis_url: str, topic_prefix: str) -> AsyncIterator[Redis]:
    """A Redis client; every key under this test's prefix is deleted afterwards."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{topic_prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def provisioner(kafka_bootstrap: str, kafka_admin, redis: Redis, topic_prefix: str,
                      tmp_path: Path) -> AsyncIterator[RunningProvisioner]:
    """A provisioner serving this test's prefix, ready and with a full pool."""
    topics = Topics(topic_prefix)
    log_dir = tmp_path / "holder-logs"
    service = Provisioner(kafka_bootstrap, topics, ProcessBackend(log_dir), redis, TEST_CONFIG)
    task = asyncio.create_task(service.run())
    running = RunningProvisioner(service, task, topics, Inbox(kafka_bootstrap, [topics.lifecycle, topics.deadletter]),
                                 log_dir)
    try:
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # Raises the provisioner's own error.
        assert service.ready.is_set(), "the provisioner did not become ready within 60 s"
        await running.inbox.start()
        await service.pool.wait_filled(60)
        yield running
    finally:
        if not task.done():
            await running.stop()
        await running.inbox.stop()
