"""The whole stack as separate processes: store, request over Kafka, lease or error."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import codec
from schemas.messages import AuditRecord, ErrorReply, HolderAck, LeaseReply, OperationRequest, StoreFragment
from shardbus.crypto import aead, envelope, signing
from shardbus.crypto.keys import MasterKey
from shardbus.crypto.signing import SigningKey
from shardbus.demo_watch import LifecycleWatcher
from shardbus.errors import Denied
from shardbus.sharing.fragmentation import Policy, split_secret

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_lease_delivered(shardbus_deployment):
    secret = secrets.token_bytes(32)
    await shardbus_deployment.put("db/lease-delivered", secret)
    async with shardbus_deployment.client() as client:
        async with client.lease("db/lease-delivered") as leased:
            assert bytes(leased) == secret
        assert leased == bytearray(len(secret)), "the lease buffer was not wiped"


async def test_large_secret_leased(shardbus_deployment):
    secret = secrets.token_bytes(64 * 1024)  # above the direct limit: the krawczyk scheme
    await shardbus_deployment.put("db/large", secret)
    async with shardbus_deployment.client() as client:
        async with client.lease("db/large") as leased:
            assert bytes(leased) == secret


async def test_lease_with_dead_holders(shardbus_deployment):
    secret = secrets.token_bytes(20)
    stored = await shardbus_deployment.put("db/two-dead", secret, fragments=5, threshold=3)
    await shardbus_deployment.signal_holders(stored.holders[:2], signal.SIGKILL)
    async with shardbus_deployment.client() as client:
        async with client.lease("db/two-dead") as leased:
            assert bytes(leased) == secret


async def test_dead_holders_replaced(shardbus_deployment):
    """Holders killed below the threshold are replaced from backups, and leasing works again."""
    secret = secrets.token_bytes(16)
    stored = await shardbus_deployment.put("db/three-dead", secret, fragments=4, threshold=2)
    killed = stored.holders[:3]
    settings, topics = shardbus_deployment.settings, shardbus_deployment.topics
    async with LifecycleWatcher(settings.kafka_bootstrap, topics) as events:
        await shardbus_deployment.signal_holders(killed, signal.SIGKILL)
        replaced = await events.wait_for("holder_replaced", count=len(killed), timeout_s=90)
    assert len(replaced) == len(killed), "not every dead holder was replaced"
    async with shardbus_deployment.client() as client:
        async with client.lease("db/three-dead") as leased:
            assert bytes(leased) == secret


async def test_window_timeout_names_silent_holders(shardbus_deployment, stopped_holders):
    stored = await shardbus_deployment.put("db/silent", b"y" * 16, fragments=5, threshold=3)
    silent = stored.holders[:3]
    await stopped_holders(silent)
    async with shardbus_deployment.client() as client:
        with pytest.raises(Denied) as denied:
            await client.request("db/silent")
    assert denied.value.reason == "fragment_missing"
    for holder_id in silent:
        assert holder_id in denied.value.detail


async def test_corrupted_fragments_named(shardbus_deployment):
    settings = shardbus_deployment.settings
    stored = await shardbus_deployment.put("db/corrupted", b"z" * 16, fragments=3, threshold=2)
    master_key = MasterKey.load(settings.master_key_path)
    # Fragments of another secret with the same ids are well formed, but do
    # not match the commitments recorded for the real one.
    forged = split_secret(
        b"not the secret", Policy(fragments=3, threshold=2),
        secret_id="db/corrupted", version=stored.version, verify_key=secrets.token_bytes(32),
    )
    victims = stored.holders[:2]
    commands = []
    for fragment, holder_id in zip(forged.fragments, victims):
        sealed = aead.seal_fragment(
            master_key.fragment_key("db/corrupted", stored.version, fragment.index, holder_id),
            fragment.to_bytes(), secret_id="db/corrupted", version=stored.version,
            index=fragment.index, holder_id=holder_id, key_version=master_key.version,
        )
        commands.append(StoreFragment(
            holder_id=holder_id, secret_name="db/corrupted", secret_version=stored.version,
            fragment_index=fragment.index, key_version=master_key.version,
            sealed_fragment=sealed, request_id=uuid.uuid4().hex,
        ))
    await _send_and_await_acks(shardbus_deployment, commands)

    async with shardbus_deployment.client() as client:
        with pytest.raises(Denied) as denied:
            await client.request("db/corrupted")
    assert denied.value.reason == "fragment_corrupted"
    for holder_id in victims:
        assert holder_id in denied.value.detail


async def test_app_without_grant_denied(shardbus_deployment):
    await shardbus_deployment.put("db/not-yours", b"w" * 16)
    async with shardbus_deployment.client("intruder") as client:
        with pytest.raises(Denied) as denied:
            await client.request("db/not-yours")
    assert denied.value.reason == "not_granted"


async def test_bad_signature_denied(shardbus_deployment):
    await shardbus_deployment.put("db/signed", b"v" * 16)
    async with shardbus_deployment.client("billing", key=SigningKey.generate()) as client:
        with pytest.raises(Denied) as denied:
            await client.request("db/signed")
    assert denied.value.reason == "bad_signature"


async def test_replayed_operation_denied(shardbus_deployment):
    """A copy of a completed request is denied and audited; the app keeps its one reply."""
    await shardbus_deployment.put("db/replayed", b"u" * 16)
    settings, topics = shardbus_deployment.settings, shardbus_deployment.topics
    reply_keys = envelope.EnvelopeKeyPair.generate("x25519")
    unsigned = OperationRequest(
        operation_id=uuid.uuid4().hex, app_id="billing", secret_name="db/replayed", operation="lease",
        reply_public_key=reply_keys.public_bytes(), reply_kem="x25519",
        issued_at_ms=int(time.time() * 1000), signature=b"",
    )
    signature = signing.sign(shardbus_deployment.signing_key("billing"), unsigned.signing_bytes())
    request = codec.encode(OperationRequest(**{**_fields(unsigned), "signature": signature}))

    replies = await _tail_consumer(settings.kafka_bootstrap, topics.replies("billing"))
    audit = await _tail_consumer(settings.kafka_bootstrap, topics.audit)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topics.requests, request, key=unsigned.operation_id.encode())
        first = await _next_reply(replies, unsigned.operation_id)
        await producer.send_and_wait(topics.requests, request, key=unsigned.operation_id.encode())
        denial = await _next_audit(audit, unsigned.operation_id, reason="replayed_operation")
        later = await _drain_replies(replies, unsigned.operation_id)
    finally:
        await producer.stop()
        await replies.stop()
        await audit.stop()
    assert isinstance(first, LeaseReply)
    assert denial.action == "request.denied"
    assert later == [], "a replayed request produced a second reply for one operation"


async def test_per_operation_holders_torn_down(shardbus_deployment):
    from aiokafka.admin import AIOKafkaAdminClient

    secret = secrets.token_bytes(24)
    await shardbus_deployment.put("payments/once", secret, fragments=3, threshold=2, lifecycle="per_operation")
    settings, topics = shardbus_deployment.settings, shardbus_deployment.topics
    async with LifecycleWatcher(settings.kafka_bootstrap, topics) as events:
        async with shardbus_deployment.client() as client:
            async with client.lease("payments/once") as leased:
                assert bytes(leased) == secret
        torn_down = await events.wait_for("holder_torn_down", count=3, timeout_s=30)
    holder_ids = {event.holder_id for event in torn_down}
    assert len(holder_ids) == 3

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    for holder_id in holder_ids:
        assert topics.holder(holder_id) not in existing
        assert not _holder_process_exists(holder_id), f"holder {holder_id} still runs"


def _holder_process_exists(holder_id: str) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if holder_id.encode() in handle.read():
                    return True
        except OSError:
            continue
    return False


def _fields(message) -> dict:
    import dataclasses

    return {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}


async def _tail_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """Return a consumer of every partition of `topic`, positioned at its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    await consumer._client.force_metadata_update()  # noqa: SLF001
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for partition in partitions:
        await consumer.position(partition)
    return consumer


