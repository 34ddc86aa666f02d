"""A first run of shardbus's plumbing: a Kafka round trip and a Redis write and read.

Run it with `scripts/demo`, which starts the local stack and sets
SHARDBUS_KAFKA_BOOTSTRAP and SHARDBUS_REDIS_URL. The body of `run_demo` is a
placeholder for the full scenario (store a secret, request it, receive the
lease). The set-up functions above it read the environment and open the
connections.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code
from redis.asyncio import Redis

from shardbus.errors import ConfigError

KAFKA_BOOTSTRAP_ENV = "SHARDBUS_KAFKA_BOOTSTRAP"
REDIS_URL_ENV = "SHARDBUS_REDIS_URL"
_START_STACK = 'start the local stack with scripts/stack up && eval "$(scripts/stack env)", or run scripts/demo'


def kafka_bootstrap() -> str:
    """Return the Kafka bootstrap servers from SHARDBUS_KAFKA_BOOTSTRAP."""
    value = os.environ.get(KAFKA_BOOTSTRAP_ENV)
    if not value:
        raise ConfigError(f"{KAFKA_BOOTSTRAP_ENV} is not set: {_START_STACK}")
    return value


def redis_url() -> str:
    """Return the Redis URL from SHARDBUS_REDIS_URL."""
    value = os.environ.get(REDIS_URL_ENV)
    if not value:
        raise ConfigError(f"{REDIS_URL_ENV} is not set: {_START_STACK}")
    return value


async def open_admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="shardbus-demo")
    await admin.start()
    return admin


async def open_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id="shardbus-demo")
    await producer.start()
    return producer


async def open_consumer(bootstrap: str, topic: str, group_id: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        client_id="shardbus-demo",
    )
    await consumer.start()
    return consumer


def open_redis(url: str) -> Redis:
    return Redis.from_url(url)


async def run_demo(bootstrap: str, url: str, run_id: str) -> None:
    """Send three messages through a fresh topic, read them back, then write and read a Redis key."""
    topic = f"shardbus-demo.{run_id}"
    admin = await open_admin(bootstrap)
    try:
        print(f"1. creating topic {topic} on {bootstrap}")
        response = await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        for name, code, message in response.topic_errors:
            if code != 0:
                raise for_code(code)(f"creating topic {name!r} failed: {message}")

        producer = await open_producer(bootstrap)
        try:
            for number in range(1, 4):
                value = f"hello {number}".encode()
                metadata = await producer.send_and_wait(topic, value, key=run_id.encode())
                print(f"2. produced {value!r} at partition {metadata.partition}, offset {metadata.offset}")
        finally:
            await producer.stop()

        consumer = await open_consumer(bootstrap, topic, group_id=f"shardbus-demo.{run_id}")
        try:
            received = 0
            while received < 3:
                batches = await consumer.getmany(timeout_ms=10_000)
                if not batches:
                    raise TimeoutError(f"no message arrived on {topic} within 10 s")
                for records in batches.values():
                    for record in records:
                        received += 1
                        print(f"3. consumed {record.value!r} from offset {record.offset}")
        finally:
            await consumer.stop()

        print(f"4. deleting topic {topic}")
        await admin.delete_topics([topic])
    finally:
        await admin.close()

    redis = open_redis(url)
    try:
        key = f"shardbus-demo:{run_id}"
        await redis.set(key, b"round trip", ex=60)
        print(f"5. wrote Redis key {key} on {url}")
        print(f"6. read it back: {await redis.get(key)!r}")
        await redis.delete(key)
    finally:
        await redis.aclose()


def main() -> int:
    try:
        bootstrap = kafka_bootstrap()
        url = redis_url()
    except ConfigError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 1
    asyncio.run(run_demo(bootstrap, url, run_id=uuid.uuid4().hex[:8]))
    print("demo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
