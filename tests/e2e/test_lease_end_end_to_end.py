"""How a lease ends in the whole deployment: a signed release, forged releases, an expiry, and their replay."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from provisioner.registry import HolderRegistry, HolderState
from schemas import codec
from schemas.audit import AuditRecord, DeadLetter
from schemas.base import Message
from schemas.holders import EventKind, LifecycleEvent
from shardbus.cli.main import main
from shardbus.crypto.signing import SigningKey
from shardbus.errors import DecodeError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Generous bound for a service to act on a record on a loaded machine.
WAIT_S = 90.0


class TopicLog:
    """Reads one topic from its beginning and keeps every record that decodes."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="earliest")
        self._topic = topic
        self.messages: list[Message] = []

    async def __aenter__(self) -> TopicLog:
        await self._consumer.start()
        await self._consumer._client.force_metadata_update()  # noqa: SLF001
        partitions = [TopicPartition(self._topic, p) for p in sorted(self._consumer.partitions_for_topic(self._topic)
                                                                      or {0})]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def _read(self) -> None:
        for records in (await self._consumer.getmany(timeout_ms=200)).values():
            for record in records:
                try:
                    self.messages.append(codec.decode(record.value or b""))
                except DecodeError:
                    continue

    async def wait_for(self, matching, what: str, *, count: int = 1) -> list[Message]:
        """Read until `count` messages satisfy `matching`; return them."""
        deadline = time.monotonic() + WAIT_S
        while len(found := [m for m in self.messages if matching(m)]) < count:
            assert time.monotonic() < deadline, f"timed out waiting for {what} on {self._topic}"
            await self._read()
        return found

    async def read_to_end(self) -> list[Message]:
        """Read every record written before this call; return every message read so far."""
        assigned = list(self._consumer.assignment())
        ends = await self._consumer.end_offsets(assigned)
        deadline = time.monotonic() + WAIT_S
        while any([await self._consumer.position(p) < ends[p] for p in assigned]):
            assert time.monotonic() < deadline, f"timed out reading {self._topic} to its end"
            await self._read()
        return self.messages


def lease_event(kind: EventKind, operation_id: str):
    return lambda m: isinstance(m, LifecycleEvent) and m.event == kind and m.operation_id == operation_id


def audit_record(action: str, operation_id: str):
    return lambda m: isinstance(m, AuditRecord) and m.action == action and m.operation_id == operation_id