async def _next_audit(consumer: AIOKafkaConsumer, operation_id: str, *, reason: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for record in records:
                entry = codec.decode(record.value, AuditRecord)
                if entry.operation_id == operation_id and entry.reason == reason:
                    return entry
    raise AssertionError(f"no audit record with reason {reason} for operation {operation_id}")


async def _drain_replies(consumer: AIOKafkaConsumer, operation_id: str) -> list:
    """Return the replies for `operation_id` up to the topic's current end."""
    found = []
    end_offsets = await consumer.end_offsets(list(consumer.assignment()))
    while [p for p, end in end_offsets.items() if await consumer.position(p) < end]:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for record in records:
                reply = codec.decode(record.value, (LeaseReply, ErrorReply))
                if reply.operation_id == operation_id:
                    found.append(reply)
    return found


async def _next_reply(consumer: AIOKafkaConsumer, operation_id: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                reply = codec.decode(record.value, (LeaseReply, ErrorReply))
                if reply.operation_id == operation_id:
                    return reply
    raise AssertionError(f"no reply for operation {operation_id} within {timeout_s} s")


async def _send_and_await_acks(shardbus_deployment, commands) -> None:
    settings, topics = shardbus_deployment.settings, shardbus_deployment.topics
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(topics.acks, p) for p in consumer.partitions_for_topic(topics.acks) or {0}]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        waiting = {c.request_id for c in commands}
        for command in commands:
            await producer.send_and_wait(topics.holder(command.holder_id), codec.encode(command))
        deadline = time.monotonic() + 20
        while waiting and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    message = codec.decode(record.value)
                    if isinstance(message, HolderAck) and message.request_id in waiting:
                        assert message.ok, message.error
                        waiting.discard(message.request_id)
        assert not waiting, "holders did not acknowledge the forged fragments"
    finally:
        await producer.stop()
        await consumer.stop()
    await asyncio.sleep(0)
