"""Fixtures for provisioner tests: Redis, a running provisioner and an inbox of its events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from provisioner_harness import TEST_CONFIG, RunningProvisioner, start_provisioner
from schemas.topics import Topics



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
    running = await start_provisioner(kafka_bootstrap, redis, Topics(topic_prefix), tmp_path / "holder-logs",
                                      TEST_CONFIG)
    try:
        yield running
    finally:
        if not running.task.done():
            await running.stop()
        await running.inbox.stop()
