"""Known failure modes of faust and aiokafka, tried against shardbus's own agent loop.

Each test names a failure mode reported against faust-streaming, faust or
aiokafka and shows that shardbus's agents are not affected:

- an agent with more than one actor committed the offset of a later record
  while an earlier one was still being handled;
- with manual acknowledgement, an exception or a rebalance skipped the
  offset of a record that was never acknowledged;
- a windowed table stopped expiring keys after a rebalance or a recovery
  (shardbus keeps operation deadlines in Redis instead);
- an offset commit failed because the group rebalanced between handling
  and committing, and the new owner went on from the wrong offset.

The agent tests run a real faust app on the real broker with
streams.agents.handle_in_order, the loop both services use, and a handler
of the test's own.
"""

from __future__ import annotations

import asyncio
import time
import types
import uuid
from collections.abc import Awaitable, Callable

import faust
import pytest
import redis.exceptions
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from schemas import codec
from schemas.messages import ErrorReply, OperationPlan, OperationRequest, Reason
from schemas.topics import Topics
from shardbus.audit.events import sign_event
from shardbus.crypto import envelope
from shardbus.crypto.keys import MasterKey
from shardbus.crypto.signing import SigningKey
from shardbus.errors import ConfigError
from shardbus.store.mapping import Placement, VersionRecord
from streams import authorizer as authorizer_module
from streams import reassembler as reassembler_module
from streams.agents import DEFAULT_WINDOW, agent_window, handle_in_order
from streams.app import make_app, raw_topic
from streams.handling import InputRecord
from streams.planning import FetchTarget, Planner

pytestmark = pytest.mark.integration

#: Upper bound for anything these tests wait for. A faust app joins its group
#: in a few seconds on the development stack, and a rebalance takes a few more.
WAIT_S = 60.0

Handler = Callable[[InputRecord], Awaitable[None]]


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S:g} s waiting until {what}")
        await asyncio.sleep(0.1)


async def start_probe(bootstrap: str, group: str, topic: str, handler: Handler,
                      stopped: asyncio.Event | None = None, ended: asyncio.Event | None = None,
                      window: int = 1) -> faust.App:
    """Start a faust app whose one agent runs `handler` through handle_in_order.

    `ended` is set when handle_in_order returns.
    """
    app = make_app(group, bootstrap)
    stop = stopped or asyncio.Event()

    @app.agent(raw_topic(app, topic), name="probe")
    async def probe(stream: faust.StreamT) -> None:
        await handle_in_order(stream, handler, stopped=stop, what="probe record", window=window)
        if ended is not None:
            ended.set()

    await app.start()
    return app


