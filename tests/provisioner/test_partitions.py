"""The provisioner reads every partition of topics another service created with several."""

from __future__ import annotations

import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from provisioner.api import request_holders
from provisioner_harness import TEST_CONFIG, eventually, start_provisioner
from schemas import codec
from schemas.holders import HolderLifecycle, ProvisionRequest
from schemas.topics import Topics
from shardbus.kafka import ensure_topics


async def test_request_on_partition_three_answered(
    kafka_bootstrap: str, kafka_admin, redis: Redis, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    # The authorizer creates these with 4 partitions when it starts first.
    await ensure_topics(kafka_bootstrap, [topics.provisioner, topics.lifecycle, topics.heartbeats], partitions=4)
    running = await start_provisioner(kafka_bootstrap, redis, topics, tmp_path / "holder-logs", TEST_CONFIG)
    try:
        # request_holders sends with the request id as key; send one more
        # request straight to partition 3 so the test does not depend on hashing.
        granted = await request_holders(kafka_bootstrap, topics, 1, "pooled", secret_name="db/a", secret_version=1,
                                        timeout_s=60)
        assert len(granted) == 1

        request = ProvisionRequest(
            request_id=uuid.uuid4().hex, count=1, lifecycle=HolderLifecycle.POOLED, operation_id="",
            secret_name="db/b", secret_version=1, reply_topic=topics.provisioner_replies,
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topics.provisioner, codec.encode(request), partition=3)
        finally:
            await producer.stop()

        async def answered() -> bool:
            records = await running.service.registry.holders_of_secret("db/b", 1)
            return len(records) == 1

        await eventually(answered, "the request on partition 3 got a holder")
    finally:
        if not running.task.done():
            await running.stop()
        await running.inbox.stop()
