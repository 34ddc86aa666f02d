"""Lease releases and expiries against a real Kafka broker and Redis.

The authorizer runs as an in-process task for the whole test, and the
reassembler is started and stopped by each test. Leases are issued the way
the reassembler issues them: from a plan built by the authorizer's Planner
and fragments sealed as holders seal them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import pytest
from redis.asyncio import Redis

from schemas.messages import (
    AuditRecord,
    DeadLetter,
    EventKind,
    FragmentResponse,
    LeaseReply,
    LifecycleEvent,
    OperationPlan,
    ReleaseRequest,
)
from schemas.sealed import fragment_transit_info
from shardbus.audit import AuditLog
from shardbus.crypto import envelope, signing
from streams import authorizer, reassembler
from streams.leases import Claim, LeaseBook, LeaseExpiry
from streams.outbox import Outbox
from streams.agents import ReliableProducer
from streams.planning import FetchTarget, Planner
from stream_support import (
    WAIT_S,
    Deployment,
    Producer,
    StoredSecret,
    TopicReader,
    create_topics,
    make_deployment,
    readers,
    running,
    signed_request,
    store_secret,
)

pytestmark = pytest.mark.integration

SECRET = b"a leased secret"
HOLDERS = ["h-one", "h-two", "h-three"]
NO_LEASE = "0123456789abcdef0123456789abcdef"


@dataclass
class Env:
    dep: Deployment
    redis: Redis
    producer: Producer
    stored: StoredSecret

    @property
    def book(self) -> LeaseBook:
        return LeaseBook(self.redis, self.dep.redis_prefix)

    def reassembler(self, clock: Callable[[], float] = time.time) -> contextlib.AbstractAsyncContextManager[None]:
        """Run the reassembler for the duration of the block."""
        return running(lambda stopped: reassembler.serve(
            self.dep.settings, stopped, redis_prefix=self.dep.redis_prefix, clock=clock,
        ))

    async def issue_lease(self, *, lease_ttl_ms: int) -> LeaseReply:
        """Send a plan and two fragments to the running reassembler; return its LeaseReply."""
        request, _ = signed_request("billing", self.dep.signing_keys["billing"], self.stored.name)
        planner = Planner(self.dep.master_key, self.dep.reassembler.public_key)
        targets = [
            FetchTarget(slot.holder_id, slot.index, self.stored.holder_keys[slot.holder_id].public_key, slot.holder_id)
            for slot in self.stored.version.placements
        ]
        plan = planner.plan(request, self.stored.version, targets,
                            deadline_ms=int(time.time() * 1000) + 60_000, lease_ttl_ms=lease_ttl_ms)
        await self.producer.send(self.dep.topics.plans, plan)
        for index, holder_id in enumerate(HOLDERS[:2], start=1):
            sealed = envelope.seal(self.dep.reassembler.public_key,
                                   self.stored.fragments.fragments[index - 1].to_bytes(),
                                   info=fragment_transit_info(plan.operation_id, holder_id, index))
            await self.producer.send(self.dep.topics.fragments,
                                     FragmentResponse(plan.operation_id, holder_id, index, sealed, ""))
        async with readers(self.dep.settings.kafka_bootstrap, self.dep.topics.replies("billing")) as (replies,):
            (reply,) = await replies.wait_for_type(LeaseReply, operation_id=plan.operation_id)
        return reply

    async def release(self, operation_id: str, app_id: str = "billing", *,
                      key: signing.SigningKey | None = None) -> ReleaseRequest:
        """Send a ReleaseRequest signed with `key`, by default the app's registered key."""
        unsigned = ReleaseRequest(operation_id, app_id, int(time.time() * 1000), b"")
        signer = key or self.dep.signing_keys[app_id]
        release = replace(unsigned, signature=signing.sign(signer, unsigned.signing_bytes()))
        await self.producer.send(self.dep.topics.requests, release)
        return release


