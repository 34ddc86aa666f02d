"""The holder registry: every holder the provisioner started, in Redis.

Redis layout, for a deployment prefix ``P``::

    P:holder:<id>               hash: state, public_key, kem, pid, lifecycle,
                                secret_name, secret_version, fragment_index,
                                operation_id, last_heartbeat_ms, updated_ms,
                                detail
    P:holders:<state>           set of holder ids in that state
    P:holders:operation:<op>    set of the per-operation holders of one operation
    P:holders:audit-outbox      list of audit records waiting to be written
                                (see provisioner.holder_audit)

A holder is in exactly one state set. Torn-down and failed holders keep their
hash for `retention_s` so operators can still see what happened.

NOTE: unlike the mapping table, whose Redis keys hide secret names behind a
keyed hash, the registry stores secret names in clear. The provisioner has no
master key to make such a hash, and the same names already travel in clear
in ProvisionRequest and lifecycle events on Kafka.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis


class HolderState(enum.StrEnum):
    """The stage of a holder's life."""

    WARMING = "warming"
    POOL = "pool"
    ASSIGNED = "assigned"
    PER_OPERATION = "per_operation"
    FAILED = "failed"
    TORN_DOWN = "torn_down"


_FINAL_STATES = (HolderState.FAILED, HolderState.TORN_DOWN)


@dataclass(frozen=True)
class HolderRecord:
    """One holder as the registry has it. Fields that do not apply are "" or 0."""

    holder_id: str
    state: HolderState
    public_key: bytes = field(default=b"", repr=False)
    kem: str = ""
    pid: int = 0
    lifecycle: str = ""
    secret_name: str = ""
    secret_version: int = 0
    fragment_index: int = 0
    operation_id: str = ""
    last_heartbeat_ms: int = 0
    updated_ms: int = 0
    detail: str = ""