async def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int = 1) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value, partition=i % partitions)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    """Return the group's committed offset by partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


def _values(count: int) -> list[bytes]:
    return [str(i).encode() for i in range(count)]


async def test_service_agents_have_one_actor() -> None:
    # An agent with several actors hands records of one partition to several
    # tasks at once; shardbus handles each partition's records in order.
    topics = Topics("regression")
    fake_authorizer = types.SimpleNamespace(
        topics=topics, provisioning=types.SimpleNamespace(reply_topic=f"{topics.prefix}.authorizer.provisioned"),
    )
    fake_repair = types.SimpleNamespace()
    fake_reassembler = types.SimpleNamespace(topics=topics)
    apps = [make_app("regression-authorizer", "127.0.0.1:1"), make_app("regression-reassembler", "127.0.0.1:1")]
    authorizer_module.build_app(apps[0], fake_authorizer, asyncio.Event(), fake_repair)
    reassembler_module.build_app(apps[1], fake_reassembler, asyncio.Event())

    agents = [agent for app in apps for agent in app.agents.values()]

    assert len(agents) == 4
    for agent in agents:
        assert agent.concurrency == 1, f"agent {agent.name} runs {agent.concurrency} actors"


async def test_cancelled_record_handled_again(kafka_bootstrap, kafka_admin, topic_prefix) -> None:
    # The agent is cancelled while record 1 is still being handled: its
    # offset must not be committed, and no later record may have started.
    [topic] = await kafka_admin.create(f"{topic_prefix}.probe")
    group = f"{topic_prefix}-probe"
    await produce(kafka_bootstrap, topic, _values(5))
    started: list[bytes] = []
    finished: list[bytes] = []
    never = asyncio.Event()

    async def blocks_on_one(record: InputRecord) -> None:
        started.append(record.value)
        if record.value == b"1":
            await never.wait()
        finished.append(record.value)

    app = await start_probe(kafka_bootstrap, group, topic, blocks_on_one)
    try:
        await eventually(lambda: started == [b"0", b"1"], "records 0 and 1 started")
        await eventually(lambda: _committed_is(kafka_bootstrap, group, 1), "the offset after record 0 is committed")
    finally:
        await app.stop()

    assert finished == [b"0"]
    assert started == [b"0", b"1"], "a record after the unfinished one was handled"
    assert (await committed(kafka_bootstrap, group))[0] == 1

    second: list[bytes] = []

    async def records(record: InputRecord) -> None:
        second.append(record.value)

    app = await start_probe(kafka_bootstrap, group, topic, records)
    try:
        await eventually(lambda: second == _values(5)[1:], "records 1 to 4 were handled after the restart")
        await eventually(lambda: _committed_is(kafka_bootstrap, group, 5), "every offset is committed")
    finally:
        await app.stop()


async def test_retriable_error_not_skipped(kafka_bootstrap, kafka_admin, topic_prefix) -> None:
    [topic] = await kafka_admin.create(f"{topic_prefix}.probe")
    group = f"{topic_prefix}-probe"
    await produce(kafka_bootstrap, topic, _values(5))
    finished: list[bytes] = []
    failures = 0

    async def fails_once_on_one(record: InputRecord) -> None:
        nonlocal failures
        if record.value == b"1" and failures == 0:
            failures += 1
            raise redis.exceptions.ConnectionError("Redis is restarting")
        finished.append(record.value)

    app = await start_probe(kafka_bootstrap, group, topic, fails_once_on_one)
    try:
        await eventually(lambda: len(finished) == 5, "all five records were handled")
        await eventually(lambda: _committed_is(kafka_bootstrap, group, 5), "every offset is committed")
    finally:
        await app.stop()

    assert failures == 1
    assert finished == _values(5)


async def test_failing_record_at_stop_not_acknowledged(kafka_bootstrap, kafka_admin, topic_prefix) -> None:
    # Record 1 fails with a retriable error until the service stops. faust
    # 0.15.3 would commit past one unacknowledged record if the records after
    # it were acknowledged, so the agent must handle none of them.
    [topic] = await kafka_admin.create(f"{topic_prefix}.probe")
    group = f"{topic_prefix}-probe"
    await produce(kafka_bootstrap, topic, _values(5))
    finished: list[bytes] = []
    attempts: list[bytes] = []
    stopped = asyncio.Event()
    ended = asyncio.Event()

    async def one_always_fails(record: InputRecord) -> None:
        attempts.append(record.value)
        if record.value == b"1":
            raise redis.exceptions.ConnectionError("Redis is down")
        finished.append(record.value)

    app = await start_probe(kafka_bootstrap, group, topic, one_always_fails, stopped, ended)
    try:
        await eventually(lambda: attempts.count(b"1") >= 2, "record 1 was retried")
        stopped.set()
        await eventually(lambda: _committed_is(kafka_bootstrap, group, 1), "the offset after record 0 is committed")
        await eventually(ended.is_set, "the agent's loop ended at the unacknowledged record")
    finally:
        await app.stop()

    assert finished == [b"0"], "a record after the unacknowledged one was handled"
    assert (await committed(kafka_bootstrap, group))[0] == 1
    again: list[bytes] = []

    async def records(record: InputRecord) -> None:
        again.append(record.value)

    app = await start_probe(kafka_bootstrap, group, topic, records)
    try:
        await eventually(lambda: b"1" in again, "record 1 was handled after the restart")
    finally:
        await app.stop()


async def test_window_overlaps_but_commits_in_order(kafka_bootstrap, kafka_admin, topic_prefix) -> None:
    # With a window of 4, record 1 waits until record 3 is handled, which
    # only works when they run at once. No offset past record 0 may be
    # committed before record 1 finished.
    [topic] = await kafka_admin.create(f"{topic_prefix}.probe")
    group = f"{topic_prefix}-probe"
    await produce(kafka_bootstrap, topic, _values(5))
    finished: list[bytes] = []
    three_done = asyncio.Event()
    release_one = asyncio.Event()

    async def one_waits_for_three(record: InputRecord) -> None:
        if record.value == b"1":
            await three_done.wait()
            await release_one.wait()
        finished.append(record.value)
        if record.value == b"3":
            three_done.set()

    app = await start_probe(kafka_bootstrap, group, topic, one_waits_for_three, window=4)
    try:
        await eventually(three_done.is_set, "record 3 was handled while record 1 waited")
        await eventually(lambda: _committed_is(kafka_bootstrap, group, 1), "the offset after record 0 is committed")
        assert (await committed(kafka_bootstrap, group))[0] == 1, "an offset past the waiting record was committed"
        release_one.set()
        await eventually(lambda: len(finished) == 5, "all five records were handled")
        await eventually(lambda: _committed_is(kafka_bootstrap, group, 5), "every offset is committed")
    finally:
        await app.stop()

    assert finished.index(b"3") < finished.index(b"1")


async def test_window_failing_record_at_stop_holds_commit(kafka_bootstrap, kafka_admin, topic_prefix) -> None:
    # Record 1 fails until the service stops while records 2 to 4 finish
    # beside it: none of them may be committed, and all are handled again.
    [topic] = await kafka_admin.create(f"{topic_prefix}.probe")
    group = f"{topic_prefix}-probe"
    await produce(kafka_bootstrap, topic, _values(5))
    attempts: list[bytes] = []
    stopped = asyncio.Event()
    ended = asyncio.Event()

    async def one_always_fails(record: InputRecord) -> None:
        attempts.append(record.value)
        if record.value == b"1":
            raise redis.exceptions.ConnectionError("Redis is down")

    app = await start_probe(kafka_bootstrap, group, topic, one_always_fails, stopped, ended, window=4)
    try:
        await eventually(lambda: attempts.count(b"1") >= 2, "record 1 was retried")
        stopped.set()
        await eventually(ended.is_set, "the agent's loop ended at the unacknowledged record")
    finally:
        await app.stop()

    assert (await committed(kafka_bootstrap, group))[0] == 1
    again: list[bytes] = []

    async def records(record: InputRecord) -> None:
        again.append(record.value)

    app = await start_probe(kafka_bootstrap, group, topic, records, window=4)
    try:
        await eventually(lambda: again == _values(5)[1:], "records 1 to 4 were handled after the restart")
    finally:
        await app.stop()


def test_agent_window_setting() -> None:
    assert agent_window({}) == DEFAULT_WINDOW
    assert agent_window({"SHARDBUS_AGENT_WINDOW": "1"}) == 1
    for bad in ("0", "-3", "many", "1000"):
        with pytest.raises(ConfigError, match="SHARDBUS_AGENT_WINDOW must be a whole number from 1 to 256"):
            agent_window({"SHARDBUS_AGENT_WINDOW": bad})


async def test_faust_commits_past_one_gap(kafka_bootstrap, kafka_admin, topic_prefix) -> None:
    # The failure mode itself, with faust's manual acknowledgement and no
    # shardbus code: record 1 is never acknowledged, the records after it
    # are, and faust 0.15.3 commits past record 1 anyway. handle_in_order
    # therefore acknowledges nothing after a record it leaves behind.
    [topic] = await kafka_admin.create(f"{topic_prefix}.probe")
    group = f"{topic_prefix}-probe"
    await produce(kafka_bootstrap, topic, _values(5))
    app = make_app(group, kafka_bootstrap)
    seen: list[bytes] = []

    @app.agent(raw_topic(app, topic), name="manual")
    async def manual(stream: faust.StreamT) -> None:
        async for event in stream.noack().events():
            seen.append(event.message.value)
            if event.message.value != b"1":
                await stream.ack(event)

    await app.start()
    try:
        await eventually(lambda: len(seen) == 5, "all five records were seen")
        await eventually(lambda: _committed_is(kafka_bootstrap, group, 5),
                         "faust committed past the unacknowledged record 1 (if this times out, faust no "
                         "longer has the gap bug, and handle_in_order's early return may be relaxed)")
    finally:
        await app.stop()


async def test_rebalance_loses_no_record(kafka_bootstrap, kafka_admin, topic_prefix) -> None:
    # A second instance joins while the first is busy, so the group rebalances
    # between handling and committing. Every record must still be handled, and
    # the committed offsets must end at the end of each partition.
    [topic] = await kafka_admin.create(f"{topic_prefix}.probe", partitions=4)
    group = f"{topic_prefix}-probe"
    values = _values(200)
    await produce(kafka_bootstrap, topic, values, partitions=4)
    handled: dict[str, list[bytes]] = {"first": [], "second": []}

    def handler(name: str) -> Handler:
        async def handle(record: InputRecord) -> None:
            await asyncio.sleep(0.02)  # Work that keeps the first instance busy while the second joins.
            handled[name].append(record.value)
        return handle

    first = await start_probe(kafka_bootstrap, group, topic, handler("first"))
    second = None
    try:
        await eventually(lambda: len(handled["first"]) >= 20, "the first instance handled 20 records")
        second = await start_probe(kafka_bootstrap, group, topic, handler("second"))
        await eventually(lambda: set(handled["first"]) | set(handled["second"]) == set(values),
                         "every record was handled by one of the instances")
        await eventually(lambda: _committed_is(kafka_bootstrap, group, 50, partitions=4),
                         "every partition's offset is committed to its end")
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


async def _committed_is(bootstrap: str, group: str, offset: int, *, partitions: int = 1) -> bool:
    offsets = await committed(bootstrap, group)
    return all(offsets.get(partition) == offset for partition in range(partitions))


async def test_deadline_expires_after_restart(redis_url, redis_prefix) -> None:
    # A reassembler stores a plan whose holders never respond, then "crashes".
    # A new reassembler, sharing only Redis, must still end the operation at
    # its deadline with fragment_missing.
    keys = envelope.EnvelopeKeyPair.generate()
    topics = Topics("regression")
    sent: list[tuple[str, bytes]] = []
    now = [time.time()]

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append((topic, value))

    plan = _silent_plan(keys.public_key, deadline_ms=int(now[0] * 1000) + 5_000)
    encoded = codec.encode(plan)
    redis = Redis.from_url(redis_url)
    try:
        first = reassembler_module.Reassembler(keys=keys, redis=redis, redis_prefix=redis_prefix, topics=topics,
                                               send=send, audit=_AuditRecorder(), clock=lambda: now[0])
        await first.handle(InputRecord(topics.plans, 0, 0, plan.operation_id.encode(), encoded))
        await first.expire()
        assert not [v for t, v in sent if t == topics.replies(plan.app_id)], "replied before the deadline"
        del first

        now[0] += 6.0
        restarted = reassembler_module.Reassembler(keys=keys, redis=redis, redis_prefix=redis_prefix,
                                                   topics=topics, send=send, audit=_AuditRecorder(),
                                                   clock=lambda: now[0])
        await restarted.expire()
    finally:
        await redis.aclose()

    replies = [codec.decode(v, ErrorReply) for t, v in sent if t == topics.replies(plan.app_id)]
    assert len(replies) == 1
    assert replies[0].reason == Reason.FRAGMENT_MISSING
    assert replies[0].operation_id == plan.operation_id


class _AuditRecorder:
    """Keeps the reassembler's audit entries in memory; this test is about deadlines, not the chain."""

    def __init__(self) -> None:
        self.entries: list = []
        self.key = SigningKey.generate()

    async def record_many(self, entries):
        self.entries.extend(entries)
        return []

    def sign_event(self, event):
        return sign_event(event, self.key)


def _silent_plan(reassembler_key: envelope.PublicKey, *, deadline_ms: int) -> OperationPlan:
    master = MasterKey.generate()
    version = VersionRecord(
        version=1, fragments=2, threshold=2, lifecycle="pooled", key_version=master.version,
        created_ms=deadline_ms, placements=(Placement(1, "h1"), Placement(2, "h2")),
        commitments={1: b"\x01" * 32, 2: b"\x02" * 32}, digest=b"\x07" * 32,
    )
    reply_keys = envelope.EnvelopeKeyPair.generate()
    request = OperationRequest(
        operation_id=uuid.uuid4().hex, app_id="billing", secret_name="db/silent", operation="lease",
        reply_public_key=reply_keys.public_bytes(), reply_kem=reply_keys.kem,
        issued_at_ms=deadline_ms - 5_000, signature=bytes(64),
    )
    holder_key = envelope.EnvelopeKeyPair.generate().public_key
    targets = [FetchTarget(p.holder_id, p.index, holder_key, p.holder_id) for p in version.placements]
    return Planner(master, reassembler_key).plan(request, version, targets, deadline_ms=deadline_ms,
                                                 lease_ttl_ms=30_000)
