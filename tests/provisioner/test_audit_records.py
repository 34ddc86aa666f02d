"""The provisioner's audit records on the real broker, with real holder processes and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from provisioner.api import ProvisionerClient, request_holders
from provisioner.registry import HolderState
from provisioner_harness import (
    TEST_CONFIG,
    RunningProvisioner,
    eventually,
    process_exists,
    read_audit_records,
    start_provisioner,
)
from schemas import codec
from schemas.audit import AuditRecord
from schemas.holders import EventKind, LifecycleEvent
from schemas.topics import Topics
from shardbus.audit import ROLE_PARTITIONS, AuditUnavailable
from shardbus.audit.chain import load_signing_key
from shardbus.audit.events import sign_event
from shardbus.cli.main import main
from shardbus.deployment import init_deployment

pytestmark = pytest.mark.integration

PARTITION = ROLE_PARTITIONS["provisioner"]


@dataclass
class Audited:
    """A provisioner whose audit key comes from a deployment folder that the CLI can use."""

    running: RunningProvisioner
    bootstrap: str
    home: Path

    @property
    def topics(self) -> Topics:
        return self.running.topics

    async def records(self) -> list[AuditRecord]:
        """Wait until the audit outbox is empty, then return the provisioner's audit records."""
        service = self.running.service

        async def outbox_empty() -> bool:
            return await service.audit.outbox_size() == 0

        await eventually(outbox_empty, "the audit outbox is written")
        return await read_audit_records(self.bootstrap, self.topics, PARTITION)

    async def lifecycle(self, event: LifecycleEvent) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            # The provisioner acts only on events signed with the deployment's audit key.
            signed = sign_event(event, load_signing_key(self.home / "audit.key"))
            await producer.send_and_wait(self.topics.lifecycle, codec.encode(signed), key=b"test")
        finally:
            await producer.stop()

    async def wait_for_event(self, kind: EventKind, holder_id: str) -> LifecycleEvent:
        return await self.running.inbox.wait_for(
            LifecycleEvent, lambda e: e.event == kind and e.holder_id == holder_id
        )


@pytest.fixture
async def audited(kafka_bootstrap: str, kafka_admin, redis: Redis, topic_prefix: str, tmp_path: Path,
                  monkeypatch) -> AsyncIterator[Audited]:
    home = tmp_path / "deployment"
    init_deployment(home)
    monkeypatch.setenv("SHARDBUS_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SHARDBUS_TOPIC_PREFIX", topic_prefix)
    monkeypatch.setenv("SHARDBUS_HOME", str(home))
    running = await start_provisioner(kafka_bootstrap, redis, Topics(topic_prefix), tmp_path / "holder-logs",
                                      TEST_CONFIG, audit_key=load_signing_key(home / "audit.key"))
    try:
        yield Audited(running, kafka_bootstrap, home)
    finally:
        if not running.task.done():
            await running.stop()
        await running.inbox.stop()


