"""Issued leases in Redis, how each one ends, and the sweep that expires them.

The reassembler records every lease it issues, before it sends the
LeaseReply. A lease then ends once, in one of two ways:

- **released**: the authorizer verified the app's signed ReleaseRequest
  (streams.releases) and ends the lease here;
- **expired**: the reassembler's sweep finds the lease past its
  ``expires_at_ms`` without a release.

Whoever ends a lease claims the end in Redis first, then writes the audit
record (``lease.released`` or ``lease.expired``), then sends the
LifecycleEvent (``lease_released`` or ``lease_expired``), then marks the end
announced. A run cut short between the claim and the mark is finished by the
next one, which writes the audit record again if the first run had written
it. The claims are Lua scripts, so a release and a sweep, or two sweeps,
that race on one lease see one winner.

For a deployment prefix ``P``::

    P:lease:<operation id>   hash: app_id, secret_name, secret_version,
                             holders (space-separated holder ids),
                             expires_at_ms, ended ("", "released" or
                             "expired"), announced ("0" or "1"),
                             claimed_until_ms (an expiry being announced)
    P:leases                 sorted set: operation id -> expires_at_ms, of
                             the leases not ended yet and the expiries not
                             announced yet

A lease's hash lives until ``retention_s`` after its expiry, so a late or
repeated release is still recognised, then Redis deletes it.

NOTE: an expiry whose hash Redis deleted before any sweep ran (no
reassembler for ``retention_s``) is dropped without its record.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.messages import EventKind, LifecycleEvent
from streams.outbox import Outbox

log = logging.getLogger(__name__)

#: How long a lease's record is kept after its expiry, in seconds.
DEFAULT_RETENTION_S = 24 * 3600

#: How long one sweep may take to announce an expiry, in seconds, before
#: another sweep takes the expiry over.
DEFAULT_CLAIM_S = 60

#: Seconds between two sweeps of the reassembler.
SWEEP_INTERVAL_S = 1.0

# Records the lease unless its hash exists, so that a reply sent again
# after a crash never resets how the lease ended.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'app_id', ARGV[2], 'secret_name', ARGV[3], 'secret_version', ARGV[4],
           'holders', ARGV[5], 'expires_at_ms', ARGV[6], 'ended', '', 'announced', '0')
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
return 1
"""

# A release ends a lease that has not ended. The authorizer handles the
# records of one operation in order, so a release claimed but not announced
# is its own interrupted run, and it announces it again.
_CLAIM_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local ended = redis.call('HGET', KEYS[1], 'ended')
if ended == 'expired' then return 'other' end
if ended == 'released' then
  if redis.call('HGET', KEYS[1], 'announced') == '1' then return 'announced' end
  return 'unannounced'
end
redis.call('HSET', KEYS[1], 'ended', 'released')
redis.call('ZREM', KEYS[2], ARGV[1])
return 'claimed'
"""

# An expiry stays in the sorted set until it is announced, so a sweep that
# stopped halfway is finished by a later one once claimed_until_ms passed.
_CLAIM_EXPIRY = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'missing'
end
local now = tonumber(ARGV[2])
local ended = redis.call('HGET', KEYS[1], 'ended')
if ended == 'released' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'other'
end
if ended == 'expired' then
  if redis.call('HGET', KEYS[1], 'announced') == '1' then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 'announced'
  end
  if tonumber(redis.call('HGET', KEYS[1], 'claimed_until_ms') or '0') > now then return 'busy' end
  redis.call('HSET', KEYS[1], 'claimed_until_ms', now + tonumber(ARGV[3]))
  return 'unannounced'
end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at_ms') or '0') > now then return 'active' end
redis.call('HSET', KEYS[1], 'ended', 'expired', 'claimed_until_ms', now + tonumber(ARGV[3]))
return 'claimed'
"""


class Claim(enum.StrEnum):
    """The outcome of an attempt to end a lease."""

    #: This call ended the lease: the caller records and announces the end.
    CLAIMED = "claimed"
    #: The lease ended this way before, but its end was not announced: the caller does it.
    UNANNOUNCED = "unannounced"
    #: The lease ended this way and its end was announced.
    ANNOUNCED = "announced"
    #: The lease ended the other way (released when expiring, or expired when releasing).
    OTHER = "other"
    #: Another sweep is announcing the expiry.
    BUSY = "busy"
    #: The lease has not reached its expiry.
    ACTIVE = "active"
    #: No lease is recorded for the operation.
    MISSING = "missing"


@dataclass(frozen=True)
class Lease:
    """One issued lease as recorded in Redis."""

    operation_id: str
    app_id: str
    secret_name: str
    secret_version: int
    holders: tuple[str, ...]
    expires_at_ms: int
    #: "", "released" or "expired".
    ended: str
    announced: bool