@pytest.fixture
async def env(tmp_path, kafka_bootstrap, redis_url, topic_prefix, redis_prefix, kafka_admin) -> AsyncIterator[Env]:
    dep = make_deployment(
        tmp_path / "home", kafka_bootstrap=kafka_bootstrap, redis_url=redis_url,
        topic_prefix=topic_prefix, redis_prefix=redis_prefix,
        grants={"billing": ["db/*"], "reports": ["reports/*"]},
    )
    await create_topics(dep)
    redis = Redis.from_url(redis_url)
    try:
        stored = await store_secret(redis, dep, "db/password", SECRET, HOLDERS, threshold=2)
        async with Producer(kafka_bootstrap) as producer:
            async with running(lambda stopped: authorizer.serve(
                dep.settings, stopped, options=authorizer.AuthorizerOptions(repair_holders=False),
                redis_prefix=dep.redis_prefix,
            )):
                yield Env(dep, redis, producer, stored)
    finally:
        await redis.aclose()


def audit_records(messages, action: str, operation_id: str) -> list[AuditRecord]:
    return [m for m in messages if isinstance(m, AuditRecord) and m.action == action and m.operation_id == operation_id]


def lifecycle_events(messages, kind: EventKind, operation_id: str) -> list[LifecycleEvent]:
    return [m for m in messages if isinstance(m, LifecycleEvent) and m.event == kind and m.operation_id == operation_id]


async def eventually(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def test_release_by_owner_recorded_and_announced(env: Env):
    topics = env.dep.topics
    async with env.reassembler():
        lease = await env.issue_lease(lease_ttl_ms=60_000)
    await env.release(lease.operation_id)

    async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.lifecycle) as (audit, lifecycle):
        (record,) = await audit.wait_for_type(AuditRecord, action="lease.released", operation_id=lease.operation_id)
        (event,) = await lifecycle.wait_for_type(LifecycleEvent, event=EventKind.LEASE_RELEASED,
                                                 operation_id=lease.operation_id)
    assert (record.actor, record.app_id, record.outcome) == ("authorizer", "billing", "released")
    assert (record.secret_name, record.secret_version) == ("db/password", 1)
    assert event.holders == tuple(HOLDERS)
    assert event.secret_name == "db/password"
    recorded = await env.book.get(lease.operation_id)
    assert (recorded.ended, recorded.announced) == ("released", True)
    assert await env.book.due(lease.expires_at_ms) == []


async def test_forged_releases_rejected_and_audited(env: Env):
    topics = env.dep.topics
    async with env.reassembler():
        lease = await env.issue_lease(lease_ttl_ms=60_000)
    operation_id = lease.operation_id
    forged = [
        await env.release(operation_id, key=signing.SigningKey.generate()),
        await env.release(operation_id, "reports"),
        await env.release(operation_id, "stranger", key=signing.SigningKey.generate()),
        await env.release(NO_LEASE),
    ]
    expected_reasons = ["bad_signature", "not_lease_owner", "unknown_app", "lease_not_found"]

    async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.deadletter) as (audit, deadletter):
        rejected = await audit.wait_for_type(AuditRecord, count=4, action="lease.release_rejected")
        letters = await deadletter.wait_for_type(DeadLetter, count=4, source_topic=topics.requests)
    by_app = {(r.app_id, r.operation_id): r.reason for r in rejected}
    assert by_app == {
        (release.app_id, release.operation_id): reason for release, reason in zip(forged, expected_reasons)
    }
    assert all(record.outcome == "rejected" and record.actor == "authorizer" for record in rejected)
    assert sorted(letter.reason.split(":")[0] for letter in letters) == sorted(expected_reasons)
    # The lease is untouched: no end claimed, still waiting for its expiry.
    recorded = await env.book.get(operation_id)
    assert (recorded.ended, recorded.announced) == ("", False)
    assert await env.book.due(lease.expires_at_ms) == [operation_id]

    # The owner's release, behind the forged ones on the same partition, is the only one that ends it.
    await env.release(operation_id)
    async with readers(env.dep.settings.kafka_bootstrap, topics.lifecycle) as (lifecycle,):
        await lifecycle.wait_for_type(LifecycleEvent, event=EventKind.LEASE_RELEASED, operation_id=operation_id)
        messages = await lifecycle.read_to_end()
    (event,) = lifecycle_events(messages, EventKind.LEASE_RELEASED, operation_id)
    assert event.detail.startswith("released by app billing")


