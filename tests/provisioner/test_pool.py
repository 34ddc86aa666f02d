"""The warm pool's readiness checks, with a stand-in backend and a real Redis server."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from provisioner.backend import BackendStatus, HolderBackend, HolderSpec
from provisioner.pool import WarmPool
from provisioner.registry import HolderRegistry, HolderState
from provisioner_harness import eventually

pytestmark = pytest.mark.integration

PID = 4242
KEY = bytes(range(32))


class ReportingBackend(HolderBackend):
    """Launches nothing; reports a fixed process id and, once `key` is set, a public key."""

    reports_public_key = True

    def __init__(self) -> None:
        self.key = b""
        self.started: list[str] = []

    async def start(self, spec: HolderSpec) -> BackendStatus:
        self.started.append(spec.holder_id)
        return self.status(spec.holder_id)  # type: ignore[return-value]

    async def stop(self, holder_id: str, timeout_s: float = 5.0) -> None:
        self.started.remove(holder_id)

    def status(self, holder_id: str) -> BackendStatus | None:
        if holder_id not in self.started:
            return None
        return BackendStatus(holder_id, True, PID, None, "stand-in", public_key=self.key)

    def holder_ids(self) -> list[str]:
        return list(self.started)


@pytest.fixture
async def pool(redis: Redis, topic_prefix: str):
    """A pool of target 1, started, with its one holder launched and waiting for a heartbeat."""
    backend = ReportingBackend()

    async def create_topics(holder_ids: list[str]) -> None:
        return None

    async def fail_holder(holder_id: str, reason: str) -> None:
        return None

    pool = WarmPool(
        backend, HolderRegistry(redis, topic_prefix), lambda h: HolderSpec(h, "unused:9092", topic_prefix),
        create_topics, fail_holder, target=1, ready_timeout_s=30, make_holder_id=lambda: "holder-one",
    )
    pool.start()

    async def launched() -> bool:
        return backend.started == ["holder-one"]

    await eventually(launched, "the pool launched its holder", 30)
    yield pool, backend
    await pool.close()


async def test_heartbeat_before_key_ignored(pool) -> None:
    warm, backend = pool

    assert not warm.on_heartbeat("holder-one", KEY, "x25519", PID)
    assert warm.is_starting("holder-one")


async def test_heartbeat_with_other_key_ignored(pool) -> None:
    warm, backend = pool
    backend.key = KEY

    assert not warm.on_heartbeat("holder-one", bytes(32), "x25519", PID)
    assert warm.is_starting("holder-one")


async def test_heartbeat_from_other_pid_ignored(pool) -> None:
    warm, backend = pool
    backend.key = KEY

    assert not warm.on_heartbeat("holder-one", KEY, "x25519", PID + 1)


async def test_matching_heartbeat_makes_ready(pool, redis: Redis, topic_prefix: str) -> None:
    warm, backend = pool
    backend.key = KEY

    assert warm.on_heartbeat("holder-one", KEY, "x25519", PID)
    await warm.wait_filled(30)

    assert warm.ready_ids() == ["holder-one"]
    record = await HolderRegistry(redis, topic_prefix).get("holder-one")
    assert record is not None
    assert record.state is HolderState.POOL
    assert record.public_key == KEY
