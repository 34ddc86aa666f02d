"""The reassembler's per-operation state in Redis.

For a deployment prefix ``P``::

    P:op:<operation id>    hash: "plan" -> the encoded OperationPlan,
                           "r:<holder id>" -> the encoded FragmentResponse,
                           "bad:<holder id>" -> why its fragment was rejected
    P:deadlines            sorted set: operation id -> deadline in ms

Responses are stored as they arrived: the fragment inside is still sealed to
the reassembler, so Redis (and its dump files) never holds a plaintext
fragment. Every write renews a TTL on the hash, so the state of an operation
whose plan never arrives does not stay forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

#: How long an operation's state is kept after its last write, in seconds.
DEFAULT_STATE_TTL_S = 600

_PLAN = b"plan"
_RESPONSE = b"r:"
_REJECTED = b"bad:"


@dataclass
class OperationState:
    """What the reassembler stored for one operation, still encoded."""

    plan: bytes | None = None
    #: Encoded FragmentResponse by holder id.
    responses: dict[str, bytes] = field(default_factory=dict, repr=False)
    #: Why a holder's fragment was rejected, by holder id.
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.plan is None and not self.responses and not self.rejected


class OperationStore:
    """Plans, sealed responses and deadlines of the operations in progress."""

    def __init__(self, redis: Redis, prefix: str, *, ttl_s: int = DEFAULT_STATE_TTL_S) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._deadlines = f"{prefix}:deadlines"

    def _key(self, operation_id: str) -> str:
        return f"{self._prefix}:op:{operation_id}"

    async def load(self, operation_id: str) -> OperationState:
        fields = await self._redis.hgetall(self._key(operation_id))
        state = OperationState()
        for name, value in fields.items():
            if name == _PLAN:
                state.plan = value
            elif name.startswith(_RESPONSE):
                state.responses[name[len(_RESPONSE):].decode()] = value
            elif name.startswith(_REJECTED):
                state.rejected[name[len(_REJECTED):].decode()] = value.decode()
        return state

    async def put_plan(self, operation_id: str, encoded_plan: bytes, deadline_ms: int) -> bool:
        """Store the plan unless one is stored already; return whether this call stored it."""
        key = self._key(operation_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, _PLAN, encoded_plan)
            pipe.expire(key, self._ttl_s)
            pipe.zadd(self._deadlines, {operation_id: deadline_ms}, nx=True)
            stored, _, _ = await pipe.execute()
        return bool(stored)

    async def put_response(self, operation_id: str, holder_id: str, encoded_response: bytes) -> bool:
        """Store a holder's first response; return False for a second one from the same holder."""
        return await self._put_once(operation_id, _RESPONSE + holder_id.encode(), encoded_response)

    async def mark_rejected(self, operation_id: str, holder_id: str, why: str) -> bool:
        """Remember that a holder's fragment was rejected; return whether this is news."""
        return await self._put_once(operation_id, _REJECTED + holder_id.encode(), why.encode())

    async def _put_once(self, operation_id: str, name: bytes, value: bytes) -> bool:
        key = self._key(operation_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, name, value)
            pipe.expire(key, self._ttl_s)
            stored, _ = await pipe.execute()
        return bool(stored)

    async def exists(self, operation_id: str) -> bool:
        return bool(await self._redis.exists(self._key(operation_id)))

    async def wipe(self, operation_id: str) -> None:
        """Delete everything stored for the operation, its deadline included."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(operation_id))
            pipe.zrem(self._deadlines, operation_id)
            await pipe.execute()

    async def expired(self, now_ms: int, limit: int = 100) -> list[str]:
        """Return up to `limit` operation ids whose deadline is at or before `now_ms`."""
        ids = await self._redis.zrangebyscore(self._deadlines, "-inf", now_ms, start=0, num=limit)
        return [i.decode() for i in ids]