class LeaseBook:
    """The issued leases of one deployment; see the module docstring."""

    def __init__(
        self, redis: Redis, prefix: str, *, retention_s: int = DEFAULT_RETENTION_S, claim_s: int = DEFAULT_CLAIM_S
    ) -> None:
        if retention_s < 1 or claim_s < 1:
            raise ValueError(f"retention_s and claim_s must be at least 1 second, got {retention_s} and {claim_s}")
        self._redis = redis
        self._prefix = prefix
        self._retention_ms = retention_s * 1000
        self._claim_ms = claim_s * 1000
        self._index = f"{prefix}:leases"
        self._record = redis.register_script(_RECORD)
        self._claim_release = redis.register_script(_CLAIM_RELEASE)
        self._claim_expiry = redis.register_script(_CLAIM_EXPIRY)

    def _key(self, operation_id: str) -> str:
        return f"{self._prefix}:lease:{operation_id}"

    async def record(
        self, operation_id: str, *, app_id: str, secret_name: str, secret_version: int,
        holders: tuple[str, ...], expires_at_ms: int,
    ) -> bool:
        """Record an issued lease; return False when it was recorded before, which changes nothing."""
        added = await self._record(
            keys=[self._key(operation_id), self._index],
            args=[operation_id, app_id, secret_name, secret_version, " ".join(holders), expires_at_ms,
                  expires_at_ms + self._retention_ms],
        )
        return bool(added)

    async def get(self, operation_id: str) -> Lease | None:
        fields = await self._redis.hgetall(self._key(operation_id))
        if not fields or b"app_id" not in fields:
            return None
        text = {name.decode(): value.decode() for name, value in fields.items()}
        return Lease(
            operation_id=operation_id,
            app_id=text["app_id"],
            secret_name=text.get("secret_name", ""),
            secret_version=int(text.get("secret_version", "0")),
            holders=tuple(text.get("holders", "").split()),
            expires_at_ms=int(text.get("expires_at_ms", "0")),
            ended=text.get("ended", ""),
            announced=text.get("announced") == "1",
        )

    async def claim_release(self, operation_id: str) -> Claim:
        """End the lease as released unless it ended before; return what happened."""
        return Claim((await self._claim_release(keys=[self._key(operation_id), self._index],
                                                args=[operation_id])).decode())

    async def claim_expiry(self, operation_id: str, now_ms: int) -> Claim:
        """End the lease as expired if it is due and did not end before; return what happened."""
        outcome = await self._claim_expiry(keys=[self._key(operation_id), self._index],
                                           args=[operation_id, now_ms, self._claim_ms])
        return Claim(outcome.decode())

    async def drop_expiry_claim(self, operation_id: str) -> None:
        """Let the next sweep announce an expiry that this one failed to announce."""
        key = self._key(operation_id)
        if await self._redis.exists(key):
            await self._redis.hset(key, "claimed_until_ms", "0")

    async def mark_announced(self, operation_id: str) -> None:
        """Note that the lease's end was recorded and announced; nothing ends it again."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(operation_id), "announced", "1")
            pipe.zrem(self._index, operation_id)
            await pipe.execute()

    async def due(self, now_ms: int, limit: int = 100) -> list[str]:
        """Return up to `limit` operation ids whose lease expired at or before `now_ms` and is not announced."""
        ids = await self._redis.zrangebyscore(self._index, "-inf", now_ms, start=0, num=limit)
        return [i.decode() for i in ids]


#: The audit action and outcome of each kind of lease end.
_END_RECORDS = {
    EventKind.LEASE_RELEASED: ("lease.released", "released"),
    EventKind.LEASE_EXPIRED: ("lease.expired", "expired"),
}


async def announce_end(outbox: Outbox, book: LeaseBook, lease: Lease, kind: EventKind, detail: str) -> None:
    """Write the audit record of a claimed lease end, send its LifecycleEvent, then mark the end announced.

    The record comes before the event, because the event makes the
    provisioner act.
    """
    action, outcome = _END_RECORDS[kind]
    await outbox.audit(
        action, operation_id=lease.operation_id, app_id=lease.app_id, secret_name=lease.secret_name,
        secret_version=lease.secret_version, outcome=outcome, detail=detail,
    )
    event = LifecycleEvent(
        event=kind, at_ms=outbox.now_ms(), holder_id="", operation_id=lease.operation_id,
        secret_name=lease.secret_name, secret_version=lease.secret_version, detail=detail[:2048],
        holders=lease.holders,
    )
    await outbox.send(outbox.topics.lifecycle, event)
    await book.mark_announced(lease.operation_id)


class LeaseExpiry:
    """The reassembler's sweep: records and announces each lease that expired without a release."""

    def __init__(self, book: LeaseBook, outbox: Outbox, *, clock: Callable[[], float] = time.time) -> None:
        self._book = book
        self._outbox = outbox
        self._clock = clock

    async def sweep(self) -> int:
        """End every lease that is due as expired; return how many expiries this call announced."""
        now_ms = int(self._clock() * 1000)
        announced = 0
        for operation_id in await self._book.due(now_ms):
            claim = await self._book.claim_expiry(operation_id, now_ms)
            if claim not in (Claim.CLAIMED, Claim.UNANNOUNCED):
                continue
            lease = await self._book.get(operation_id)
            if lease is None:
                continue  # Its record reached the end of its retention just now.
            try:
                await self._announce(lease, again=claim is Claim.UNANNOUNCED)
            except Exception:
                # Let the next sweep retry at once rather than after the claim times out.
                with contextlib.suppress(RedisError):
                    await self._book.drop_expiry_claim(operation_id)
                raise
            announced += 1
        return announced

    async def _announce(self, lease: Lease, *, again: bool) -> None:
        detail = f"expired at {lease.expires_at_ms} ms without a release"
        if again:
            detail += "; announced by a later sweep after an interrupted one"
        log.info("the lease of operation %s on secret %r issued to app %s expired without a release",
                 lease.operation_id, lease.secret_name, lease.app_id)
        await announce_end(self._outbox, self._book, lease, EventKind.LEASE_EXPIRED, detail)
