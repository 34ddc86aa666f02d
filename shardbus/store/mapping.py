"""The mapping table: which holder has which fragment of which secret.

Each secret has one record in Redis, sealed with AES-256-GCM under a key
derived from the master key, so Redis (and whoever reads its dump files)
sees neither the placement nor the commitments. Even the secret's name is
hidden: the Redis key is a keyed hash (a *tag*) of the name.

Redis layout, for a deployment prefix ``P``::

    P:secret:<tag>                     sealed SecretRecord
    P:secrets                          set of tags, for listing
    P:backup:<tag>:<version>:<index>   sealed fragment, for restore and
                                       per-operation holders

Backup copies are sealed for the holder slot named ``backup`` (see
BACKUP_SLOT), so they open only with a fragment key derived for that slot,
which the authorizer sends sealed to the one holder it loads them into.

A placement whose fragment was restored from the backup store records that
slot as its ``key_slot``. Records are written in format 1 unless a placement
has a key slot, which format 2 adds, so a record without restored fragments
stays readable by code that knows only format 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import WatchError

from shardbus.crypto import aead
from shardbus.crypto.keys import MasterKey
from shardbus.errors import DecodeError, IntegrityError

RECORD_VERSION = 2
#: The formats `_open_tagged` reads.
READABLE_VERSIONS = (1, 2)
BACKUP_SLOT = "backup"
LIFECYCLES = ("pooled", "per_operation")


@dataclass(frozen=True)
class Placement:
    """One fragment's home: its index, the holder that has it, and its key slot.

    ``key_slot`` is the holder id the fragment key was derived for, "" for
    the holder's own id. It is BACKUP_SLOT for a fragment restored from the
    backup store onto a replacement holder.
    """

    index: int
    holder_id: str
    key_slot: str = ""

    @property
    def fragment_key_slot(self) -> str:
        """Return the holder id to derive this fragment's key for."""
        return self.key_slot or self.holder_id


@dataclass(frozen=True)
class VersionRecord:
    """Everything the authorizer needs to serve one version of a secret."""

    version: int
    fragments: int
    threshold: int
    lifecycle: str
    key_version: int
    created_ms: int
    placements: tuple[Placement, ...]
    commitments: dict[int, bytes] = field(repr=False)
    digest: bytes = field(repr=False)

    def holder_of(self, index: int) -> str | None:
        for placement in self.placements:
            if placement.index == index:
                return placement.holder_id
        return None


@dataclass(frozen=True)
class SecretRecord:
    """A secret's versions; `current` is the one requests get."""

    name: str
    current: int
    versions: dict[int, VersionRecord]

    def current_version(self) -> VersionRecord:
        return self.versions[self.current]


