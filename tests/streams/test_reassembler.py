"""The reassembler against a real Kafka broker and Redis server, fed synthetic holder responses.

The fragments come from the fragmentation core and are sealed to the
reassembler as a holder seals them. The authorizer's own Planner builds the
plans.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
from redis.asyncio import Redis

from schemas.messages import (
    AuditRecord,
    DeadLetter,
    ErrorReply,
    EventKind,
    FragmentResponse,
    LeaseReply,
    LifecycleEvent,
    OperationPlan,
    Reason,
)
from schemas.sealed import LeasePayload, fragment_transit_info, lease_info
from shardbus.crypto import envelope
from shardbus.sharing.fragment import Fragment
from streams import reassembler
from streams.planning import FetchTarget, Planner
from stream_support import (
    Deployment,
    Producer,
    StoredSecret,
    create_topics,
    make_deployment,
    readers,
    running,
    signed_request,
    store_secret,
)

pytestmark = pytest.mark.integration

SECRET = b"the reassembled secret"
HOLDERS = ["h-one", "h-two", "h-three"]


@dataclass
class Operation:
    plan: OperationPlan
    reply_keys: envelope.EnvelopeKeyPair


@dataclass
class Env:
    dep: Deployment
    producer: Producer
    stored: StoredSecret

    def new_operation(self, *, window_ms: int = 30_000) -> Operation:
        request, reply_keys = signed_request("billing", self.dep.signing_keys["billing"], self.stored.name)
        planner = Planner(self.dep.master_key, self.dep.reassembler.public_key)
        targets = [
            FetchTarget(slot.holder_id, slot.index, self.stored.holder_keys[slot.holder_id].public_key, slot.holder_id)
            for slot in self.stored.version.placements
        ]
        plan = planner.plan(request, self.stored.version, targets,
                            deadline_ms=int(time.time() * 1000) + window_ms, lease_ttl_ms=60_000)
        return Operation(plan, reply_keys)

    def response(self, operation: Operation, holder_id: str, fragment: Fragment | None = None) -> FragmentResponse:
        """Return the response a holder sends: its fragment sealed to the reassembler."""
        index = HOLDERS.index(holder_id) + 1
        fragment = fragment or self.stored.fragments.fragments[index - 1]
        sealed = envelope.seal(
            self.dep.reassembler.public_key,
            fragment.to_bytes(),
            info=fragment_transit_info(operation.plan.operation_id, holder_id, index),
        )
        return FragmentResponse(operation.plan.operation_id, holder_id, index, sealed, "")

    def corrupted(self, operation: Operation, holder_id: str) -> FragmentResponse:
        """Return a well-formed response whose fragment has one payload byte flipped."""
        fragment = self.stored.fragments.fragments[HOLDERS.index(holder_id)]
        payload = bytes([fragment.payload[0] ^ 0x01]) + fragment.payload[1:]
        return self.response(operation, holder_id, replace(fragment, payload=payload))

    async def send(self, *messages: OperationPlan | FragmentResponse) -> None:
        topics = self.dep.topics
        for message in messages:
            topic = topics.plans if isinstance(message, OperationPlan) else topics.fragments
            await self.producer.send(topic, message)


@pytest.fixture
async def env(tmp_path, kafka_bootstrap, redis_url, topic_prefix, redis_prefix, kafka_admin) -> AsyncIterator[Env]:
    dep = make_deployment(
        tmp_path / "home", kafka_bootstrap=kafka_bootstrap, redis_url=redis_url,
        topic_prefix=topic_prefix, redis_prefix=redis_prefix, grants={"billing": ["db/*"]},
    )
    await create_topics(dep)
    redis = Redis.from_url(redis_url)
    try:
        stored = await store_secret(redis, dep, "db/password", SECRET, HOLDERS, threshold=2)
        async with Producer(kafka_bootstrap) as producer:
            async with running(lambda stopped: reassembler.serve(dep.settings, stopped, redis_prefix=dep.redis_prefix)):
                yield Env(dep, producer, stored)
    finally:
        await redis.aclose()


def open_lease(operation: Operation, reply: LeaseReply) -> LeasePayload:
    info = lease_info(operation.plan.operation_id, operation.plan.app_id)
    return LeasePayload.from_bytes(envelope.open_(operation.reply_keys, reply.sealed_lease, info=info))


async def _final_reply(env: Env, operation: Operation) -> LeaseReply | ErrorReply:
    async with readers(env.dep.settings.kafka_bootstrap, env.dep.topics.replies("billing")) as (replies,):
        found = await replies.wait_for(
            lambda messages: any(m.operation_id == operation.plan.operation_id for m in messages),
            what=f"the reply of {operation.plan.operation_id}",
        )
    (reply,) = [m for m in found if m.operation_id == operation.plan.operation_id]
    return reply


async def test_lease_after_threshold(env: Env):
    operation = env.new_operation()
    await env.send(operation.plan, env.response(operation, "h-one"), env.response(operation, "h-three"))

    reply = await _final_reply(env, operation)

    assert isinstance(reply, LeaseReply)
    payload = open_lease(operation, reply)
    assert payload.secret == SECRET
    assert payload.operation_id == operation.plan.operation_id
    assert payload.expires_at_ms == reply.expires_at_ms


async def test_fragments_before_plan(env: Env):
    operation = env.new_operation()
    await env.send(env.response(operation, "h-two"), env.response(operation, "h-one"))
    await env.send(operation.plan)

    reply = await _final_reply(env, operation)

    assert isinstance(reply, LeaseReply)
    assert open_lease(operation, reply).secret == SECRET


async def test_completion_announced_and_audited(env: Env):
    topics = env.dep.topics
    operation = env.new_operation()
    await env.send(operation.plan, env.response(operation, "h-one"), env.response(operation, "h-two"))

    async with readers(env.dep.settings.kafka_bootstrap, topics.lifecycle, topics.audit) as (lifecycle, audit):
        (event,) = await lifecycle.wait_for_type(LifecycleEvent, operation_id=operation.plan.operation_id)
        issued = await audit.wait_for_type(AuditRecord, action="lease.issued", operation_id=operation.plan.operation_id)
        received = await audit.wait_for_type(AuditRecord, 2, action="fragment.received",
                                             operation_id=operation.plan.operation_id)

    assert event.event == EventKind.OPERATION_COMPLETED
    assert set(event.holders) == set(HOLDERS)
    assert issued[0].app_id == "billing"
    assert {record.holder_id for record in received} == {"h-one", "h-two"}


async def test_spare_fragment_replaces_corrupted(env: Env):
    topics = env.dep.topics
    operation = env.new_operation()
    await env.send(operation.plan, env.corrupted(operation, "h-one"), env.response(operation, "h-two"),
                   env.response(operation, "h-three"))

    reply = await _final_reply(env, operation)
    async with readers(env.dep.settings.kafka_bootstrap, topics.audit) as (audit,):
        (rejected,) = await audit.wait_for_type(AuditRecord, action="fragment.rejected",
                                                operation_id=operation.plan.operation_id)

    assert isinstance(reply, LeaseReply)
    assert open_lease(operation, reply).secret == SECRET
    assert rejected.holder_id == "h-one"


async def test_corrupted_fragment_named(env: Env):
    operation = env.new_operation(window_ms=1_000)
    await env.send(operation.plan, env.corrupted(operation, "h-two"), env.response(operation, "h-three"))

    reply = await _final_reply(env, operation)

    assert isinstance(reply, ErrorReply)
    assert reply.reason == Reason.FRAGMENT_CORRUPTED
    assert reply.holders == ("h-two",)


async def test_fragment_for_other_operation_rejected(env: Env):
    operation = env.new_operation()
    other = env.new_operation()
    # A response captured from another operation, replayed under this one's id.
    replayed = replace(env.response(other, "h-one"), operation_id=operation.plan.operation_id)
    await env.send(operation.plan, replayed, env.corrupted(operation, "h-two"))

    reply = await _final_reply(env, operation)

    assert isinstance(reply, ErrorReply)
    assert reply.reason == Reason.FRAGMENT_CORRUPTED
    assert set(reply.holders) == {"h-one", "h-two"}


async def test_timeout_names_silent_holders(env: Env):
    operation = env.new_operation(window_ms=1_000)
    await env.send(operation.plan, env.response(operation, "h-two"))

    reply = await _final_reply(env, operation)

    assert isinstance(reply, ErrorReply)
    assert reply.reason == Reason.FRAGMENT_MISSING
    assert set(reply.holders) == {"h-one", "h-three"}


async def test_holder_errors_named_missing(env: Env):
    operation = env.new_operation()
    failures = [FragmentResponse(operation.plan.operation_id, h, HOLDERS.index(h) + 1, b"", "not_loaded")
                for h in ("h-one", "h-two")]
    await env.send(operation.plan, *failures)

    reply = await _final_reply(env, operation)

    assert isinstance(reply, ErrorReply)
    # Two errors leave too few holders, so the reply comes before the
    # deadline and also names the holder that has not responded yet.
    assert reply.reason == Reason.FRAGMENT_MISSING
    assert set(reply.holders) == {"h-one", "h-two", "h-three"}
    assert "not_loaded" in reply.detail


async def test_redelivery_sends_one_reply(env: Env):
    topics = env.dep.topics
    operation = env.new_operation()
    first = [operation.plan, env.response(operation, "h-one"), env.response(operation, "h-two")]
    await env.send(*first)
    await _final_reply(env, operation)

    # Everything again, plus the third holder's late response.
    await env.send(*first, env.response(operation, "h-three"))
    async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.replies("billing")) as (audit, replies):
        await audit.wait_for_type(AuditRecord, action="plan.ignored", operation_id=operation.plan.operation_id)
        await audit.wait_for_type(AuditRecord, 3, action="fragment.ignored", operation_id=operation.plan.operation_id)
        # Any reply to the copies would have been sent before their audit records.
        await replies.read_to_end()

    leases = [raw for raw, m in replies.records if m.operation_id == operation.plan.operation_id]
    assert len(set(leases)) == 1


async def test_undecodable_fragment_dead_lettered(env: Env):
    topics = env.dep.topics
    await env.producer.send_raw(topics.fragments, b"\x92\x01\x02", key=uuid.uuid4().hex.encode())

    async with readers(env.dep.settings.kafka_bootstrap, topics.deadletter) as (letters,):
        (letter,) = await letters.wait_for_type(DeadLetter)

    assert letter.source_topic == topics.fragments


async def test_claimed_reply_sent_again_after_crash(env: Env, redis_url):
    from schemas import codec
    from streams.opstate import OperationStore
    from streams.replies import ReplyLedger

    operation = env.new_operation()
    op_id = operation.plan.operation_id
    # What a reassembler leaves behind when it dies after claiming the reply
    # and before sending it: the claim, and the operation's state.
    claimed = ErrorReply(op_id, "billing", Reason.FRAGMENT_MISSING, "claimed before the crash", ("h-three",))
    redis = Redis.from_url(redis_url)
    try:
        await ReplyLedger(redis, env.dep.redis_prefix).claim(op_id, codec.encode(claimed))
        await OperationStore(redis, env.dep.redis_prefix).put_plan(
            op_id, codec.encode(operation.plan), operation.plan.deadline_ms
        )
    finally:
        await redis.aclose()

    # Enough valid fragments for a lease arrive, as on a reprocess.
    await env.send(env.response(operation, "h-one"), env.response(operation, "h-two"))
    reply = await _final_reply(env, operation)

    assert reply == claimed
