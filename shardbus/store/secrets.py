"""The controlling domain: store, rotate, list and delete secrets.

Storing a secret splits it with the fragmentation core, seals one backup
copy of each fragment for the backup slot, asks the provisioner for holders
(pooled secrets only), sends each holder its fragment sealed for that holder
on its own topic, waits for every holder to acknowledge, and only then
records the placement in the mapping table. A secret whose holders did not
all acknowledge is not recorded, so a request never reaches a half-stored
secret.

With an audit log, each change is recorded (secret.stored, secret.rotated,
secret.deleted) before the mapping table changes; when the record cannot be
written, the change does not happen. Deleting or rotating away fragments
needs the audit log: its key signs the ``holders_released`` event, and the
provisioner tears holders down only on a signed one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import codec
from schemas.messages import DestroyFragment, EventKind, HolderAck, LifecycleEvent, StoreFragment
from schemas.fields import SECRET_NAME_PATTERN
from schemas.topics import Topics
from shardbus.audit import actions
from shardbus.audit.writer import AuditLog
from shardbus.crypto import aead
from shardbus.crypto.keys import MasterKey
from shardbus.errors import ConfigError, DecodeError, IntegrityError, ServiceUnavailable
from shardbus.kafka import client_options
from shardbus.sharing.fragmentation import Policy, split_secret
from shardbus.store.mapping import BACKUP_SLOT, LIFECYCLES, MappingTable, Placement, SecretRecord, VersionRecord

log = logging.getLogger(__name__)

MAX_SECRET_NAME = 200
_SECRET_NAME = re.compile(SECRET_NAME_PATTERN)


def check_secret_name(name: str) -> None:
    """Raise ValueError unless `name` is a valid secret name (the wire contract's rule)."""
    if not isinstance(name, str) or len(name) > MAX_SECRET_NAME or not _SECRET_NAME.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 60 else f"{str(name)[:60]}…"
        raise ValueError(
            f"invalid secret name {shown!r}: use 1 to {MAX_SECRET_NAME} of A-Z a-z 0-9 . _ - /, "
            "with no leading '/' and no empty, '.' or '..' segment, e.g. db/password"
        )

#: Asks the provisioner for holders: (count, lifecycle, secret name, version) -> holder ids.
RequestHolders = Callable[[int, str, str, int], Awaitable[Sequence[str]]]


@dataclass(frozen=True)
class StoredVersion:
    """What `put` and `rotate` report: the public facts of the stored version."""

    name: str
    version: int
    fragments: int
    threshold: int
    lifecycle: str
    holders: tuple[str, ...]
    #: Payload bytes of each fragment, as `Policy.fragment_size` names it.
    fragment_size: int


class SecretStore:
    """Stores secrets as fragments on holders and records them in the mapping table."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Topics,
        master_key: MasterKey,
        mapping: MappingTable,
        request_holders: RequestHolders,
        ack_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._master_key = master_key
        self._mapping = mapping
        self._request_holders = request_holders
        self._ack_timeout_s = ack_timeout_s
        self._clock = clock
        self._audit = audit

    async def _record(self, action: str, name: str, version: int, detail: str) -> None:
        if self._audit is not None:
            await self._audit.record(action, secret_name=name, secret_version=version, outcome="done", detail=detail)

    async def put(self, name: str, secret: bytes, policy: Policy, lifecycle: str) -> StoredVersion:
        """Store a new secret; raise ConfigError if the name is taken."""
        check_secret_name(name)
        if await self._mapping.get(name) is not None:
            raise ConfigError(f"secret {name!r} already exists; use 'shardbus secret rotate {name}' for a new version")
        return await self._store_version(name, secret, policy, lifecycle, previous=None)

    async def rotate(self, name: str, secret: bytes, policy: Policy | None = None, lifecycle: str | None = None) -> StoredVersion:
        """Store a new version of an existing secret, then destroy the old one."""
        check_secret_name(name)
        previous = await self._mapping.get(name)
        if previous is None:
            raise ConfigError(f"secret {name!r} not found; use 'shardbus secret put {name}' to create it")
        current = previous.current_version()
        policy = policy or Policy(fragments=current.fragments, threshold=current.threshold)
        stored = await self._store_version(name, secret, policy, lifecycle or current.lifecycle, previous=previous)
        await self._destroy_version(name, current)
        await self._mapping.delete_backups(name, current.version)
        return stored

    async def delete(self, name: str) -> list[str]:
        """Destroy every fragment of `name` and remove its record.

        Returns the holders that did not acknowledge the destruction (dead
        ones, typically); their fragments die with their process.
        """
        try:
            record = await self._mapping.get(name)
        except (IntegrityError, DecodeError):
            # The record cannot be read, so its placements are unknown: remove
            # the record and backups anyway, so the name can be used again.
            log.warning("the mapping record of %r does not open; removing it without its placements", name)
            await self._record(actions.SECRET_DELETED, name, 0, "unreadable record removed")
            await self._mapping.delete(name)
            return []
        if record is None:
            raise ConfigError(f"secret {name!r} not found; 'shardbus secret list' shows the stored secrets")
        await self._record(actions.SECRET_DELETED, name, record.current, "fragments destroyed on every holder")
        unacknowledged: list[str] = []
        for version in record.versions.values():
            unacknowledged += await self._destroy_version(name, version)
        await self._mapping.delete(name)
        return unacknowledged

    async def list(self, *, unreadable: list[str] | None = None) -> list[SecretRecord]:
        return await self._mapping.list(unreadable=unreadable)

    async def _store_version(
        self, name: str, secret: bytes, policy: Policy, lifecycle: str, previous: SecretRecord | None
    ) -> StoredVersion:
        version = 1 if previous is None else max(previous.versions) + 1
        try:
            return await self._write_version(name, version, secret, policy, lifecycle, previous)
        except BaseException:
            # Nothing points at this version yet, so its backups and any
            # fragments already on holders are garbage: remove them.
            await self._discard_version(name, version)
            raise

    async def _discard_version(self, name: str, version: int) -> None:
        try:
            await self._mapping.delete_backups(name, version)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning("could not remove the backups of %r version %d after a failed store: %s", name, version, exc)

    async def _write_version(
        self, name: str, version: int, secret: bytes, policy: Policy, lifecycle: str, previous: SecretRecord | None
    ) -> StoredVersion:
        if lifecycle not in LIFECYCLES:
            raise ValueError(f"lifecycle must be one of {LIFECYCLES}, got {lifecycle!r}")
        if not secret:
            raise ValueError("the secret is empty; give at least one byte")
        key_version = self._master_key.version
        verify_key = self._master_key.verify_key(name, version)
        fragment_set = split_secret(secret, policy, secret_id=name, version=version, verify_key=verify_key)

        for fragment in fragment_set.fragments:
            backup = aead.seal_fragment(
                self._master_key.fragment_key(name, version, fragment.index, BACKUP_SLOT),
                fragment.to_bytes(),
                secret_id=name, version=version, index=fragment.index,
                holder_id=BACKUP_SLOT, key_version=key_version,
            )
            await self._mapping.put_backup(name, version, fragment.index, backup)

        placements: list[Placement] = []
        if lifecycle == "pooled":
            holder_ids = list(await self._request_holders(policy.fragments, lifecycle, name, version))
            if len(holder_ids) != policy.fragments:
                raise ServiceUnavailable(
                    f"the provisioner gave {len(holder_ids)} holders for {name!r}, expected {policy.fragments}"
                )
            commands = []
            for fragment, holder_id in zip(fragment_set.fragments, holder_ids):
                sealed = aead.seal_fragment(
                    self._master_key.fragment_key(name, version, fragment.index, holder_id),
                    fragment.to_bytes(),
                    secret_id=name, version=version, index=fragment.index,
                    holder_id=holder_id, key_version=key_version,
                )
                commands.append(StoreFragment(
                    holder_id=holder_id, secret_name=name, secret_version=version,
                    fragment_index=fragment.index, key_version=key_version,
                    sealed_fragment=sealed, request_id=uuid.uuid4().hex,
                ))
                placements.append(Placement(index=fragment.index, holder_id=holder_id))
            missing = await self._send_and_await_acks(commands)
            if missing:
                await self._destroy_placements(name, version, placements)
                raise ServiceUnavailable(
                    f"holders {', '.join(missing)} did not acknowledge their fragment of {name!r} "
                    f"within {self._ack_timeout_s:g} s; the secret was not stored, try again"
                )

        first = fragment_set.fragments[0]
        version_record = VersionRecord(
            version=version, fragments=policy.fragments, threshold=policy.threshold,
            lifecycle=lifecycle, key_version=key_version, created_ms=int(self._clock() * 1000),
            placements=tuple(placements), commitments=dict(fragment_set.commitments),
            digest=fragment_set.digest,
        )
        versions = {version: version_record}
        await self._record(
            actions.SECRET_STORED if previous is None else actions.SECRET_ROTATED, name, version,
            f"{policy.threshold}-of-{policy.fragments}, {lifecycle}",
        )
        await self._mapping.put(SecretRecord(name=name, current=version, versions=versions))
        log.info(
            "stored secret %r version %d as %d-of-%d (%s, %s)",
            name, version, policy.threshold, policy.fragments, lifecycle, first.scheme,
        )
        return StoredVersion(
            name=name, version=version, fragments=policy.fragments, threshold=policy.threshold,
            lifecycle=lifecycle, holders=tuple(p.holder_id for p in placements),
            fragment_size=policy.fragment_size(len(secret)),
        )

    async def _destroy_version(self, name: str, version: VersionRecord) -> list[str]:
        return await self._destroy_placements(name, version.version, version.placements)

    async def _destroy_placements(self, name: str, version: int, placements: Sequence[Placement]) -> list[str]:
        """Destroy one version's fragments on its holders; return the holders that did not ack."""
        if not placements:
            return []
        if self._audit is None:
            # Checked before any fragment is destroyed, so no holder is left without its teardown.
            raise ValueError(
                "a SecretStore without an AuditLog cannot sign the holders_released event that lets the "
                "provisioner tear the holders down; pass audit=AuditLog.from_settings(settings, 'controller')"
            )
        commands = [
            DestroyFragment(
                holder_id=p.holder_id, secret_name=name, secret_version=version,
                request_id=uuid.uuid4().hex,
            )
            for p in placements
        ]
        missing = await self._send_and_await_acks(commands)
        await self._announce_holders_released(name, version, [p.holder_id for p in placements])
        return missing

    async def _announce_holders_released(self, name: str, version: int, holder_ids: list[str]) -> None:
        event = LifecycleEvent(
            event=EventKind.HOLDERS_RELEASED,
            at_ms=int(self._clock() * 1000),
            holder_id="",
            operation_id="",
            secret_name=name,
            secret_version=version,
            detail="fragments destroyed; the holders may be torn down",
            holders=tuple(holder_ids),
        )
        # The provisioner acts only on events signed with the audit key.
        event = self._audit.sign_event(event)
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", **client_options())
        await producer.start()
        try:
            await producer.send_and_wait(self._topics.lifecycle, codec.encode(event), key=Topics.partition_key(event))
        finally:
            await producer.stop()

    async def _send_and_await_acks(self, commands: Sequence[StoreFragment | DestroyFragment]) -> list[str]:
        """Send each command to its holder; return the holders that did not ack in time."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False, **client_options())
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True,
                                    **client_options())
        await consumer.start()
        await producer.start()
        try:
            partitions = [
                TopicPartition(self._topics.acks, p)
                for p in sorted(await _partitions(consumer, self._topics.acks))
            ]
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for partition in partitions:
                await consumer.position(partition)

            waiting = {c.request_id: c.holder_id for c in commands}
            for command in commands:
                await producer.send_and_wait(
                    self._topics.holder(command.holder_id), codec.encode(command), key=Topics.partition_key(command)
                )
            failed: list[str] = []
            deadline = time.monotonic() + self._ack_timeout_s
            while waiting and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        try:
                            ack = codec.decode(record.value or b"", HolderAck)
                        except DecodeError:
                            continue
                        if ack.request_id in waiting:
                            holder_id = waiting.pop(ack.request_id)
                            if not ack.ok:
                                log.warning("holder %s rejected a command: %s", holder_id, ack.error)
                                failed.append(holder_id)
            return failed + sorted(waiting.values())
        finally:
            await producer.stop()
            await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return partitions
        await consumer._client.force_metadata_update()  # noqa: SLF001
        await asyncio.sleep(0.1)
    raise ServiceUnavailable(f"topic {topic} does not exist; start the provisioner first")