class MappingTable:
    """The sealed mapping table and backup store in one Redis database."""

    def __init__(self, redis: Redis, master_key: MasterKey, prefix: str = "shardbus") -> None:
        self._redis = redis
        self._key = master_key.mapping_key()
        self._prefix = prefix

    def tag(self, name: str) -> str:
        """Return the keyed hash that stands for `name` in Redis keys."""
        digest = hmac.new(self._key, b"shardbus/mapping-tag/v1\x00" + name.encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def _record_key(self, name: str) -> str:
        return f"{self._prefix}:secret:{self.tag(name)}"

    def _backup_key(self, name: str, version: int, index: int) -> str:
        return f"{self._prefix}:backup:{self.tag(name)}:{version}:{index}"

    async def get(self, name: str) -> SecretRecord | None:
        """Return the record for `name`, or None if no such secret is stored."""
        blob = await self._redis.get(self._record_key(name))
        if blob is None:
            return None
        return self._open(name, blob)

    async def put(self, record: SecretRecord) -> None:
        """Store `record`, replacing any earlier record for the same name."""
        blob = self._seal(record)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._record_key(record.name), blob)
            pipe.sadd(f"{self._prefix}:secrets", self.tag(record.name))
            await pipe.execute()

    async def delete(self, name: str) -> bool:
        """Remove the record and every backup of `name`; return whether it existed."""
        tag = self.tag(name)
        backups = [key async for key in self._redis.scan_iter(match=f"{self._prefix}:backup:{tag}:*")]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._record_key(name), *backups)
            pipe.srem(f"{self._prefix}:secrets", tag)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def list(self, *, unreadable: list[str] | None = None) -> list[SecretRecord]:
        """Return every stored secret's record, sorted by name.

        A record that does not open (tampered, or sealed under another
        master key) is skipped, so one bad record does not hide the others;
        its tag is appended to `unreadable` when given.
        """
        records = []
        for tag in await self._redis.smembers(f"{self._prefix}:secrets"):
            tag = tag.decode() if isinstance(tag, bytes) else tag
            blob = await self._redis.get(f"{self._prefix}:secret:{tag}")
            if blob is None:
                continue
            try:
                records.append(self._open_tagged(tag, blob))
            except (IntegrityError, DecodeError):
                if unreadable is not None:
                    unreadable.append(tag)
        return sorted(records, key=lambda r: r.name)

    async def replace_placement(self, name: str, version: int, failed_holder_id: str, replacement: Placement) -> bool:
        """Move the fragment that `failed_holder_id` had to `replacement`, atomically.

        Returns False, changing nothing, when the record or the version is
        gone or no longer places fragment ``replacement.index`` on
        `failed_holder_id` (a rotation or an earlier repair got there
        first). A concurrent change of the record makes it read the record
        again and retry.
        """
        key = self._record_key(name)
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    blob = await pipe.get(key)
                    record = None if blob is None else self._open(name, blob)
                    updated = _with_placement(record, version, failed_holder_id, replacement)
                    if updated is None:
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.set(key, self._seal(updated))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def put_backup(self, name: str, version: int, index: int, sealed_fragment: bytes) -> None:
        await self._redis.set(self._backup_key(name, version, index), sealed_fragment)

    async def get_backup(self, name: str, version: int, index: int) -> bytes | None:
        return await self._redis.get(self._backup_key(name, version, index))

    async def delete_backups(self, name: str, version: int) -> None:
        """Remove the backup copies of one version of `name`."""
        pattern = f"{self._prefix}:backup:{self.tag(name)}:{version}:*"
        keys = [key async for key in self._redis.scan_iter(match=pattern)]
        if keys:
            await self._redis.delete(*keys)

    def _seal(self, record: SecretRecord) -> bytes:
        key_slots = any(p.key_slot for v in record.versions.values() for p in v.placements)
        document = {
            "v": RECORD_VERSION if key_slots else 1,
            "name": record.name,
            "current": record.current,
            "versions": [_version_to_doc(v) for v in record.versions.values()],
        }
        plaintext = msgpack.packb(document, use_bin_type=True)
        return aead.seal(self._key, plaintext, self._aad(self.tag(record.name)))

    def _open(self, name: str, blob: bytes) -> SecretRecord:
        record = self._open_tagged(self.tag(name), blob)
        if record.name != name:
            raise DecodeError(f"mapping record for {name!r} names another secret")
        return record

    def _open_tagged(self, tag: str, blob: bytes) -> SecretRecord:
        plaintext = aead.open_(self._key, blob, self._aad(tag))
        try:
            document = msgpack.unpackb(plaintext, raw=False, strict_map_key=False)
            if document["v"] not in READABLE_VERSIONS:
                raise DecodeError(
                    f"mapping record format {document['v']} is not supported; this code reads formats "
                    f"{', '.join(map(str, READABLE_VERSIONS))}, so upgrade it"
                )
            versions = [_version_from_doc(v) for v in document["versions"]]
            return SecretRecord(
                name=document["name"],
                current=document["current"],
                versions={v.version: v for v in versions},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"mapping record {tag} is malformed: {type(exc).__name__}") from None

    @staticmethod
    def _aad(tag: str) -> bytes:
        return b"shardbus/mapping/v1\x00" + tag.encode()


def _version_to_doc(record: VersionRecord) -> dict[str, Any]:
    return {
        "version": record.version,
        "fragments": record.fragments,
        "threshold": record.threshold,
        "lifecycle": record.lifecycle,
        "key_version": record.key_version,
        "created_ms": record.created_ms,
        "placements": [_placement_to_doc(p) for p in record.placements],
        "commitments": [[i, c] for i, c in sorted(record.commitments.items())],
        "digest": record.digest,
    }


def _version_from_doc(doc: dict[str, Any]) -> VersionRecord:
    return VersionRecord(
        version=doc["version"],
        fragments=doc["fragments"],
        threshold=doc["threshold"],
        lifecycle=doc["lifecycle"],
        key_version=doc["key_version"],
        created_ms=doc["created_ms"],
        placements=tuple(_placement_from_doc(p) for p in doc["placements"]),
        commitments={i: c for i, c in doc["commitments"]},
        digest=doc["digest"],
    )


def _placement_to_doc(placement: Placement) -> list[Any]:
    if placement.key_slot:
        return [placement.index, placement.holder_id, placement.key_slot]
    return [placement.index, placement.holder_id]


def _placement_from_doc(doc: list[Any]) -> Placement:
    # Format 1 has [index, holder id]; format 2 adds the key slot when there is one.
    if len(doc) == 3:
        return Placement(index=doc[0], holder_id=doc[1], key_slot=doc[2])
    index, holder_id = doc
    return Placement(index=index, holder_id=holder_id)


def _with_placement(
    record: SecretRecord | None, version: int, failed_holder_id: str, replacement: Placement
) -> SecretRecord | None:
    """Return `record` with the placement moved, or None when it does not name the failed holder."""
    if record is None or version not in record.versions:
        return None
    current = record.versions[version]
    if not any(p.index == replacement.index and p.holder_id == failed_holder_id for p in current.placements):
        return None
    placements = tuple(replacement if p.index == replacement.index else p for p in current.placements)
    versions = dict(record.versions)
    versions[version] = dataclasses.replace(current, placements=placements)
    return dataclasses.replace(record, versions=versions)