async def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `shardbus audit ...` in a thread (the CLI runs its own event loop); return its status and output."""
    capsys.readouterr()
    status = await asyncio.to_thread(main, ["audit", *argv])
    return status, capsys.readouterr().out


def _lifecycle_event(kind: EventKind, operation_id: str, holders: tuple[str, ...]) -> LifecycleEvent:
    return LifecycleEvent(event=kind, at_ms=1, holder_id="", operation_id=operation_id, secret_name="db/pw",
                          secret_version=1, detail="sent by the test", holders=holders)


def _actions_of(records: list[AuditRecord], holder_id: str) -> list[str]:
    return [record.action for record in records if record.holder_id == holder_id]


async def test_holder_actions_audited(audited: Audited, capsys) -> None:
    service = audited.running.service
    operation = uuid.uuid4().hex
    lease = uuid.uuid4().hex
    kept, released = (h.holder_id for h in await request_holders(
        audited.bootstrap, audited.topics, 2, "pooled", secret_name="db/pw", secret_version=1, timeout_s=60,
    ))
    async with ProvisionerClient(audited.bootstrap, audited.topics) as client:
        [ephemeral] = await client.request(1, "per_operation", operation_id=operation, secret_name="db/pw",
                                           secret_version=1, timeout_s=60)
    ephemeral_id = ephemeral.holder_id

    await audited.lifecycle(_lifecycle_event(EventKind.LEASE_RELEASED, lease, (kept,)))
    await audited.wait_for_event(EventKind.HOLDER_RETURNED, kept)
    await audited.lifecycle(_lifecycle_event(EventKind.OPERATION_COMPLETED, operation, (ephemeral_id,)))
    await audited.wait_for_event(EventKind.HOLDER_TORN_DOWN, ephemeral_id)
    os.kill(service.backend.status(kept).pid, signal.SIGKILL)
    await audited.wait_for_event(EventKind.HOLDER_FAILED, kept)
    await audited.lifecycle(_lifecycle_event(EventKind.HOLDERS_RELEASED, "", (released,)))
    await audited.wait_for_event(EventKind.HOLDER_TORN_DOWN, released)
    records = await audited.records()

    assert _actions_of(records, kept) == ["holder.provisioned", "holder.returned", "holder.failed"]
    assert _actions_of(records, released) == ["holder.provisioned", "holder.torn_down"]
    assert _actions_of(records, ephemeral_id) == ["holder.provisioned", "holder.torn_down"]
    assert {record.actor for record in records} == {"provisioner"}
    by_action = {(record.holder_id, record.action): record for record in records}
    provisioned = by_action[ephemeral_id, "holder.provisioned"]
    assert (provisioned.outcome, provisioned.operation_id) == ("per_operation", operation)
    assert (provisioned.secret_name, provisioned.secret_version) == ("db/pw", 1)
    assert by_action[ephemeral_id, "holder.torn_down"].operation_id == operation
    assert by_action[kept, "holder.provisioned"].outcome == "pooled"
    assert by_action[kept, "holder.returned"].operation_id == lease
    assert "exited" in by_action[kept, "holder.failed"].detail
    assert all(record.reason == "" for record in records)

    status, output = await _cli(capsys, "verify")
    assert status == 0, output
    assert "BREAK" not in output
    assert f"partition {PARTITION}:" in output

    status, output = await _cli(capsys, "replay", "--holder", kept, "--format", "jsonl")
    assert status == 0, output
    [timeline] = [item for item in map(json.loads, output.splitlines()) if item["type"] == "holder"]
    signed = [event for event in timeline["events"] if event["source"] == "provisioner"]
    assert [event["action"] for event in signed] == ["holder.provisioned", "holder.returned", "holder.failed"]
    assert all(event["verified"] is True for event in signed)
    assert (timeline["holder_id"], timeline["status"], timeline["provisioned"]) == (kept, "failed", ["pooled"])
    # Nothing replaces a failed holder here, because no authorizer runs.
    assert [anomaly["kind"] for anomaly in timeline["anomalies"]] == ["holder_not_replaced"]


async def test_provision_refused_without_audit(audited: Audited, audit_writes, capsys) -> None:
    service = audited.running.service
    ready_before = set(service.pool.ready_ids())
    await audit_writes.refuse(audited.topics.audit)

    with pytest.raises(AuditUnavailable, match="audit log is unavailable") as refused:
        await request_holders(audited.bootstrap, audited.topics, 1, "pooled", secret_name="db/pw",
                              secret_version=1, timeout_s=60)

    assert "audit_unavailable:" in str(refused.value)
    assert await service.registry.ids_in_state(HolderState.ASSIGNED) == []
    assert ready_before <= set(service.pool.ready_ids())
    for holder_id in ready_before:
        record = await service.registry.get(holder_id)
        assert record is not None
        assert record.state is HolderState.POOL

    await audit_writes.accept(audited.topics.audit)
    [granted] = await request_holders(audited.bootstrap, audited.topics, 1, "pooled", secret_name="db/pw",
                                      secret_version=1, timeout_s=60)
    await audited.running.inbox.wait_for(LifecycleEvent, lambda e: e.event == EventKind.HOLDER_PROVISIONED)
    provisioned = [m for m in audited.running.inbox.messages
                   if isinstance(m, LifecycleEvent) and m.event == EventKind.HOLDER_PROVISIONED]
    assert [event.holders for event in provisioned] == [(granted.holder_id,)]
    records = await audited.records()
    assert [(record.action, record.holder_id) for record in records] == [("holder.provisioned", granted.holder_id)]
    status, output = await _cli(capsys, "verify")
    assert status == 0, output


async def test_teardown_goes_ahead_without_audit(audited: Audited, audit_writes, capsys) -> None:
    service = audited.running.service
    operation = uuid.uuid4().hex
    async with ProvisionerClient(audited.bootstrap, audited.topics) as client:
        [holder] = await client.request(1, "per_operation", operation_id=operation, secret_name="db/pw",
                                        secret_version=1, timeout_s=60)
    pid = service.backend.status(holder.holder_id).pid
    await audit_writes.refuse(audited.topics.audit)

    await audited.lifecycle(_lifecycle_event(EventKind.OPERATION_COMPLETED, operation, (holder.holder_id,)))
    await audited.wait_for_event(EventKind.HOLDER_TORN_DOWN, holder.holder_id)

    assert not process_exists(pid)
    record = await service.registry.get(holder.holder_id)
    assert record is not None
    assert record.state is HolderState.TORN_DOWN
    assert await service.audit.outbox_size() >= 1

    await audit_writes.accept(audited.topics.audit)
    records = await audited.records()
    assert _actions_of(records, holder.holder_id) == ["holder.provisioned", "holder.torn_down"]
    [torn_down] = [r for r in records if r.action == "holder.torn_down"]
    assert torn_down.operation_id == operation
    status, output = await _cli(capsys, "verify")
    assert status == 0, output
