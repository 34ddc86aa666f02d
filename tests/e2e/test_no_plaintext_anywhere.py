"""After a run, the secret appears on no topic, in no Redis key and in no file."""

from __future__ import annotations

import base64
import secrets
import signal
from pathlib import Path

import pytest
import redis as redis_sync
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _forms(secret: bytes) -> list[bytes]:
    """The secret as raw bytes and in the encodings a careless log line would use."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        repr(secret).encode(),
    ]


async def test_secret_never_in_plaintext(shardbus_deployment):
    # A 24-byte random secret cannot appear by chance in a few megabytes of data.
    pooled = secrets.token_bytes(24)
    per_operation = secrets.token_bytes(24)
    large = secrets.token_bytes(4096)
    deployment = shardbus_deployment
    stored = await deployment.put("db/scanned", pooled)
    await deployment.put("payments/scanned", per_operation, fragments=3, threshold=2, lifecycle="per_operation")
    await deployment.put("db/scanned-large", large)
    async with deployment.client() as client:
        for name, expected in (("db/scanned", pooled), ("payments/scanned", per_operation), ("db/scanned-large", large)):
            async with client.lease(name) as leased:
                assert bytes(leased) == expected
        await deployment.signal_holders(stored.holders[:1], signal.SIGKILL)
        async with client.lease("db/scanned") as leased:
            assert bytes(leased) == pooled

    needles = _forms(pooled) + _forms(per_operation) + [large[:64], large[-64:], large.hex()[:64].encode()]
    prefix = deployment.settings.topic_prefix

    scanned_records = await _scan_topics(deployment.settings.kafka_bootstrap, prefix, needles)
    assert scanned_records > 20, "too few records were scanned for the check to mean anything"

    scanned_keys = _scan_redis(deployment.settings.redis_url, prefix, needles)
    assert scanned_keys > 5

    scanned_files = _scan_files(deployment.home, needles)
    assert scanned_files >= 3, "the services' logs were not found"


async def _scan_topics(bootstrap: str, prefix: str, needles: list[bytes]) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
    finally:
        await admin.close()
    assert topics, f"no topics with prefix {prefix}"

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    count = 0
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        partitions = [
            TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end_offsets = await consumer.end_offsets(partitions)
        remaining = {p for p, end in end_offsets.items() if end > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=500)
            for partition, records in batches.items():
                for record in records:
                    count += 1
                    for field in (record.key or b"", record.value or b""):
                        for needle in needles:
                            assert needle not in field, (
                                f"secret material found on topic {partition.topic} at offset {record.offset}"
                            )
            remaining = {p for p in remaining if await consumer.position(p) < end_offsets[p]}
    finally:
        await consumer.stop()
    return count


def _scan_redis(url: str, prefix: str, needles: list[bytes]) -> int:
    client = redis_sync.Redis.from_url(url)
    count = 0
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            count += 1
            kind = client.type(key)
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"hash":
                values = [b for pair in client.hgetall(key).items() for b in pair]
            elif kind == b"set":
                values = list(client.smembers(key))
            elif kind == b"zset":
                values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            else:
                values = []
            for value in [key, *values]:
                for needle in needles:
                    assert needle not in value, f"secret material found in Redis key {key!r}"
    finally:
        client.close()
    return count


def _scan_files(home: Path, needles: list[bytes]) -> int:
    count = 0
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        count += 1
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"secret material found in {path}"
    return count