async def test_unreleased_lease_expires_once(env: Env):
    topics = env.dep.topics
    async with env.reassembler():
        lease = await env.issue_lease(lease_ttl_ms=1_000)
        async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.lifecycle) as (audit, lifecycle):
            (record,) = await audit.wait_for_type(AuditRecord, action="lease.expired", operation_id=lease.operation_id)
            (event,) = await lifecycle.wait_for_type(LifecycleEvent, event=EventKind.LEASE_EXPIRED,
                                                     operation_id=lease.operation_id)
        await eventually(lambda: _announced(env.book, lease.operation_id), "the expiry is marked announced")

    assert (record.actor, record.app_id, record.outcome) == ("reassembler", "billing", "expired")
    assert event.holders == tuple(HOLDERS)
    # A release after the expiry changes nothing but its own audit record.
    await env.release(lease.operation_id)
    async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.lifecycle) as (audit, lifecycle):
        (ignored,) = await audit.wait_for_type(AuditRecord, action="lease.release_ignored",
                                               operation_id=lease.operation_id)
        records = await audit.read_to_end()
        events = await lifecycle.read_to_end()
    assert ignored.detail == "the lease was expired already"
    assert len(audit_records(records, "lease.expired", lease.operation_id)) == 1
    assert len(audit_records(records, "lease.released", lease.operation_id)) == 0
    assert len(lifecycle_events(events, EventKind.LEASE_EXPIRED, lease.operation_id)) == 1
    assert len(lifecycle_events(events, EventKind.LEASE_RELEASED, lease.operation_id)) == 0


async def test_expiry_recorded_after_reassembler_restart(env: Env):
    topics = env.dep.topics
    async with env.reassembler():
        lease = await env.issue_lease(lease_ttl_ms=3_600_000)
    assert not (await env.book.get(lease.operation_id)).ended

    # The next run, whose clock is past the expiry, finds the lease in Redis and records its expiry.
    later = lambda: time.time() + 7_200  # noqa: E731
    async with env.reassembler(clock=later):
        async with readers(env.dep.settings.kafka_bootstrap, topics.audit) as (audit,):
            await audit.wait_for_type(AuditRecord, action="lease.expired", operation_id=lease.operation_id)
        await eventually(lambda: _announced(env.book, lease.operation_id), "the expiry is marked announced")
    # The sweep of any later run starts from Redis alone and has nothing left to announce.
    assert await env.book.due(int(later() * 1000)) == []
    assert await LeaseExpiry(env.book, _NoSend(), clock=later).sweep() == 0

    async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.lifecycle) as (audit, lifecycle):
        records = await audit.read_to_end()
        events = await lifecycle.read_to_end()
    assert len(audit_records(records, "lease.expired", lease.operation_id)) == 1
    assert len(lifecycle_events(events, EventKind.LEASE_EXPIRED, lease.operation_id)) == 1


async def test_racing_sweeps_record_expiry_once(env: Env):
    now = time.time()
    operation_ids = [f"{n:032x}" for n in range(1, 6)]
    for operation_id in operation_ids:
        await env.book.record(operation_id, app_id="billing", secret_name="db/password", secret_version=1,
                              holders=tuple(HOLDERS), expires_at_ms=int(now * 1000) - 1_000)

    async with contextlib.AsyncExitStack() as stack:
        sweeps = [await stack.enter_async_context(_Sweep(env, partition)) for partition in (4, 5)]
        counts = await asyncio.gather(*(sweep.expiry.sweep() for sweep in sweeps), sweeps[0].expiry.sweep())

    assert sum(counts) == len(operation_ids)
    topics = env.dep.topics
    async with readers(env.dep.settings.kafka_bootstrap, topics.audit, topics.lifecycle) as (audit, lifecycle):
        records = await audit.read_to_end()
        events = await lifecycle.read_to_end()
    for operation_id in operation_ids:
        assert len(audit_records(records, "lease.expired", operation_id)) == 1, operation_id
        assert len(lifecycle_events(events, EventKind.LEASE_EXPIRED, operation_id)) == 1, operation_id