_INT_FIELDS = ("pid", "secret_version", "fragment_index", "last_heartbeat_ms", "updated_ms")
_STR_FIELDS = ("kem", "lifecycle", "secret_name", "operation_id", "detail")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class HolderRegistry:
    """Reads and writes holder records; each change is one Redis transaction."""

    def __init__(
        self,
        redis: Redis,
        prefix: str = "shardbus",
        *,
        clock_ms: Callable[[], int] = _now_ms,
        retention_s: int = 24 * 3600,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._clock_ms = clock_ms
        self._retention_s = retention_s

    def _holder_key(self, holder_id: str) -> str:
        return f"{self._prefix}:holder:{holder_id}"

    def _state_key(self, state: HolderState) -> str:
        return f"{self._prefix}:holders:{state.value}"

    def _operation_key(self, operation_id: str) -> str:
        return f"{self._prefix}:holders:operation:{operation_id}"

    async def add(self, holder_id: str, *, pid: int = 0, detail: str = "") -> None:
        """Register a new holder in state warming."""
        await self.set_state(holder_id, HolderState.WARMING, pid=pid, detail=detail)

    async def set_state(self, holder_id: str, state: HolderState, **fields: str | int | bytes) -> None:
        """Move a holder to `state` and set the given record fields with it.

        Moving to per_operation with an ``operation_id`` adds the holder to
        that operation's set. Raises ValueError for a field the record does
        not have.
        """
        unknown = set(fields) - set(_INT_FIELDS) - set(_STR_FIELDS) - {"public_key"}
        if unknown:
            raise ValueError(f"holder record has no field {sorted(unknown)[0]!r}")
        mapping: dict[str, str | int | bytes] = {"state": state.value, "updated_ms": self._clock_ms()}
        mapping.update(fields)
        key = self._holder_key(holder_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            for other in HolderState:
                if other is not state:
                    pipe.srem(self._state_key(other), holder_id)
            pipe.sadd(self._state_key(state), holder_id)
            pipe.hset(key, mapping=mapping)
            operation_id = fields.get("operation_id")
            if state is HolderState.PER_OPERATION and operation_id:
                pipe.sadd(self._operation_key(str(operation_id)), holder_id)
            if state in _FINAL_STATES:
                pipe.expire(key, self._retention_s)
            else:
                pipe.persist(key)
            await pipe.execute()

    async def record_heartbeat(self, holder_id: str, at_ms: int, loaded: list[tuple[str, int, int]]) -> None:
        """Store a heartbeat's time and, for a holder with one fragment, its index.

        An index is recorded only when the holder has exactly one fragment
        of the secret version it is assigned to, which is the normal case.
        """
        record = await self.get(holder_id)
        if record is None or record.state in _FINAL_STATES:
            return
        mapping: dict[str, int] = {"last_heartbeat_ms": at_ms}
        indexes = [
            index for name, version, index in loaded
            if name == record.secret_name and version == record.secret_version
        ]
        if len(indexes) == 1:
            mapping["fragment_index"] = indexes[0]
        await self._redis.hset(self._holder_key(holder_id), mapping=mapping)

    async def get(self, holder_id: str) -> HolderRecord | None:
        """Return the record of `holder_id`, or None if the registry has none."""
        raw = await self._redis.hgetall(self._holder_key(holder_id))
        if not raw:
            return None
        values = {_text(k): v for k, v in raw.items()}
        kwargs: dict[str, object] = {
            "holder_id": holder_id,
            "state": HolderState(_text(values["state"])),
            "public_key": bytes(values.get("public_key", b"")),
        }
        for name in _INT_FIELDS:
            kwargs[name] = int(values.get(name, 0))
        for name in _STR_FIELDS:
            kwargs[name] = _text(values.get(name, b""))
        return HolderRecord(**kwargs)  # type: ignore[arg-type]

    async def ids_in_state(self, state: HolderState) -> list[str]:
        """Return the ids of the holders in `state`, sorted."""
        members = sorted(_text(m) for m in await self._redis.smembers(self._state_key(state)))
        if state not in _FINAL_STATES or not members:
            return members
        # Records in a final state expire after the retention time, so their
        # set entries are removed here, when they are next listed.
        async with self._redis.pipeline(transaction=False) as pipe:
            for holder_id in members:
                pipe.exists(self._holder_key(holder_id))
            present = await pipe.execute()
        expired = [holder_id for holder_id, found in zip(members, present) if not found]
        if expired:
            await self._redis.srem(self._state_key(state), *expired)
        return [holder_id for holder_id, found in zip(members, present) if found]

    async def holders_of_secret(self, secret_name: str, secret_version: int = 0) -> list[HolderRecord]:
        """Return the live records assigned to a secret (every version if `secret_version` is 0)."""
        records = []
        for state in (HolderState.ASSIGNED, HolderState.PER_OPERATION):
            for holder_id in await self.ids_in_state(state):
                record = await self.get(holder_id)
                if record is None or record.secret_name != secret_name:
                    continue
                if secret_version and record.secret_version != secret_version:
                    continue
                records.append(record)
        return sorted(records, key=lambda r: (r.secret_version, r.fragment_index, r.holder_id))

    async def holders_of_operation(self, operation_id: str) -> list[str]:
        """Return the ids of the per-operation holders started for `operation_id`."""
        return sorted(_text(m) for m in await self._redis.smembers(self._operation_key(operation_id)))

    async def forget_operation(self, operation_id: str) -> None:
        await self._redis.delete(self._operation_key(operation_id))

    async def alive(self, holder_ids: list[str], max_age_ms: int) -> list[str]:
        """Return those of `holder_ids` whose last heartbeat is at most `max_age_ms` old."""
        now = self._clock_ms()
        result = []
        for holder_id in holder_ids:
            record = await self.get(holder_id)
            if record is None or record.state in _FINAL_STATES:
                continue
            if record.last_heartbeat_ms and now - record.last_heartbeat_ms <= max_age_ms:
                result.append(holder_id)
        return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