@pytest.fixture
def audit_env(shardbus_deployment, monkeypatch):
    settings = shardbus_deployment.settings
    monkeypatch.setenv("SHARDBUS_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("SHARDBUS_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("SHARDBUS_HOME", str(settings.home))
    return shardbus_deployment


def late_lease_ends(items: list[dict]) -> list[dict]:
    """Return the lease ends that the replay printed after their timeline.

    The lifecycle event of a lease's end repeats its signed record, so the
    replay must fold it into the timeline rather than print it late.
    """
    return [item for item in items
            if item["type"] == "late_event" and item["action"] in ("lease.released", "lease.expired")]


async def replay_operation(capsys, operation_id: str) -> list[dict]:
    """Run `shardbus audit replay` for one operation in a thread; return its JSON lines."""
    capsys.readouterr()
    status = await asyncio.to_thread(main, ["audit", "replay", "--format", "jsonl", "--operation", operation_id])
    output = capsys.readouterr().out
    assert status == 0, output
    return [json.loads(line) for line in output.splitlines()]


async def test_release_audited_and_replayed(audit_env, capsys):
    deployment = audit_env
    secret = secrets.token_bytes(24)
    await deployment.put("db/released", secret, fragments=3, threshold=2)
    async with deployment.client() as client:
        granted = await client.request("db/released")
        assert bytes(granted.secret) == secret
        await client.release(granted)
    operation_id = granted.operation_id

    async with TopicLog(deployment.settings.kafka_bootstrap, deployment.topics.lifecycle) as lifecycle:
        (event,) = await lifecycle.wait_for(lease_event(EventKind.LEASE_RELEASED, operation_id), "lease_released")
    assert len(event.holders) == 3

    items = await replay_operation(capsys, operation_id)
    (timeline,) = [item for item in items if item["type"] == "operation"]
    assert timeline["status"] == "complete"
    released = [e for e in timeline["events"] if e["action"] == "lease.released"]
    assert [(e["source"], e["outcome"], e["verified"]) for e in released] == [("authorizer", "released", True)]
    assert timeline["anomalies"] == []
    assert late_lease_ends(items) == []


async def test_forged_releases_leave_lease_and_holders(shardbus_deployment):
    deployment = shardbus_deployment
    topics = deployment.topics
    secret = secrets.token_bytes(24)
    stored = await deployment.put("db/forged-release", secret, fragments=3, threshold=2)
    async with deployment.client() as client:
        granted = await client.request("db/forged-release")
        assert bytes(granted.secret) == secret
        operation_id = granted.operation_id
        async with deployment.client("intruder") as intruder:
            await intruder.release(granted)
        async with deployment.client("billing", key=SigningKey.generate()) as impostor:
            await impostor.release(granted)

        async with TopicLog(deployment.settings.kafka_bootstrap, topics.audit) as audit:
            rejected = await audit.wait_for(audit_record("lease.release_rejected", operation_id),
                                            "two rejected releases", count=2)
        assert sorted((r.app_id, r.reason) for r in rejected) == [
            ("billing", "bad_signature"), ("intruder", "not_lease_owner"),
        ]
        async with TopicLog(deployment.settings.kafka_bootstrap, topics.deadletter) as deadletter:
            letters = await deadletter.wait_for(
                lambda m: isinstance(m, DeadLetter) and m.source_topic == topics.requests and operation_id in m.reason,
                "two dead letters", count=2,
            )
        assert sorted(letter.reason.split(":")[0] for letter in letters) == ["bad_signature", "not_lease_owner"]
        await _assert_holders_serving(deployment, stored.holders)

        # The owner's release comes after the forged ones on the same partition and is the only one announced.
        await client.release(granted)
        async with TopicLog(deployment.settings.kafka_bootstrap, topics.lifecycle) as lifecycle:
            await lifecycle.wait_for(lease_event(EventKind.LEASE_RELEASED, operation_id), "lease_released")
            events = await lifecycle.read_to_end()
        assert len([e for e in events if lease_event(EventKind.LEASE_RELEASED, operation_id)(e)]) == 1

        async with client.lease("db/forged-release") as leased:
            assert bytes(leased) == secret


async def test_unreleased_lease_expires_in_replay(audit_env, capsys):
    deployment = audit_env
    await deployment.put("db/expiring", secrets.token_bytes(16), fragments=3, threshold=2)
    async with deployment.client("shortlived") as client:
        granted = await client.request("db/expiring")
    granted.release()  # Wiped here without a ReleaseRequest, as by an app that crashed.
    operation_id = granted.operation_id

    async with TopicLog(deployment.settings.kafka_bootstrap, deployment.topics.lifecycle) as lifecycle:
        await lifecycle.wait_for(lease_event(EventKind.LEASE_EXPIRED, operation_id), "lease_expired")

    items = await replay_operation(capsys, operation_id)
    (timeline,) = [item for item in items if item["type"] == "operation"]
    assert timeline["status"] == "complete"
    expired = [e for e in timeline["events"] if e["action"] == "lease.expired"]
    assert [(e["source"], e["outcome"], e["verified"]) for e in expired] == [("reassembler", "expired", True)]
    kinds = [anomaly["kind"] for anomaly in timeline["anomalies"]]
    assert "lease_not_ended" not in kinds
    assert kinds == ["lease_expired"]
    assert late_lease_ends(items) == []


async def _assert_holders_serving(deployment, holder_ids) -> None:
    """Check that each holder is still assigned in the registry and its process runs."""
    from redis.asyncio import Redis

    redis = Redis.from_url(deployment.settings.redis_url)
    try:
        registry = HolderRegistry(redis, deployment.settings.topic_prefix)
        for holder_id in holder_ids:
            record = await registry.get(holder_id)
            assert record is not None and record.state is HolderState.ASSIGNED, (holder_id, record)
            os.kill(record.pid, 0)  # Raises ProcessLookupError when the holder is gone.
    finally:
        await redis.aclose()
