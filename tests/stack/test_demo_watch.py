"""The demo's lifecycle watcher, on a real broker: it waits for per-operation holders to come and go."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from schemas import codec
from schemas.messages import EventKind, LifecycleEvent
from schemas.topics import Topics
from shardbus.audit.events import sign_event
from shardbus.crypto.signing import SigningKey
from shardbus.demo_watch import LifecycleWatcher
from shardbus.errors import ServiceUnavailable

pytestmark = pytest.mark.integration

SECRET = "payments/api-key"
HOLDERS = ("holder-a", "holder-b", "holder-c")
#: The watcher's wait in the failing cases. Only the error it raises is checked, never how long it took.
SHORT_WAIT_S = 3.0


def _provisioned(secret_name: str = SECRET, lifecycle: str = "per_operation") -> LifecycleEvent:
    return LifecycleEvent(
        event=EventKind.HOLDER_PROVISIONED, at_ms=1, holder_id="", operation_id="a" * 32,
        secret_name=secret_name, secret_version=1, detail=lifecycle, holders=HOLDERS,
    )


def _torn_down(holder_id: str) -> LifecycleEvent:
    return LifecycleEvent(
        event=EventKind.HOLDER_TORN_DOWN, at_ms=2, holder_id=holder_id, operation_id="a" * 32,
        secret_name=SECRET, secret_version=1, detail="operation completed", holders=(holder_id,),
    )


async def _send(bootstrap: str, topic: str, *events: LifecycleEvent) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            # The watcher only reads events, so any key will do for the signature they must carry.
            signed = sign_event(event, SigningKey.generate())
            await producer.send_and_wait(topic, codec.encode(signed), key=Topics.partition_key(event))
    finally:
        await producer.stop()


@pytest.fixture
async def topics(kafka_admin, topic_prefix: str) -> Topics:
    topics = Topics(topic_prefix)
    await kafka_admin.create(topics.lifecycle)
    return topics


async def test_cycle_returns_once_all_torn_down(kafka_bootstrap, topics):
    async with LifecycleWatcher(kafka_bootstrap, topics) as watcher:
        await _send(kafka_bootstrap, topics.lifecycle, _provisioned(), *(_torn_down(h) for h in HOLDERS))
        events = await watcher.per_operation_cycle(SECRET, timeout_s=60)

    kinds = [event.event for event in events]
    assert kinds[0] is EventKind.HOLDER_PROVISIONED
    assert kinds.count(EventKind.HOLDER_TORN_DOWN) == len(HOLDERS)


async def test_cycle_names_holder_not_torn_down(kafka_bootstrap, topics):
    async with LifecycleWatcher(kafka_bootstrap, topics) as watcher:
        await _send(kafka_bootstrap, topics.lifecycle, _provisioned(), _torn_down("holder-a"), _torn_down("holder-c"))
        with pytest.raises(ServiceUnavailable) as caught:
            await watcher.per_operation_cycle(SECRET, timeout_s=SHORT_WAIT_S)

    message = str(caught.value)
    assert "per-operation holders holder-b of 'payments/api-key' were not torn down" in message
    assert "holder-a" not in message
    assert "see the provisioner's log" in message


async def test_cycle_ignores_other_holders(kafka_bootstrap, topics):
    # Pooled holders, and per-operation holders of another secret, do not count.
    async with LifecycleWatcher(kafka_bootstrap, topics) as watcher:
        await _send(kafka_bootstrap, topics.lifecycle, _provisioned(lifecycle="pooled"),
                    _provisioned(secret_name="db/other"), *(_torn_down(h) for h in HOLDERS))
        with pytest.raises(ServiceUnavailable) as caught:
            await watcher.per_operation_cycle(SECRET, timeout_s=SHORT_WAIT_S)

    assert "no per-operation holders were provisioned for 'payments/api-key'" in str(caught.value)