async def test_interrupted_sweep_finished_by_later_one(env: Env):
    now = time.time()
    book = LeaseBook(env.redis, env.dep.redis_prefix, claim_s=30)
    await book.record(NO_LEASE, app_id="billing", secret_name="db/password", secret_version=1,
                      holders=tuple(HOLDERS), expires_at_ms=int(now * 1000) - 1_000)
    # A sweep that claimed the expiry and stopped before announcing it.
    assert await book.claim_expiry(NO_LEASE, int(now * 1000)) is Claim.CLAIMED

    async with _Sweep(env, 4, book=book, clock=lambda: now + 1) as early:
        assert await early.expiry.sweep() == 0
    async with _Sweep(env, 4, book=book, clock=lambda: now + 31) as late:
        assert await late.expiry.sweep() == 1
        assert await late.expiry.sweep() == 0

    async with readers(env.dep.settings.kafka_bootstrap, env.dep.topics.audit) as (audit,):
        (record,) = audit_records(await audit.read_to_end(), "lease.expired", NO_LEASE)
    assert record.detail.endswith("announced by a later sweep after an interrupted one")
    assert await book.claim_release(NO_LEASE) is Claim.OTHER


async def test_lease_recorded_once(env: Env):
    fields = dict(app_id="billing", secret_name="db/password", secret_version=1, holders=("a", "b"),
                  expires_at_ms=int(time.time() * 1000) + 60_000)

    assert await env.book.record(NO_LEASE, **fields)
    assert await env.book.claim_release(NO_LEASE) is Claim.CLAIMED
    # A reply sent again after a crash records the lease again, which must not revive it.
    assert not await env.book.record(NO_LEASE, **fields)
    assert (await env.book.get(NO_LEASE)).ended == "released"
    assert await env.book.claim_release(NO_LEASE) is Claim.UNANNOUNCED
    await env.book.mark_announced(NO_LEASE)
    assert await env.book.claim_release(NO_LEASE) is Claim.ANNOUNCED
    assert await env.book.claim_expiry(NO_LEASE, fields["expires_at_ms"] + 1) is Claim.OTHER
    assert await env.book.claim_release("f" * 32) is Claim.MISSING


async def _announced(book: LeaseBook, operation_id: str) -> bool:
    lease = await book.get(operation_id)
    return lease is not None and lease.announced


class _NoSend:
    """An outbox for a sweep that must find nothing to announce; any use fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the sweep used the outbox ({name}) although every expiry was announced")


class _Sweep:
    """A LeaseExpiry with an outbox of its own: a producer and an AuditLog on its own partition."""

    def __init__(self, env: Env, partition: int, *, book: LeaseBook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._env = env
        self._partition = partition
        self._book = book or env.book
        self._clock = clock
        self._producer = ReliableProducer(env.dep.settings.kafka_bootstrap, client_id=f"sweep-{partition}")
        self._audit = AuditLog.from_settings(env.dep.settings, "reassembler", partition=partition)
        self.expiry: LeaseExpiry

    async def __aenter__(self) -> _Sweep:
        await self._producer.start()
        await self._audit.start()
        outbox = Outbox(self._producer.send, self._env.dep.topics, "reassembler", audit=self._audit,
                        clock=self._clock)
        self.expiry = LeaseExpiry(self._book, outbox, clock=self._clock)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._audit.close()
        await self._producer.stop()
