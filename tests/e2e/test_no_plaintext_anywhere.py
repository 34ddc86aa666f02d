"""The secret appears on no topic, in no Redis key and in no file that a run writes.

Everything the run writes is read, including what is gone by its end:

- every topic of the deployment, read while the run goes on, so the topics
  of per-operation holders and of a killed holder are read although the
  provisioner deletes them;
- every Redis key of the deployment, after the services stopped;
- the deployment folder (keys, policy, the services' and holders' logs),
  after the services stopped, so their shutdown lines count;
- the services' TMPDIR, read while the run goes on. It contains each
  holder's working folder and faust's data folders, which are removed when
  their process stops.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import time

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from plaintext_scan import POLL_S, FolderScanner, TopicScanner, scan_files
from provisioner.registry import HolderRegistry, HolderState
from schemas.holders import EventKind, HolderLifecycle, LifecycleEvent, StoreFragment
from schemas.operations import FetchCommand

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Four ready holders, so the three per-operation holders come from the warm
#: pool, whose topics the scanner reads before the request sends them anything.
SERVICE_ARGS = {"provisioner": ["--pool-size", "4"]}

PER_OPERATION_SECRET = "payments/scanned"
#: Maximum wait for the warm pool to fill, for teardowns and for a holder's
#: replacement, generous for a loaded 2-core machine.
WAIT_S = 180.0


def _forms(secret: bytes) -> list[bytes]:
    """The secret as raw bytes and in the encodings a careless log line would use."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        repr(secret).encode(),
    ]


async def test_secret_never_in_plaintext(shardbus_deployment):
    # A 24-byte random secret cannot appear by chance in a few megabytes of data.
    pooled = secrets.token_bytes(24)
    per_operation = secrets.token_bytes(24)
    large = secrets.token_bytes(4096)
    needles = _forms(pooled) + _forms(per_operation) + [large[:64], large[-64:], large.hex()[:64].encode()]
    deployment = shardbus_deployment
    settings, topics = deployment.settings, deployment.topics

    async with (TopicScanner(settings.kafka_bootstrap, settings.topic_prefix, needles) as topic_scan,
                FolderScanner(deployment.tmpdir, needles) as folder_scan):
        await topic_scan.catch_up()
        stored = await deployment.put("db/scanned", pooled)
        await deployment.put(PER_OPERATION_SECRET, per_operation, fragments=3, threshold=2, lifecycle="per_operation")
        await deployment.put("db/scanned-large", large)
        killed = stored.holders[0]

        async with deployment.client() as client:
            for name, expected in (("db/scanned", pooled), ("db/scanned-large", large)):
                async with client.lease(name) as leased:
                    assert bytes(leased) == expected

            await _wait_for_pool(deployment, 3)
            await topic_scan.catch_up()
            async with client.lease(PER_OPERATION_SECRET) as leased:
                assert bytes(leased) == per_operation

            # The provisioner deletes a failed holder's topic, so it is read first.
            await topic_scan.catch_up()
            await deployment.signal_holders([killed], signal.SIGKILL)
            async with client.lease("db/scanned") as leased:
                assert bytes(leased) == pooled

        def events() -> list[LifecycleEvent]:
            return topic_scan.of_type(topics.lifecycle, LifecycleEvent)  # type: ignore[return-value]

        await topic_scan.wait_until(lambda: len(_per_operation_holders(events())) == 3,
                                    f"holder_provisioned for the three holders of {PER_OPERATION_SECRET}", WAIT_S)
        per_operation_holders = _per_operation_holders(events())
        await topic_scan.wait_until(
            lambda: per_operation_holders <= _torn_down(events()),
            f"holder_torn_down for every per-operation holder ({', '.join(sorted(per_operation_holders))})",
            WAIT_S,
        )
        await topic_scan.wait_until(lambda: _replaced(events(), killed), f"holder_replaced for {killed}", WAIT_S)
        await topic_scan.catch_up()
        folder_scan.scan()

        # Stopping the services writes shutdown log lines, and the teardown
        # of every holder writes records, so those are scanned too. The
        # scanners keep reading while the services stop.
        await asyncio.to_thread(deployment.group.stop)
        await topic_scan.catch_up()
        await topic_scan.wait_until(lambda: _torn_down_at_stop(events()), "a teardown at the provisioner's stop",
                                    WAIT_S)

    assert topic_scan.findings == []
    assert folder_scan.findings == []
    assert topic_scan.records > 20, "too few records were scanned for the check to mean anything"

    # The records on the topics of the per-operation holders and of the
    # killed holder were read, although the provisioner deleted those topics
    # before it sent the holder_torn_down and holder_failed events waited for above.
    assert killed in _failed(events())
    for holder_id in [*sorted(per_operation_holders), killed]:
        topic = topics.holder(holder_id)
        assert topic_scan.of_type(topic, StoreFragment), f"no StoreFragment was read from {topic}"
        assert topic_scan.of_type(topic, FetchCommand), f"no FetchCommand was read from {topic}"

    # Every holder's working folder was read while it existed, and with the
    # services stopped, no working folder or faust data folder is left.
    for holder_id in [*stored.holders, *sorted(per_operation_holders)]:
        assert any(name.startswith(f"shardbus-{holder_id}-") for name in folder_scan.folders_seen), (
            f"the working folder of holder {holder_id} was never seen in {deployment.tmpdir}"
        )
    assert len([name for name in folder_scan.folders_seen if name.startswith("shardbus-faust-")]) >= 2
    left = sorted(path.name for path in deployment.tmpdir.iterdir() if path.name.startswith("shardbus-"))
    assert left == [], f"folders left in {deployment.tmpdir} after the services stopped"

    scanned_keys = _scan_redis(settings.redis_url, settings.topic_prefix, needles)
    assert scanned_keys > 5

    scanned_files, file_findings = scan_files(deployment.home, needles)
    assert file_findings == []
    assert scanned_files >= 3, "the services' logs were not found"
    logs = deployment.home / "logs"
    assert "provisioner stopped" in (logs / "provisioner.log").read_text()
    for service in ("authorizer", "reassembler"):
        assert " stopped" in (logs / f"{service}.log").read_text(), f"{service}.log has no shutdown line"
    assert list((logs / "holders").glob("*.log")), "the holders' logs were not found"


