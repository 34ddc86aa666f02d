"""Kafka and Redis round trips through the real servers the stack runs."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

pytestmark = pytest.mark.integration


async def test_kafka_produce_consume_round_trip(kafka_bootstrap, kafka_admin, topic_prefix):
    (topic,) = await kafka_admin.create(f"{topic_prefix}.roundtrip", partitions=2)
    sent = [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(10)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in sent:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{topic_prefix}.group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received = []
    try:
        while len(received) < len(sent):
            batches = await consumer.getmany(timeout_ms=10_000)
            if not batches:
                break
            for records in batches.values():
                received.extend((record.key, record.value) for record in records)
    finally:
        await consumer.stop()

    assert sorted(received) == sorted(sent)


async def test_kafka_admin_creates_prefixed_topics(kafka_admin, topic_prefix):
    names = [f"{topic_prefix}.a", f"{topic_prefix}.b"]

    created = await kafka_admin.create(*names, partitions=3)

    assert created == names
    described = await kafka_admin.admin.describe_topics(names)
    assert [len(topic["partitions"]) for topic in described] == [3, 3]


async def test_redis_set_get(redis_url, redis_prefix):
    client = aioredis.Redis.from_url(redis_url)
    try:
        key = f"{redis_prefix}greeting"
        assert await client.set(key, b"hello", ex=60)
        assert await client.get(key) == b"hello"
        assert await client.ping()
    finally:
        await client.aclose()
