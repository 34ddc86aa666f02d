"""Holder actions in the services' audit trail, and requests refused while the audit log is unavailable."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from provisioner.registry import HolderRegistry, HolderState
from schemas import codec
from schemas.messages import ErrorReply, FetchCommand, LeaseReply
from shardbus.cli.main import main
from shardbus.cli.secret_commands import open_store
from shardbus.demo_watch import LifecycleWatcher
from shardbus.errors import Denied

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Bound on any one wait: a replacement needs a dead process noticed (one
#: heartbeat interval, 2 s) and a pooled holder, and the audit outbox retries
#: with a backoff of up to 30 s.
WAIT_S = 60.0


@pytest.fixture
def audit_env(shardbus_deployment, monkeypatch):
    settings = shardbus_deployment.settings
    monkeypatch.setenv("SHARDBUS_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("SHARDBUS_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("SHARDBUS_HOME", str(settings.home))
    return shardbus_deployment


async def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `shardbus audit ...` in a thread (the CLI runs its own event loop); return its status and output."""
    capsys.readouterr()
    status = await asyncio.to_thread(main, ["audit", *argv])
    return status, capsys.readouterr().out


async def _replay_jsonl(capsys, *argv: str) -> list[dict]:
    status, output = await _cli(capsys, "replay", "--format", "jsonl", *argv)
    assert status == 0, output
    return [json.loads(line) for line in output.splitlines()]


async def _wait_until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S:g} s waiting until {what}")
        await asyncio.sleep(0.2)


async def _await_ended_and_recorded(deployment, holder_ids) -> None:
    """Wait until every holder is failed or torn down and the provisioner's audit outbox is written."""
    settings = deployment.settings
    redis = Redis.from_url(settings.redis_url)
    registry = HolderRegistry(redis, settings.topic_prefix)

    async def ended() -> bool:
        records = [await registry.get(holder_id) for holder_id in holder_ids]
        return all(r is not None and r.state in (HolderState.FAILED, HolderState.TORN_DOWN) for r in records)

    async def outbox_written() -> bool:
        return await redis.llen(f"{settings.topic_prefix}:holders:audit-outbox") == 0

    try:
        await _wait_until(ended, f"holders {', '.join(holder_ids)} ended")
        await _wait_until(outbox_written, "the provisioner's audit outbox is written")
    finally:
        await redis.aclose()


def _holder_timeline(items: list[dict], holder_id: str) -> dict:
    [timeline] = [item for item in items if item["type"] == "holder"]
    assert timeline["holder_id"] == holder_id
    return timeline


def _signed_actions(timeline: dict) -> list[tuple[str, str]]:
    return [(event["source"], event["action"]) for event in timeline["events"] if event["source"] != "lifecycle"]


async def test_failed_holder_timeline(audit_env, capsys):
    deployment = audit_env
    secret = secrets.token_bytes(32)
    stored = await deployment.put("db/trail", secret, fragments=3, threshold=2)
    async with deployment.client() as client:
        async with client.lease("db/trail") as leased:
            assert bytes(leased) == secret
    victim = stored.holders[0]
    async with LifecycleWatcher(deployment.settings.kafka_bootstrap, deployment.topics) as events:
        await deployment.signal_holders([victim], signal.SIGKILL)
        replaced = await events.wait_for("holder_replaced", count=1, timeout_s=WAIT_S)
    assert [event.holders[0] for event in replaced] == [victim]
    replacement = replaced[0].holder_id
    async with open_store(deployment.settings) as store:
        await store.delete("db/trail")
    await _await_ended_and_recorded(deployment, [*stored.holders, replacement])

    status, output = await _cli(capsys, "verify")
    assert status == 0, output
    assert "BREAK" not in output
    assert "partition 3:" in output, "the provisioner wrote no audit record"

    failed = _holder_timeline(await _replay_jsonl(capsys, "--holder", victim), victim)
    actions = _signed_actions(failed)
    assert actions[0] == ("provisioner", "holder.provisioned")
    assert ("authorizer", "fetch.sent") in actions
    # At 2-of-3 the victim's fragment may come third, after the secret was
    # rebuilt, and the reassembler then records it as ignored.
    reassembler_actions = {action for source, action in actions if source == "reassembler"}
    assert reassembler_actions & {"fragment.received", "fragment.ignored"}
    assert ("provisioner", "holder.returned") in actions
    assert actions[-2:] == [("provisioner", "holder.failed"), ("authorizer", "holder.replaced")]
    assert all(event["verified"] is True for event in failed["events"] if event["source"] != "lifecycle")
    assert (failed["status"], failed["provisioned"], failed["secrets"]) == ("failed", ["pooled"], ["db/trail v1"])
    assert failed["replaced"] is True
    assert failed["anomalies"] == []

    restored = _holder_timeline(await _replay_jsonl(capsys, "--holder", replacement), replacement)
    assert _signed_actions(restored) == [
        ("provisioner", "holder.provisioned"), ("authorizer", "fragment.restored"), ("provisioner", "holder.torn_down"),
    ]
    assert restored["status"] == "torn down"
    assert restored["anomalies"] == []

    status, output = await _cli(capsys, "replay", "--holder", victim)
    assert status == 0, output
    assert f"holder {victim}  provisioned pooled  secrets db/trail v1  [failed]" in output.splitlines()


