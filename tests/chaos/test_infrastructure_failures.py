"""One Kafka broker killed, and Redis restarted, under steady load, on a private stack.

The shared stack must keep running for everyone else, so this module starts
a stack of its own on free ports and in a temporary folder, and stops it at
the end. It is a 3-node KRaft cluster (topics with 3 replicas, 2 in sync)
and a Redis server with an append-only file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

# chaos_support puts the repository root on sys.path, so it comes before benchmarks.
from chaos_support import TEST_SHAPE, check_exactly_once, start_deployment  # noqa: I001
from benchmarks.chaos import BROKER_NODE, run_scenario
from benchmarks.chaos_deployment import ChaosDeployment
from benchmarks.chaos_stack import PrivateStack
from shardbus.crypto.keys import MasterKey
from shardbus.store.mapping import MappingTable

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def private_stack() -> Iterator[PrivateStack]:
    stack = PrivateStack()
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def cluster_deployment(private_stack: PrivateStack) -> Iterator[ChaosDeployment]:
    deployment = start_deployment(private_stack.bootstrap, private_stack.redis_url)
    try:
        yield deployment
    finally:
        asyncio.run(deployment.stop())


async def test_topics_replicated_three_times(cluster_deployment: ChaosDeployment) -> None:
    topics = cluster_deployment.topics
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster_deployment.settings.kafka_bootstrap)
    await admin.start()
    try:
        names = [topics.requests, topics.plans, topics.fragments, topics.lifecycle, topics.replies("chaos")]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()

    for topic in described:
        for partition in topic["partitions"]:
            assert len(partition["replicas"]) == 3, f"{topic['topic']}[{partition['partition']}] has too few replicas"


async def test_broker_killed_under_load(cluster_deployment: ChaosDeployment, private_stack: PrivateStack) -> None:
    outcome = await run_scenario("broker", cluster_deployment, TEST_SHAPE, private_stack)

    check_exactly_once(outcome.report)
    assert private_stack.broker_pid(BROKER_NODE) > 0


async def test_redis_restarted_under_load(cluster_deployment: ChaosDeployment, private_stack: PrivateStack) -> None:
    before = await _mapping_records(cluster_deployment)

    outcome = await run_scenario("redis", cluster_deployment, TEST_SHAPE, private_stack)

    check_exactly_once(outcome.report)
    assert await _mapping_records(cluster_deployment) == before


async def _mapping_records(deployment: ChaosDeployment) -> dict:
    redis = Redis.from_url(deployment.settings.redis_url)
    try:
        table = MappingTable(redis, MasterKey.load(deployment.settings.master_key_path), deployment.prefix)
        records = {record.name: record for record in await table.list()}
    finally:
        await redis.aclose()
    assert sorted(records) == sorted(deployment.secrets)
    return records
