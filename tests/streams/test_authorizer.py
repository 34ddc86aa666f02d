"""The authorizer against a real Kafka broker and Redis server, run as an in-process task."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgpack
import pytest
from redis.asyncio import Redis

from schemas import codec
from schemas.messages import (
    AuditRecord,
    DeadLetter,
    ErrorReply,
    FetchCommand,
    OperationPlan,
    OperationRequest,
    ProvisionedHolder,
    ProvisionReply,
    ProvisionRequest,
    Reason,
    StoreFragment,
)
from schemas.sealed import PlanContext, fragment_key_info, plan_info
from shardbus.crypto import aead, envelope, signing
from shardbus.errors import IntegrityError
from shardbus.kafka import ensure_topics
from shardbus.store.mapping import BACKUP_SLOT, MappingTable
from streams import authorizer
from stream_support import (
    Deployment,
    Producer,
    StoredSecret,
    create_topics,
    make_deployment,
    readers,
    register_holders,
    running,
    signed_request,
    store_secret,
)

pytestmark = pytest.mark.integration

HOLDERS = ["h-one", "h-two", "h-three"]


@dataclass
class Env:
    dep: Deployment
    redis: Redis
    producer: Producer
    stored: StoredSecret

    async def send_request(self, app_id: str, secret_name: str, **kwargs: object):
        request, reply_keys = signed_request(app_id, self.dep.signing_keys[app_id], secret_name, **kwargs)
        await self.producer.send(self.dep.topics.requests, request)
        return request


@pytest.fixture
async def env(
    request, tmp_path, kafka_bootstrap, redis_url, topic_prefix, redis_prefix, kafka_admin
) -> AsyncIterator[Env]:
    # A test may pass its own AuthorizerOptions by indirect parametrization.
    options = getattr(request, "param", None) or authorizer.AuthorizerOptions()
    dep = make_deployment(
        tmp_path / "home", kafka_bootstrap=kafka_bootstrap, redis_url=redis_url,
        topic_prefix=topic_prefix, redis_prefix=redis_prefix,
        grants={"billing": ["db/*"], "reports": ["reports/*"]},
    )
    topics = dep.topics
    await create_topics(dep, topics.replies("stranger"), *(topics.holder(h) for h in HOLDERS))
    redis = Redis.from_url(redis_url)
    stored = await store_secret(redis, dep, "db/password", b"correct horse battery staple", HOLDERS, threshold=2)
    await register_holders(redis, dep, stored)
    try:
        async with Producer(kafka_bootstrap) as producer:
            async with running(lambda stopped: authorizer.serve(
                dep.settings, stopped, options=options, redis_prefix=dep.redis_prefix,
            )):
                yield Env(dep, redis, producer, stored)
    finally:
        await redis.aclose()


async def _error_reply(env: Env, app_id: str, operation_id: str) -> ErrorReply:
    async with readers(env.dep.settings.kafka_bootstrap, env.dep.topics.replies(app_id)) as (replies,):
        (reply,) = await replies.wait_for_type(ErrorReply, operation_id=operation_id)
    return reply


async def test_unknown_app_denied(env: Env):
    stranger_key = signing.SigningKey.generate()
    request, _ = signed_request("stranger", stranger_key, "db/password")
    await env.producer.send(env.dep.topics.requests, request)

    reply = await _error_reply(env, "stranger", request.operation_id)

    assert reply.reason == Reason.UNKNOWN_APP


async def test_bad_signature_denied(env: Env):
    request, _ = signed_request("billing", signing.SigningKey.generate(), "db/password")
    await env.producer.send(env.dep.topics.requests, request)

    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.BAD_SIGNATURE


async def test_stale_request_denied(env: Env):
    request = await env.send_request("billing", "db/password", issued_at_ms=int(time.time() * 1000) - 120_000)

    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.STALE_REQUEST


async def test_future_request_denied(env: Env):
    request = await env.send_request("billing", "db/password", issued_at_ms=int(time.time() * 1000) + 120_000)

    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.STALE_REQUEST


async def test_not_granted_denied(env: Env):
    request = await env.send_request("reports", "db/password")

    reply = await _error_reply(env, "reports", request.operation_id)

    assert reply.reason == Reason.NOT_GRANTED


async def test_secret_not_found_denied(env: Env):
    request = await env.send_request("billing", "db/missing")

    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.SECRET_NOT_FOUND


async def test_replayed_operation_denied(env: Env):
    topics = env.dep.topics
    request = await env.send_request("billing", "db/password")
    async with readers(env.dep.settings.kafka_bootstrap, topics.plans) as (plans,):
        await plans.wait_for_type(OperationPlan, operation_id=request.operation_id)

    await env.producer.send(topics.requests, request)
    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.REPLAYED_OPERATION


async def _send_with_other_key(env: Env) -> OperationRequest:
    request, _ = signed_request("billing", signing.SigningKey.generate(), "db/password")
    await env.producer.send(env.dep.topics.requests, request)
    return request


async def _send_stale(env: Env) -> OperationRequest:
    return await env.send_request("billing", "db/password", issued_at_ms=int(time.time() * 1000) - 120_000)


async def _send_without_grant(env: Env) -> OperationRequest:
    return await env.send_request("reports", "db/password")


async def _send_twice(env: Env) -> OperationRequest:
    request = await env.send_request("billing", "db/password")
    async with readers(env.dep.settings.kafka_bootstrap, env.dep.topics.plans) as (plans,):
        await plans.wait_for_type(OperationPlan, operation_id=request.operation_id)
    await env.producer.send(env.dep.topics.requests, request)
    return request


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        (_send_with_other_key, Reason.BAD_SIGNATURE),
        (_send_stale, Reason.STALE_REQUEST),
        (_send_without_grant, Reason.NOT_GRANTED),
        (_send_twice, Reason.REPLAYED_OPERATION),
    ],
    ids=["bad_signature", "stale_request", "not_granted", "replayed_operation"],
)
async def test_denial_audited_with_reason(env: Env, send, reason):
    request = await send(env)

    reply = await _error_reply(env, request.app_id, request.operation_id)
    async with readers(env.dep.settings.kafka_bootstrap, env.dep.topics.audit) as (audit,):
        (denied,) = await audit.wait_for_type(AuditRecord, action="request.denied", operation_id=request.operation_id)

    assert reply.reason == reason
    assert reply.detail
    assert denied.reason == reason
    assert denied.app_id == request.app_id
    assert denied.detail == reply.detail
    assert denied.outcome == "sent"


async def test_dead_holders_named(env: Env):
    await register_holders(env.redis, env.dep, env.stored, heartbeat_age_ms=60_000)
    request = await env.send_request("billing", "db/password")

    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.FRAGMENT_MISSING
    assert set(reply.holders) == set(HOLDERS)


async def test_undecodable_record_dead_lettered(env: Env):
    topics = env.dep.topics
    await env.producer.send_raw(topics.requests, b"\xc1 not msgpack")

    async with readers(env.dep.settings.kafka_bootstrap, topics.deadletter) as (letters,):
        (letter,) = await letters.wait_for_type(DeadLetter)

    assert letter.source_topic == topics.requests
    assert letter.payload_size == len(b"\xc1 not msgpack")


async def test_invalid_request_answered(env: Env):
    topics = env.dep.topics
    operation_id = "ab" * 16
    payload = msgpack.packb({"v": 1, "type": "OperationRequest", "operation_id": operation_id, "app_id": "billing"})
    await env.producer.send_raw(topics.requests, payload, key=operation_id.encode())

    reply = await _error_reply(env, "billing", operation_id)

    assert reply.reason == Reason.INVALID_REQUEST


async def test_unsupported_operation_denied_audited(env: Env):
    # The wire contract knows only "lease", so a signed request for another
    # operation cannot even be encoded: it is re-packed with msgpack here.
    topics = env.dep.topics
    request, _ = signed_request("billing", env.dep.signing_keys["billing"], "db/password")
    document = msgpack.unpackb(codec.encode(request))
    document["operation"] = "export"
    await env.producer.send_raw(topics.requests, msgpack.packb(document), key=request.operation_id.encode())

    reply = await _error_reply(env, "billing", request.operation_id)
    async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.deadletter) as (audit, letters):
        (denied,) = await audit.wait_for_type(AuditRecord, action="request.denied", operation_id=request.operation_id)
        (letter,) = await letters.wait_for_type(DeadLetter)

    assert reply.reason == Reason.INVALID_REQUEST
    assert "OperationRequest.operation" in reply.detail
    assert denied.reason == Reason.INVALID_REQUEST
    assert letter.source_topic == topics.requests
    assert "OperationRequest.operation" in letter.reason


async def test_accepted_request_plans_and_fetches(env: Env):
    topics = env.dep.topics
    bootstrap = env.dep.settings.kafka_bootstrap
    request = await env.send_request("billing", "db/password")

    async with readers(bootstrap, topics.plans, *(topics.holder(h) for h in HOLDERS)) as (plans, *holders):
        (plan,) = await plans.wait_for_type(OperationPlan, operation_id=request.operation_id)
        fetches = {}
        for holder_id, reader in zip(HOLDERS, holders):
            (fetches[holder_id],) = await reader.wait_for_type(FetchCommand, operation_id=request.operation_id)

    assert plan.threshold == 2
    assert {(slot.holder_id, slot.index) for slot in plan.holders} == {(h, i) for i, h in enumerate(HOLDERS, 1)}
    context = PlanContext.from_bytes(
        envelope.open_(env.dep.reassembler, plan.sealed_context, info=plan_info(request.operation_id))
    )
    assert context.digest == env.stored.fragments.digest
    assert context.commitments == dict(env.stored.fragments.commitments)

    for index, holder_id in enumerate(HOLDERS, start=1):
        fetch = fetches[holder_id]
        info = fragment_key_info(request.operation_id, holder_id, index)
        opened = envelope.open_(env.stored.holder_keys[holder_id], fetch.sealed_fragment_key, info=info)
        assert opened == env.dep.master_key.fragment_key("db/password", 1, index, holder_id)
        for other_id in HOLDERS:
            if other_id != holder_id:
                with pytest.raises(IntegrityError):
                    envelope.open_(env.stored.holder_keys[other_id], fetch.sealed_fragment_key, info=info)


async def test_accepted_request_audited(env: Env):
    topics = env.dep.topics
    request = await env.send_request("billing", "db/password")

    async with readers(env.dep.settings.kafka_bootstrap, topics.audit) as (audit,):
        accepted = await audit.wait_for_type(AuditRecord, action="request.accepted", operation_id=request.operation_id)
        fetched = await audit.wait_for_type(AuditRecord, 3, action="fetch.sent", operation_id=request.operation_id)

    assert accepted[0].secret_name == "db/password"
    assert {record.holder_id for record in fetched} == set(HOLDERS)


async def _store_per_operation_secret(env: Env, name: str) -> StoredSecret:
    stored = await store_secret(env.redis, env.dep, name, b"per-operation secret", ["x1", "x2"],
                                threshold=2, lifecycle="per_operation")
    mapping = MappingTable(env.redis, env.dep.master_key, env.dep.redis_prefix)
    for fragment in stored.fragments.fragments:
        key = env.dep.master_key.fragment_key(name, 1, fragment.index, BACKUP_SLOT)
        blob = aead.seal_fragment(key, fragment.to_bytes(), secret_id=name, version=1,
                                  index=fragment.index, holder_id=BACKUP_SLOT, key_version=env.dep.master_key.version)
        await mapping.put_backup(name, 1, fragment.index, blob)
    return stored


async def test_per_operation_holders_loaded(env: Env):
    topics = env.dep.topics
    bootstrap = env.dep.settings.kafka_bootstrap
    stored = await _store_per_operation_secret(env, "db/ephemeral")
    new_holders = ["p-one", "p-two"]
    holder_keys = {h: envelope.EnvelopeKeyPair.generate() for h in new_holders}
    await ensure_topics(bootstrap, [topics.holder(h) for h in new_holders])

    request = await env.send_request("billing", "db/ephemeral")
    async with readers(bootstrap, topics.provisioner) as (provisioner,):
        (ask,) = await provisioner.wait_for_type(ProvisionRequest, operation_id=request.operation_id)
    assert ask.count == 2
    assert ask.reply_topic == topics.provisioned

    reply = ProvisionReply(
        request_id=ask.request_id,
        holders=tuple(ProvisionedHolder(h, holder_keys[h].public_bytes(), "x25519") for h in new_holders),
        error="",
    )
    await env.producer.send(ask.reply_topic, reply)

    async with readers(bootstrap, *(topics.holder(h) for h in new_holders)) as holder_readers:
        for index, (holder_id, reader) in enumerate(zip(new_holders, holder_readers), start=1):
            await reader.wait_for(lambda messages: len(messages) >= 2, what="a store and a fetch")
            store, fetch = [m for _, m in reader.records[:2]]
            assert isinstance(store, StoreFragment)
            assert store.key_slot == BACKUP_SLOT
            assert isinstance(fetch, FetchCommand)
            fragment_key = envelope.open_(
                holder_keys[holder_id], fetch.sealed_fragment_key,
                info=fragment_key_info(request.operation_id, holder_id, index),
            )
            opened = aead.open_fragment(fragment_key, store.sealed_fragment, secret_id="db/ephemeral", version=1,
                                        index=index, holder_id=BACKUP_SLOT, key_version=env.dep.master_key.version)
            assert opened == stored.fragments.fragments[index - 1].to_bytes()


async def test_unknown_app_without_topic_unanswered(env: Env, kafka_admin):
    topics = env.dep.topics
    request, _ = signed_request("ghost", signing.SigningKey.generate(), "db/password")
    await env.producer.send(topics.requests, request)

    async with readers(env.dep.settings.kafka_bootstrap, topics.audit) as (audit,):
        (denied,) = await audit.wait_for_type(AuditRecord, action="request.denied", operation_id=request.operation_id)

    assert denied.reason == Reason.UNKNOWN_APP
    assert denied.outcome == "not_sent"
    assert topics.replies("ghost") not in await kafka_admin.admin.list_topics()


async def test_forged_copy_of_signed_request_unanswered(env: Env):
    topics = env.dep.topics
    request = await env.send_request("billing", "db/password")
    async with readers(env.dep.settings.kafka_bootstrap, topics.plans) as (plans,):
        await plans.wait_for_type(OperationPlan, operation_id=request.operation_id)

    forged, _ = signed_request("billing", signing.SigningKey.generate(), "db/password",
                               operation_id=request.operation_id)
    await env.producer.send(topics.requests, forged)
    async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.replies("billing")) as (audit, replies):
        (denied,) = await audit.wait_for_type(AuditRecord, action="request.denied", operation_id=request.operation_id)
        # A reply would have been sent before the audit record was.
        sent = await replies.read_to_end()

    assert denied.reason == Reason.BAD_SIGNATURE
    assert denied.outcome == "not_sent"
    assert [m for m in sent if m.operation_id == request.operation_id] == []


@pytest.mark.parametrize("env", [authorizer.AuthorizerOptions(provision_timeout_s=1.0)], indirect=True)
async def test_silent_provisioner_times_out(env: Env):
    await _store_per_operation_secret(env, "db/ephemeral")
    request = await env.send_request("billing", "db/ephemeral")

    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.FRAGMENT_MISSING
    assert "provisioner" in reply.detail


async def test_provisioner_error_denied(env: Env):
    topics = env.dep.topics
    await _store_per_operation_secret(env, "db/ephemeral")
    request = await env.send_request("billing", "db/ephemeral")
    async with readers(env.dep.settings.kafka_bootstrap, topics.provisioner) as (provisioner,):
        (ask,) = await provisioner.wait_for_type(ProvisionRequest, operation_id=request.operation_id)

    await env.producer.send(ask.reply_topic, ProvisionReply(request_id=ask.request_id, holders=(), error="pool empty"))
    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.FRAGMENT_MISSING
    assert "pool empty" in reply.detail


async def test_provisioner_without_audit_denied(env: Env):
    topics = env.dep.topics
    await _store_per_operation_secret(env, "db/ephemeral")
    request = await env.send_request("billing", "db/ephemeral")
    async with readers(env.dep.settings.kafka_bootstrap, topics.provisioner) as (provisioner,):
        (ask,) = await provisioner.wait_for_type(ProvisionRequest, operation_id=request.operation_id)

    error = "audit_unavailable: the audit log is unavailable, so no holder was handed out"
    await env.producer.send(ask.reply_topic, ProvisionReply(request_id=ask.request_id, holders=(), error=error))
    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.AUDIT_UNAVAILABLE
    async with readers(env.dep.settings.kafka_bootstrap, topics.plans) as (plans,):
        assert [m for m in await plans.read_to_end() if m.operation_id == request.operation_id] == []


async def test_unwritable_audit_topic_denied(env: Env, audit_writes):
    topics = env.dep.topics
    bootstrap = env.dep.settings.kafka_bootstrap
    await audit_writes.refuse(topics.audit)

    request = await env.send_request("billing", "db/password")
    reply = await _error_reply(env, "billing", request.operation_id)

    assert reply.reason == Reason.AUDIT_UNAVAILABLE
    assert "audit log" in reply.detail
    async with readers(bootstrap, topics.plans, topics.audit, *(topics.holder(h) for h in HOLDERS)) as (
        plans, audit, *holders,
    ):
        assert [m for m in await plans.read_to_end() if m.operation_id == request.operation_id] == []
        assert [m for m in await audit.read_to_end() if m.operation_id == request.operation_id] == []
        for reader in holders:
            assert [m for m in await reader.read_to_end() if isinstance(m, FetchCommand)] == []

    await audit_writes.accept(topics.audit)
    later = await env.send_request("billing", "db/password")
    async with readers(bootstrap, topics.plans) as (plans,):
        await plans.wait_for_type(OperationPlan, operation_id=later.operation_id)
