"""The provisioner's audit records: which holder went to whom, and how each holder ended.

The provisioner writes through its own AuditLog (role ``provisioner``, so
partition 3 of ``{p}.audit``), with one rule for requests and one for the
actions that end or return a holder:

- A provision hands a holder out, and it fails closed. ``provisioned()``
  writes one ``holder.provisioned`` record per holder and returns once Kafka
  acknowledged them all. When it raises AuditUnavailable, the provisioner
  hands out no holder and replies ``audit_unavailable``.
- Tearing down a holder, marking it failed and returning a pooled holder
  expose nothing new, and a holder must not outlive its time because Kafka
  refuses audit records. So these actions never wait for the audit log.
  ``enqueue()`` puts the record in an outbox in Redis,
  ``{p}:holders:audit-outbox``, before the action, and a background task
  moves the outbox to the audit log in order, retrying with backoff while
  the log is unavailable. The next provisioner writes what one that stopped
  left in the outbox. A record written more than the audit log's timeout
  after its action has the reason ``recorded_late`` and gives the time of
  the action in its detail.

NOTE: a crash after the audit log acknowledged a batch from the outbox and
before the outbox was trimmed writes that batch twice. When Redis is
unavailable as well, ``enqueue()`` writes the record directly, and a record
that fails then too is lost; the provisioner logs it as an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import RedisError

from provisioner.registry import HolderRecord
from schemas.holders import ProvisionRequest
from shardbus.audit import AuditLog, AuditUnavailable, actions

log = logging.getLogger(__name__)

#: Format version of an outbox entry.
OUTBOX_FORMAT_VERSION = 1

#: First pause after the audit log refused the outbox, doubled up to the maximum, in seconds.
RETRY_S = 1.0
RETRY_MAX_S = 30.0

# Outbox entries written per batch.
_BATCH = 100


class HolderAudit:
    """Writes the provisioner's audit records through `audit_log`, as the module docstring describes.

    `prefix` is the Redis key prefix of the holder registry. Times come from
    `clock_ms`, in milliseconds since the epoch.
    """

    def __init__(self, audit_log: AuditLog, redis: Redis, prefix: str, *, clock_ms: Callable[[], int]) -> None:
        self.log = audit_log
        self._redis = redis
        self.outbox_key = f"{prefix}:holders:audit-outbox"
        self._clock_ms = clock_ms
        self._late_after_ms = int(audit_log.timeout_s * 1000)
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._mover: asyncio.Task[None] | None = None
        self._direct: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect the audit log and start moving the outbox to it.

        Raises AuditUnavailable when Kafka cannot be reached.
        """
        await self.log.start()
        if self._mover is None:
            self._mover = asyncio.create_task(self._move_outbox(), name="audit-outbox")
            self._wake.set()

    async def close(self) -> None:
        """Stop the background task, write the outbox once more, and close the audit log.

        What cannot be written stays in the outbox for the next provisioner.
        """
        if self._mover is not None:
            self._mover.cancel()
            await asyncio.gather(self._mover, return_exceptions=True)
            self._mover = None
        await asyncio.gather(*self._direct, return_exceptions=True)
        try:
            await self.flush()
        except (AuditUnavailable, RedisError) as exc:
            log.warning("left the audit outbox %s for the next provisioner: %s", self.outbox_key, exc)
        await self.log.close()

    async def provisioned(self, request: ProvisionRequest, holder_ids: Sequence[str]) -> None:
        """Record that the holders of `request` are handed out, and wait for Kafka's acknowledgement.

        Raises AuditUnavailable when the records were not acknowledged: the
        caller must then hand out none of the holders.
        """
        detail = f"request {request.request_id} for {request.count} holders"
        await self.log.record_many(
            dict(
                action=actions.HOLDER_PROVISIONED, holder_id=holder_id, operation_id=request.operation_id,
                secret_name=request.secret_name, secret_version=request.secret_version,
                outcome=request.lifecycle.value, detail=detail,
            )
            for holder_id in holder_ids
        )

    async def enqueue(self, action: str, record: HolderRecord, *, outcome: str, detail: str,
                      operation_id: str = "") -> None:
        """Put the record of an action on `record`'s holder in the outbox; call it before the action.

        It never raises for Redis or the audit log, so the action goes ahead
        whatever happens to its record.
        """
        entry = dict(
            action=action, holder_id=record.holder_id, operation_id=operation_id or record.operation_id,
            secret_name=record.secret_name, secret_version=record.secret_version, outcome=outcome, detail=detail,
        )
        at_ms = self._clock_ms()
        item = msgpack.packb({"v": OUTBOX_FORMAT_VERSION, "at_ms": at_ms, "entry": entry}, use_bin_type=True)
        try:
            await self._redis.rpush(self.outbox_key, item)
        except RedisError as exc:
            log.error("cannot put the %s record of holder %s in the audit outbox, Redis failed (%s); "
                      "writing it directly", action, record.holder_id, exc)
            task = asyncio.create_task(self._write_directly(entry), name=f"audit-{record.holder_id}")
            self._direct.add(task)
            task.add_done_callback(self._direct.discard)
            return
        self._wake.set()

    async def flush(self) -> int:
        """Write the outbox to the audit log in order and return the number of records written.

        Raises AuditUnavailable or RedisError and leaves the rest of the
        outbox in place when a batch cannot be written.
        """
        written = 0
        async with self._flush_lock:
            while True:
                items = await self._redis.lrange(self.outbox_key, 0, _BATCH - 1)
                if not items:
                    return written
                entries = [entry for entry in map(self._outbox_entry, items) if entry is not None]
                try:
                    await self.log.record_many(entries)
                except (ValueError, TypeError):
                    # The audit log checks every record of a batch before it
                    # sends any, so the batch is written again one by one,
                    # and only the invalid record is dropped.
                    entries = [entry for entry in entries if await self._write_valid(entry)]
                await self._redis.ltrim(self.outbox_key, len(items), -1)
                written += len(entries)

    async def outbox_size(self) -> int:
        """Return the number of records waiting in the outbox."""
        return await self._redis.llen(self.outbox_key)

    def _outbox_entry(self, item: bytes) -> dict[str, Any] | None:
        try:
            document = msgpack.unpackb(item, raw=False)
            if document["v"] != OUTBOX_FORMAT_VERSION:
                raise ValueError(f"format {document['v']!r}, expected {OUTBOX_FORMAT_VERSION}")
            at_ms, entry = int(document["at_ms"]), dict(document["entry"])
        except (ValueError, TypeError, KeyError) as exc:
            # The provisioner alone writes the outbox, so this is damage, and
            # one bad entry must not block the records behind it.
            log.error("dropped an unreadable entry of the audit outbox %s: %s", self.outbox_key, exc)
            return None
        delay_ms = self._clock_ms() - at_ms
        if delay_ms > self._late_after_ms:
            # The note goes first, because the audit log cuts a long detail at its end.
            entry["reason"] = actions.RECORDED_LATE
            entry["detail"] = (f"happened at {_iso(at_ms)}, recorded {delay_ms / 1000:.0f} s later: "
                               f"{entry.get('detail', '')}")
        return entry

    async def _write_valid(self, entry: Mapping[str, Any]) -> bool:
        try:
            await self.log.record_many([entry])
        except (ValueError, TypeError) as exc:
            log.error("dropped an invalid record of the audit outbox %s: %s", self.outbox_key, exc)
            return False
        return True

    async def _move_outbox(self) -> None:
        pause = RETRY_S
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except (AuditUnavailable, RedisError) as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.error("cannot write the audit outbox %s (%d attempts so far), retrying in %g s: %s",
                              self.outbox_key, failures, pause, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_S)
                self._wake.set()
                continue
            if failures:
                log.info("wrote the audit outbox %s after %d failed attempts", self.outbox_key, failures)
            failures = 0
            pause = RETRY_S

    async def _write_directly(self, entry: Mapping[str, Any]) -> None:
        try:
            await self.log.record_many([entry])
        except (AuditUnavailable, ValueError, TypeError) as exc:
            log.error("lost the %s record of holder %s: neither Redis nor the audit log accepted it (%s)",
                      entry["action"], entry["holder_id"], exc)


def _iso(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
