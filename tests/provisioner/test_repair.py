"""The holder repair's decisions, against real Redis, with the provisioner and holders faked."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from provisioner.api import GrantedHolder
from provisioner.registry import HolderRegistry, HolderState
from provisioner.repair import HolderRepair
from schemas import codec
from schemas.base import pack_canonical
from schemas.holders import EventKind, HolderAck, LifecycleEvent, StoreFragment
from shardbus.audit.events import sign_event
from shardbus.crypto.keys import MasterKey
from shardbus.crypto.signing import SigningKey
from shardbus.errors import ServiceUnavailable
from shardbus.store.mapping import BACKUP_SLOT, MappingTable, Placement, SecretRecord, VersionRecord

pytestmark = pytest.mark.integration

NAME = "db/repair"

AUDIT_KEY = SigningKey.generate()


class FakeCluster:
    """Stands in for the provisioner and the holders, and records what the repair sent."""

    def __init__(self, ack_ok: bool = True) -> None:
        self.ack_ok = ack_ok
        self.requested: list[tuple[str, int]] = []
        self.stored: list[StoreFragment] = []
        self.announced: list[LifecycleEvent] = []
        self.audited: list[tuple[str, dict]] = []

    async def request_holder(self, name: str, version: int) -> GrantedHolder:
        self.requested.append((name, version))
        return GrantedHolder(f"holder-new{len(self.requested)}", b"\x01" * 32, "x25519")

    async def store(self, command: StoreFragment) -> HolderAck:
        self.stored.append(command)
        if self.ack_ok:
            return HolderAck(command.holder_id, command.request_id, ok=True, error="")
        return HolderAck(command.holder_id, command.request_id, ok=False, error="store full")

    async def announce(self, event: LifecycleEvent) -> None:
        self.announced.append(event)

    async def audit(self, action: str, **fields) -> None:
        self.audited.append((action, fields))


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _setup(redis: Redis, prefix: str, cluster: FakeCluster, *, backup: bool = True,
                 failed_state: HolderState = HolderState.FAILED) -> tuple[HolderRepair, MappingTable]:
    master = MasterKey.generate()
    table = MappingTable(redis, master, prefix)
    version = VersionRecord(
        version=1, fragments=3, threshold=2, lifecycle="pooled", key_version=master.version,
        created_ms=1_700_000_000_000, placements=tuple(Placement(i, f"h{i}") for i in range(1, 4)),
        commitments={i: bytes([i]) * 32 for i in range(1, 4)}, digest=b"\x07" * 32,
    )
    await table.put(SecretRecord(name=NAME, current=1, versions={1: version}))
    if backup:
        await table.put_backup(NAME, 1, 2, b"sealed backup of fragment 2")
    registry = HolderRegistry(redis, prefix)
    await registry.set_state("h2", failed_state, secret_name=NAME, secret_version=1)
    repair = HolderRepair(
        mapping=table, registry=registry, request_holder=cluster.request_holder, store_fragment=cluster.store,
        announce=cluster.announce, audit=cluster.audit, clock_ms=lambda: int(time.time() * 1000),
        verify_key=AUDIT_KEY.verify_key,
    )
    return repair, table


def _failed(holder_id: str = "h2", secret_name: str = NAME) -> LifecycleEvent:
    return LifecycleEvent(event=EventKind.HOLDER_FAILED, at_ms=1, holder_id=holder_id, operation_id="",
                          secret_name=secret_name, secret_version=1, detail="holder process exited",
                          holders=(holder_id,))


async def test_repair_restores_backup(redis, redis_prefix) -> None:
    cluster = FakeCluster()
    repair, table = await _setup(redis, redis_prefix, cluster)

    await repair.handle_encoded(codec.encode(sign_event(_failed(), AUDIT_KEY)))

    assert cluster.requested == [(NAME, 1)]
    [command] = cluster.stored
    assert command.holder_id == "holder-new1"
    assert command.fragment_index == 2
    assert command.key_slot == BACKUP_SLOT
    assert command.sealed_fragment == b"sealed backup of fragment 2"
    record = await table.get(NAME)
    assert record is not None
    assert record.versions[1].placements[1] == Placement(2, "holder-new1", BACKUP_SLOT)
    [event] = cluster.announced
    assert event.event is EventKind.HOLDER_REPLACED
    assert event.holders == ("h2", "holder-new1")
    assert [(action, fields["holder_id"]) for action, fields in cluster.audited] == [
        ("holder.replaced", "h2"), ("fragment.restored", "holder-new1"),
    ]


async def test_repair_runs_once_per_holder(redis, redis_prefix) -> None:
    cluster = FakeCluster()
    repair, _ = await _setup(redis, redis_prefix, cluster)

    await repair.handle(_failed())
    await repair.handle(_failed())

    assert len(cluster.requested) == 1


async def test_repair_ignores_live_holder(redis, redis_prefix) -> None:
    # A forged holder_failed for a holder the registry has as assigned.
    cluster = FakeCluster()
    repair, table = await _setup(redis, redis_prefix, cluster, failed_state=HolderState.ASSIGNED)

    await repair.handle(_failed())

    assert cluster.requested == []
    record = await table.get(NAME)
    assert record is not None
    assert record.versions[1].holder_of(2) == "h2"


async def test_repair_ignores_unplaced_holder(redis, redis_prefix) -> None:
    cluster = FakeCluster()
    repair, _ = await _setup(redis, redis_prefix, cluster)

    await repair.handle(_failed(holder_id="h-pool"))
    await repair.handle(_failed(secret_name="db/unknown"))

    assert cluster.requested == []


async def test_repair_without_backup_audited(redis, redis_prefix) -> None:
    cluster = FakeCluster()
    repair, _ = await _setup(redis, redis_prefix, cluster, backup=False)

    await repair.handle(_failed())

    assert cluster.requested == []
    assert [action for action, _ in cluster.audited] == ["holder.replace_failed"]


async def test_rejected_store_releases_holder(redis, redis_prefix) -> None:
    cluster = FakeCluster(ack_ok=False)
    repair, table = await _setup(redis, redis_prefix, cluster)

    with pytest.raises(ServiceUnavailable, match="rejected"):
        await repair.handle(_failed())

    [event] = cluster.announced
    assert event.event is EventKind.HOLDERS_RELEASED
    assert event.holders == ("holder-new1",)
    record = await table.get(NAME)
    assert record is not None
    assert record.versions[1].holder_of(2) == "h2"


async def test_repair_ignores_other_events(redis, redis_prefix) -> None:
    cluster = FakeCluster()
    repair, _ = await _setup(redis, redis_prefix, cluster)
    torn_down = LifecycleEvent(event=EventKind.HOLDER_TORN_DOWN, at_ms=1, holder_id="h2", operation_id="",
                               secret_name=NAME, secret_version=1, detail="", holders=("h2",))

    await repair.handle(torn_down)
    await repair.handle_encoded(b"not a message")

    assert cluster.requested == []


@pytest.mark.parametrize("key", [None, SigningKey.generate()], ids=["unsigned", "other-key"])
async def test_repair_ignores_forged_events(redis, redis_prefix, key) -> None:
    cluster = FakeCluster()
    repair, table = await _setup(redis, redis_prefix, cluster)
    if key is None:
        encoded = pack_canonical(_failed().to_wire())
    else:
        encoded = codec.encode(sign_event(_failed(), key))

    await repair.handle_encoded(encoded)

    assert cluster.requested == []
    assert cluster.announced == []
    record = await table.get(NAME)
    assert record is not None
    assert record.versions[1].holder_of(2) == "h2"
