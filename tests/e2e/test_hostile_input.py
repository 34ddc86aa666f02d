"""A burst of garbage on every consumed topic of a running deployment.

Hypothesis draws, for each consumer, records it must reject (see
hostile_payloads). The test sends them all, then checks that each one
produced exactly one dead letter with a reason, from the consumer of its
topic, and that every service still serves a valid request: a pooled
2-of-2 lease needs both spammed holders, the authorizer and the
reassembler, and a per-operation lease needs the provisioner too. The
client SDK, which may not write dead letters, must count the garbage on its
reply topic and still receive its lease.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from holders.runtime import COMMAND_TYPES
from hostile_payloads import hostile_payloads
from schemas import codec
from schemas.audit import DeadLetter
from schemas.base import MAX_MESSAGE_SIZE
from schemas.holders import HolderHeartbeat, LifecycleEvent, ProvisionReply, ProvisionRequest
from schemas.operations import ErrorReply, FragmentResponse, LeaseReply, OperationPlan, OperationRequest, ReleaseRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Records drawn per consumed topic and burst.
BURST = 6
#: Generous bound for the dead letters of one burst on a loaded machine.
DEAD_LETTER_WAIT_S = 120.0


@dataclass(frozen=True)
class Target:
    topic: str
    expected: tuple


@dataclass(frozen=True)
class Secrets:
    pooled: str
    pooled_value: bytes
    per_operation: str
    per_operation_value: bytes
    holders: tuple[str, ...]


@pytest.fixture(scope="module")
def stored(shardbus_deployment) -> Secrets:
    pooled_value, per_operation_value = secrets.token_bytes(24), secrets.token_bytes(24)

    async def put() -> Secrets:
        pooled = await shardbus_deployment.put("db/hostile", pooled_value, fragments=2, threshold=2)
        await shardbus_deployment.put("payments/hostile", per_operation_value, fragments=2, threshold=2,
                                      lifecycle="per_operation")
        return Secrets("db/hostile", pooled_value, "payments/hostile", per_operation_value, pooled.holders)

    return asyncio.run(put())


def targets(topics, holders: tuple[str, ...]) -> list[Target]:
    """Return each consumed topic with the types its consumer accepts."""
    return [
        Target(topics.requests, (OperationRequest, ReleaseRequest)),
        Target(topics.provisioned, (ProvisionReply,)),
        Target(topics.plans, (OperationPlan,)),
        Target(topics.fragments, (FragmentResponse,)),
        *(Target(topics.holder(holder_id), COMMAND_TYPES) for holder_id in holders),
        Target(topics.provisioner, (ProvisionRequest,)),
        Target(topics.heartbeats, (HolderHeartbeat,)),
        Target(topics.lifecycle, (LifecycleEvent,)),
    ]


# Shrinking would replay bursts against the live deployment for minutes,
# so a failure reports the burst as drawn.
@settings(max_examples=3, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_garbage_dead_lettered_services_answer(shardbus_deployment, stored, data):
    topics = shardbus_deployment.topics
    bursts = {
        target: data.draw(st.lists(hostile_payloads(target.expected), min_size=BURST, max_size=BURST),
                          label=target.topic)
        for target in targets(topics, stored.holders)
    }
    reply_garbage = data.draw(st.lists(hostile_payloads((LeaseReply, ErrorReply)), min_size=BURST, max_size=BURST),
                              label="replies")
    asyncio.run(_burst_then_serve(shardbus_deployment, stored, bursts, reply_garbage))


async def _burst_then_serve(deployment, stored: Secrets, bursts: dict[Target, list], reply_garbage: list) -> None:
    topics = deployment.topics
    async with deployment.client("billing", timeout_s=60) as client:
        rejected_before = client.rejected_replies
        producer = AIOKafkaProducer(bootstrap_servers=deployment.settings.kafka_bootstrap,
                                    max_request_size=2 * MAX_MESSAGE_SIZE)
        await producer.start()
        sent: list[tuple[str, int, int]] = []
        try:
            for target, payloads in bursts.items():
                for payload in payloads:
                    metadata = await producer.send_and_wait(target.topic, payload, key=b"hostile")
                    sent.append((metadata.topic, metadata.partition, metadata.offset))
            for payload in reply_garbage:
                await producer.send_and_wait(topics.replies("billing"), payload, key=b"hostile")
        finally:
            await producer.stop()

        letters = await _dead_letters_for(deployment, set(sent))
        for position in sent:
            found = letters.get(position, [])
            assert len(found) == 1, f"{len(found)} dead letters for the record at {position}"
            assert found[0].reason, f"the dead letter for {position} gives no reason"

        deadline = asyncio.get_running_loop().time() + DEAD_LETTER_WAIT_S
        while client.rejected_replies < rejected_before + len(reply_garbage):
            assert asyncio.get_running_loop().time() < deadline, "the client did not read its garbage replies"
            await asyncio.sleep(0.1)
        assert client.rejected_replies == rejected_before + len(reply_garbage)

        async with client.lease(stored.pooled) as leased:
            assert bytes(leased) == stored.pooled_value
        async with client.lease(stored.per_operation) as leased:
            assert bytes(leased) == stored.per_operation_value


async def _dead_letters_for(deployment, wanted: set[tuple[str, int, int]]) -> dict[tuple[str, int, int], list]:
    """Read the dead-letter topic from its beginning until every wanted record has one; return them by source."""
    topic = deployment.topics.deadletter
    consumer = AIOKafkaConsumer(bootstrap_servers=deployment.settings.kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    letters: dict[tuple[str, int, int], list[DeadLetter]] = {}
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = asyncio.get_running_loop().time() + DEAD_LETTER_WAIT_S
        while not wanted <= letters.keys():
            missing = len(wanted - letters.keys())
            assert asyncio.get_running_loop().time() < deadline, f"{missing} records have no dead letter"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    letter = codec.decode(record.value, DeadLetter)
                    letters.setdefault((letter.source_topic, letter.partition, letter.offset), []).append(letter)
        # Whatever is on the topic now is read too, so a duplicate already sent is counted.
        end = await consumer.end_offsets(partitions)
        while not await _reached(consumer, end):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    letter = codec.decode(record.value, DeadLetter)
                    letters.setdefault((letter.source_topic, letter.partition, letter.offset), []).append(letter)
    finally:
        await consumer.stop()
    return letters


async def _reached(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for partition, offset in end.items():
        if await consumer.position(partition) < offset:
            return False
    return True
