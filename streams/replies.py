"""The one final reply of each operation, claimed in Redis before it is sent.

The authorizer and the reassembler both send replies to ``{p}.replies.{app}``,
and Kafka delivers each input record at least once, so two attempts to
answer one operation are normal: a record processed again after a crash, a
plan delivered twice, or a deadline that passes while the last fragment is
being combined. Whoever sends a final reply first stores its encoded bytes
under ``{prefix}:replied:{operation_id}`` with ``SET NX``. A later attempt
finds the stored bytes and either sends exactly those bytes again or nothing,
so an application never sees two different answers to one operation.
"""

from __future__ import annotations

from redis.asyncio import Redis

#: How long a claimed reply is kept, in seconds. Late fragments and replayed
#: requests are recognised as long as the claim exists.
DEFAULT_REPLY_TTL_S = 24 * 3600


class ReplyLedger:
    """Claims of final replies, one per operation id, in Redis."""

    def __init__(self, redis: Redis, prefix: str, *, ttl_s: int = DEFAULT_REPLY_TTL_S) -> None:
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1 second, got {ttl_s}")
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s

    def _key(self, operation_id: str) -> str:
        return f"{self._prefix}:replied:{operation_id}"

    async def stored(self, operation_id: str) -> bytes | None:
        """Return the encoded reply already claimed for the operation, or None."""
        return await self._redis.get(self._key(operation_id))

    async def claim(self, operation_id: str, encoded_reply: bytes) -> bytes | None:
        """Claim the operation's final reply for `encoded_reply`.

        Returns None when this call made the claim, so the caller sends its
        reply. Otherwise returns the bytes an earlier claim stored, and the
        caller must not send `encoded_reply`.
        """
        key = self._key(operation_id)
        if await self._redis.set(key, encoded_reply, nx=True, ex=self._ttl_s):
            return None
        stored = await self._redis.get(key)
        # The claim can expire between the two calls; then nobody holds it
        # any more, and claiming again settles who answers.
        if stored is None:
            return await self.claim(operation_id, encoded_reply)
        return stored