async def _wait_for_pool(deployment, count: int) -> None:
    """Wait until the warm pool has `count` ready holders."""
    redis = Redis.from_url(deployment.settings.redis_url)
    registry = HolderRegistry(redis, deployment.settings.topic_prefix)
    deadline = time.monotonic() + WAIT_S
    try:
        while len(await registry.ids_in_state(HolderState.POOL)) < count:
            assert time.monotonic() < deadline, f"the warm pool had fewer than {count} ready holders after {WAIT_S:g} s"
            await asyncio.sleep(POLL_S)
    finally:
        await redis.aclose()


def _per_operation_holders(events: list[LifecycleEvent]) -> set[str]:
    return {
        holder_id
        for event in events
        if event.event is EventKind.HOLDER_PROVISIONED and event.secret_name == PER_OPERATION_SECRET
        and event.detail == HolderLifecycle.PER_OPERATION.value
        for holder_id in event.holders
    }


def _torn_down(events: list[LifecycleEvent]) -> set[str]:
    return {event.holder_id for event in events if event.event is EventKind.HOLDER_TORN_DOWN}


def _failed(events: list[LifecycleEvent]) -> set[str]:
    return {event.holder_id for event in events if event.event is EventKind.HOLDER_FAILED}


def _replaced(events: list[LifecycleEvent], holder_id: str) -> bool:
    return any(event.event is EventKind.HOLDER_REPLACED and holder_id in event.holders for event in events)


def _torn_down_at_stop(events: list[LifecycleEvent]) -> bool:
    return any(event.event is EventKind.HOLDER_TORN_DOWN and event.detail == "the provisioner is stopping"
               for event in events)


def _scan_redis(url: str, prefix: str, needles: list[bytes]) -> int:
    client = redis_sync.Redis.from_url(url)
    count = 0
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            count += 1
            kind = client.type(key)
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"hash":
                values = [b for pair in client.hgetall(key).items() for b in pair]
            elif kind == b"set":
                values = list(client.smembers(key))
            elif kind == b"zset":
                values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            else:
                values = []
            for value in [key, *values]:
                for needle in needles:
                    assert needle not in value, f"secret material found in Redis key {key!r}"
    finally:
        client.close()
    return count
