"""The client SDK's reply reader survives garbage on the reply topic."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from schemas import codec
from schemas.messages import ErrorReply, HolderAck, Reason
from schemas.topics import Topics
from shardbus.client import ShardbusClient
from shardbus.crypto.signing import SigningKey

pytestmark = pytest.mark.integration

GARBAGE = [
    None,  # a tombstone
    b"",
    b"\xc1",  # a byte msgpack never uses
    b"\x81\xa1v\x02",  # a map with format version 2 and nothing else
    codec.encode(HolderAck("h1", "a" * 32, ok=True, error="")),  # a valid message of the wrong type
    codec.encode(ErrorReply(operation_id="0" * 32, app_id="billing", reason=Reason.NOT_GRANTED, detail="", holders=()))[:-3],
]


async def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.05)


async def test_garbage_replies_counted_not_fatal(kafka_bootstrap, kafka_admin, topic_prefix):
    topics = Topics(topic_prefix)
    await kafka_admin.create(topics.replies("billing"), topics.requests)
    client = ShardbusClient(kafka_bootstrap, "billing", SigningKey.generate(), topics=topics, timeout_s=30)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await client.start()
    await producer.start()
    try:
        for value in GARBAGE:
            await producer.send_and_wait(topics.replies("billing"), value, key=b"k")

        await wait_until(lambda: client.rejected_replies == len(GARBAGE))
        assert not client._reader.done()  # noqa: SLF001 - the reader task must still run.

        # A reply for an operation of another client instance is ignored, not rejected.
        other = ErrorReply(operation_id="f" * 32, app_id="billing", reason=Reason.NOT_GRANTED, detail="not ours", holders=())
        await producer.send_and_wait(topics.replies("billing"), codec.encode(other), key=b"k")
        await producer.send_and_wait(topics.replies("billing"), b"\xc1", key=b"k")
        await wait_until(lambda: client.rejected_replies == len(GARBAGE) + 1)
    finally:
        await producer.stop()
        await client.stop()
