"""The provisioner service with real holder processes, Kafka and Redis."""

from __future__ import annotations

import hashlib
import os
import signal
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from provisioner.api import ProvisionerClient, request_holders
from provisioner.registry import HolderState
from provisioner_harness import AUDIT_KEY, RunningProvisioner, eventually, process_exists
from schemas import codec
from schemas.base import pack_canonical
from schemas.audit import DeadLetter
from schemas.holders import EventKind, LifecycleEvent
from schemas.topics import Topics
from shardbus.audit.events import sign_event
from shardbus.crypto.signing import SigningKey
from shardbus.errors import ServiceUnavailable

pytestmark = pytest.mark.integration

OPERATION = uuid.uuid4().hex


async def _topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _send(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"test")
    finally:
        await producer.stop()


async def test_pool_fills_to_target(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    service = provisioner.service
    pooled = await service.registry.ids_in_state(HolderState.POOL)

    assert len(pooled) == 2
    assert sorted(service.pool.ready_ids()) == pooled
    topics = await _topic_names(kafka_bootstrap)
    for holder_id in pooled:
        record = await service.registry.get(holder_id)
        assert record is not None
        assert len(record.public_key) == 32
        assert service.backend.is_alive(holder_id)
        assert provisioner.topics.holder(holder_id) in topics


async def test_pooled_request_gets_live_holders(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    service = provisioner.service

    granted = await request_holders(kafka_bootstrap, provisioner.topics, 3, "pooled",
                                    secret_name="db/pw", secret_version=1, timeout_s=60)

    assert len({holder.holder_id for holder in granted}) == 3
    for holder in granted:
        record = await service.registry.get(holder.holder_id)
        assert record is not None
        assert record.state is HolderState.ASSIGNED
        assert (record.secret_name, record.secret_version) == ("db/pw", 1)
        assert record.public_key == holder.public_key
        assert holder.kem == "x25519"
    ids = [holder.holder_id for holder in granted]

    async def all_alive() -> bool:
        return sorted(await service.registry.alive(ids, max_age_ms=5_000)) == sorted(ids)

    await eventually(all_alive, "every granted holder has a recent heartbeat")
    event = await provisioner.inbox.wait_for(LifecycleEvent, lambda e: e.event == EventKind.HOLDER_PROVISIONED)
    assert sorted(event.holders) == sorted(ids)
    await service.pool.wait_filled(60)


async def test_per_operation_holders_torn_down(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    service = provisioner.service
    async with ProvisionerClient(kafka_bootstrap, provisioner.topics) as client:
        granted = await client.request(2, "per_operation", operation_id=OPERATION,
                                       secret_name="db/pw", secret_version=1, timeout_s=60)
    ids = sorted(holder.holder_id for holder in granted)
    pids = [service.backend.status(holder_id).pid for holder_id in ids]
    assert await service.registry.holders_of_operation(OPERATION) == ids

    completed = LifecycleEvent(event=EventKind.OPERATION_COMPLETED, at_ms=1, holder_id="", operation_id=OPERATION,
                               secret_name="db/pw", secret_version=1, detail="lease issued", holders=tuple(ids))
    await _send(kafka_bootstrap, provisioner.topics.lifecycle, codec.encode(sign_event(completed, AUDIT_KEY)))

    for holder_id in ids:
        event = await provisioner.inbox.wait_for(
            LifecycleEvent, lambda e, h=holder_id: e.event == EventKind.HOLDER_TORN_DOWN and e.holder_id == h
        )
        assert event.operation_id == OPERATION
    for holder_id, pid in zip(ids, pids):
        assert not process_exists(pid)
        assert service.backend.status(holder_id) is None
        record = await service.registry.get(holder_id)
        assert record is not None
        assert record.state is HolderState.TORN_DOWN
    holder_topics = {provisioner.topics.holder(holder_id) for holder_id in ids}

    # Kafka deletes topics asynchronously, and the operation's set goes
    # after the last teardown event, so both are polled.
    async def topics_deleted() -> bool:
        return not holder_topics & await _topic_names(kafka_bootstrap)

    async def operation_forgotten() -> bool:
        return await service.registry.holders_of_operation(OPERATION) == []

    await eventually(topics_deleted, "the holder topics are deleted")
    await eventually(operation_forgotten, "the operation's holder set is deleted")
    await service.pool.wait_filled(60)


@pytest.mark.parametrize("kind", [EventKind.LEASE_RELEASED, EventKind.LEASE_EXPIRED])
async def test_lease_end_returns_pooled_holder(
    provisioner: RunningProvisioner, kafka_bootstrap: str, kind: EventKind
) -> None:
    granted = await request_holders(kafka_bootstrap, provisioner.topics, 1, "pooled",
                                    secret_name="db/pw", secret_version=1, timeout_s=60)
    holder_id = granted[0].holder_id

    ended = LifecycleEvent(event=kind, at_ms=1, holder_id="", operation_id=OPERATION,
                           secret_name="db/pw", secret_version=1, detail="", holders=(holder_id,))
    await _send(kafka_bootstrap, provisioner.topics.lifecycle, codec.encode(sign_event(ended, AUDIT_KEY)))
    event = await provisioner.inbox.wait_for(LifecycleEvent, lambda e: e.event == EventKind.HOLDER_RETURNED)

    assert event.holder_id == holder_id
    assert event.operation_id == OPERATION
    assert provisioner.service.backend.is_alive(holder_id)


async def test_holders_released_tears_down(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    granted = await request_holders(kafka_bootstrap, provisioner.topics, 1, "pooled",
                                    secret_name="db/pw", secret_version=1, timeout_s=60)
    holder_id = granted[0].holder_id

    released = LifecycleEvent(event=EventKind.HOLDERS_RELEASED, at_ms=1, holder_id="", operation_id="",
                              secret_name="db/pw", secret_version=1, detail="deleted", holders=(holder_id,))
    await _send(kafka_bootstrap, provisioner.topics.lifecycle, codec.encode(sign_event(released, AUDIT_KEY)))
    await provisioner.inbox.wait_for(
        LifecycleEvent, lambda e: e.event == EventKind.HOLDER_TORN_DOWN and e.holder_id == holder_id
    )

    record = await provisioner.service.registry.get(holder_id)
    assert record is not None
    assert record.state is HolderState.TORN_DOWN


async def test_forged_holders_released_is_dead_lettered(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    # A principal that may write the lifecycle topic but lacks the audit key
    # sends holders_released unsigned and signed by another key. Neither
    # tears the holder down; the same event signed with the audit key does.
    granted = await request_holders(kafka_bootstrap, provisioner.topics, 1, "pooled",
                                    secret_name="db/forged", secret_version=1, timeout_s=60)
    holder_id = granted[0].holder_id
    released = LifecycleEvent(event=EventKind.HOLDERS_RELEASED, at_ms=1, holder_id="", operation_id="",
                              secret_name="db/forged", secret_version=1, detail="forged", holders=(holder_id,))
    unsigned = pack_canonical(released.to_wire())
    wrongly_signed = codec.encode(sign_event(released, SigningKey.generate()))
    lifecycle = provisioner.topics.lifecycle

    await _send(kafka_bootstrap, lifecycle, unsigned)
    await _send(kafka_bootstrap, lifecycle, wrongly_signed)
    unsigned_letter = await provisioner.inbox.wait_for(
        DeadLetter, lambda d: d.source_topic == lifecycle and d.payload_sha256 == hashlib.sha256(unsigned).digest()
    )
    forged_letter = await provisioner.inbox.wait_for(
        DeadLetter,
        lambda d: d.source_topic == lifecycle and d.payload_sha256 == hashlib.sha256(wrongly_signed).digest(),
    )

    assert "LifecycleEvent.signature" in unsigned_letter.reason
    assert "does not verify" in forged_letter.reason
    assert "holders_released" in forged_letter.reason
    assert holder_id in forged_letter.reason
    assert provisioner.service.backend.is_alive(holder_id)
    record = await provisioner.service.registry.get(holder_id)
    assert record is not None
    assert record.state is HolderState.ASSIGNED
    assert not [m for m in provisioner.inbox.messages
                if isinstance(m, LifecycleEvent) and m.event == EventKind.HOLDER_TORN_DOWN and m.holder_id == holder_id]

    await _send(kafka_bootstrap, lifecycle, codec.encode(sign_event(released, AUDIT_KEY)))
    await provisioner.inbox.wait_for(
        LifecycleEvent, lambda e: e.event == EventKind.HOLDER_TORN_DOWN and e.holder_id == holder_id
    )
    record = await provisioner.service.registry.get(holder_id)
    assert record is not None
    assert record.state is HolderState.TORN_DOWN


async def test_killed_holder_reported_failed(provisioner: RunningProvisioner) -> None:
    service = provisioner.service
    holder_id = service.pool.ready_ids()[0]
    status = service.backend.status(holder_id)
    assert status is not None

    os.kill(status.pid, signal.SIGKILL)
    event = await provisioner.inbox.wait_for(
        LifecycleEvent, lambda e: e.event == EventKind.HOLDER_FAILED and e.holder_id == holder_id
    )

    assert "exited" in event.detail
    record = await service.registry.get(holder_id)
    assert record is not None
    assert record.state is HolderState.FAILED
    assert holder_id not in service.pool.ready_ids()
    await service.pool.wait_filled(60)


async def test_shutdown_tears_down_every_holder(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    service = provisioner.service
    granted = await request_holders(kafka_bootstrap, provisioner.topics, 1, "pooled",
                                    secret_name="db/pw", secret_version=1, timeout_s=60)
    ids = service.backend.holder_ids()
    pids = [service.backend.status(holder_id).pid for holder_id in ids]
    assert granted[0].holder_id in ids

    await provisioner.stop()

    assert service.backend.holder_ids() == []
    for holder_id, pid in zip(ids, pids):
        assert not process_exists(pid)
        record = await service.registry.get(holder_id)
        assert record is not None
        assert record.state is HolderState.TORN_DOWN


async def test_malformed_request_dead_lettered(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    garbage = b"not msgpack at all \xc1"
    await _send(kafka_bootstrap, provisioner.topics.provisioner, garbage)

    letter = await provisioner.inbox.wait_for(DeadLetter)

    assert letter.source_topic == provisioner.topics.provisioner
    assert letter.payload_size == len(garbage)
    assert letter.payload_sha256 == hashlib.sha256(garbage).digest()


async def test_request_over_limit_fails(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    with pytest.raises(ServiceUnavailable, match=r"9 holders exceed --max-holders \(8\), so retrying cannot help"):
        await request_holders(kafka_bootstrap, provisioner.topics, 9, "pooled", timeout_s=60)


async def test_stored_holders_count_toward_limit(provisioner: RunningProvisioner, kafka_bootstrap: str) -> None:
    # Pooled holders handed out keep their fragments, and so their place under the limit.
    assigned = await request_holders(kafka_bootstrap, provisioner.topics, 4, "pooled", timeout_s=60)
    assert len(assigned) == 4

    with pytest.raises(ServiceUnavailable) as raised:
        await request_holders(kafka_bootstrap, provisioner.topics, 5, "pooled", timeout_s=60)

    message = str(raised.value)
    assert "5 more holders would exceed --max-holders (8)" in message
    assert "pooled holders that keep stored fragments" in message
    assert "retrying cannot help" not in message


async def test_request_without_provisioner_times_out(kafka_bootstrap: str, kafka_admin, topic_prefix: str) -> None:
    with pytest.raises(ServiceUnavailable, match="did not reply"):
        await request_holders(kafka_bootstrap, Topics(topic_prefix), 1, "pooled", timeout_s=1)