async def test_per_operation_holders_in_timeline(audit_env, capsys):
    deployment = audit_env
    secret = secrets.token_bytes(24)
    await deployment.put("db/once", secret, fragments=3, threshold=2, lifecycle="per_operation")
    async with deployment.client() as client:
        granted = await client.request("db/once")
        assert bytes(granted.secret) == secret
        await client.release(granted)
    operation_id = granted.operation_id
    [operation] = [item for item in await _replay_jsonl(capsys, "--operation", operation_id)
                   if item["type"] == "operation"]
    holders = operation["holders_asked"]
    assert len(holders) == 3
    await _await_ended_and_recorded(deployment, holders)

    [operation] = [item for item in await _replay_jsonl(capsys, "--operation", operation_id)
                   if item["type"] == "operation"]
    assert operation["status"] == "complete"
    assert operation["holders_loaded"] == operation["holders_torn_down"] == sorted(holders)
    assert operation["anomalies"] == []

    timeline = _holder_timeline(await _replay_jsonl(capsys, "--holder", holders[0]), holders[0])
    actions = _signed_actions(timeline)
    assert actions[0] == ("provisioner", "holder.provisioned")
    assert actions[-1] == ("provisioner", "holder.torn_down")
    assert ("authorizer", "fetch.sent") in actions
    assert (timeline["provisioned"], timeline["status"]) == (["per_operation"], "torn down")
    assert {event["operation_id"] for event in timeline["events"] if event["source"] != "lifecycle"} == {operation_id}


async def _tail(bootstrap: str, topics: list[str]) -> AIOKafkaConsumer:
    """Return a consumer of every partition of `topics`, positioned at their current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    await consumer._client.force_metadata_update()  # noqa: SLF001
    partitions = [TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for partition in partitions:
        await consumer.position(partition)
    return consumer


async def _read_to_end(consumer: AIOKafkaConsumer) -> list:
    """Return the messages from the consumer's position to the current end of each partition."""
    found = []
    ends = await consumer.end_offsets(list(consumer.assignment()))
    deadline = time.monotonic() + WAIT_S
    while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
        assert time.monotonic() < deadline, "timed out reading to the end of the topics"
        for records in (await consumer.getmany(timeout_ms=200)).values():
            found.extend(codec.decode(record.value) for record in records)
    return found


async def test_request_refused_without_audit(audit_env, audit_writes, capsys):
    deployment = audit_env
    bootstrap, topics = deployment.settings.kafka_bootstrap, deployment.topics
    secret = secrets.token_bytes(16)
    stored = await deployment.put("db/closed", secret, fragments=3, threshold=2)
    holders = await _tail(bootstrap, [topics.holder(h) for h in stored.holders])
    replies = await _tail(bootstrap, [topics.replies("billing")])
    try:
        await audit_writes.refuse(topics.audit)
        async with deployment.client() as client:
            with pytest.raises(Denied) as denied:
                await client.request("db/closed")
        sent = await _read_to_end(holders)
        answered = await _read_to_end(replies)
    finally:
        await holders.stop()
        await replies.stop()

    assert denied.value.reason == "audit_unavailable"
    assert "audit log" in denied.value.detail
    assert [m for m in sent if isinstance(m, FetchCommand)] == []
    assert [type(m) for m in answered] == [ErrorReply]
    assert not any(isinstance(m, LeaseReply) for m in answered)

    await audit_writes.accept(topics.audit)
    async with deployment.client() as client:
        async with client.lease("db/closed") as leased:
            assert bytes(leased) == secret
    status, output = await _cli(capsys, "verify")
    assert status == 0, output
