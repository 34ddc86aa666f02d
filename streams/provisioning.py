"""The authorizer's half of per-operation holders.

A secret whose lifecycle is ``per_operation`` has no holders between
operations: its fragments wait, sealed for the ``backup`` key slot, in the
backup store. For an accepted request the authorizer

1. sends a ProvisionRequest (one holder per fragment, request id = operation
   id, so a request processed twice requests holders only once) with the reply topic
   ``Topics.provisioned``, and stores the accepted request under
   ``{prefix}:pending:{operation_id}``, with its deadline in the sorted set
   ``{prefix}:pending-deadlines``. Nothing stored there is secret;
2. on the ProvisionReply, loads holder i with the backup of fragment i
   (StoreFragment), then sends it a FetchCommand whose fragment key is
   derived for the ``backup`` slot. Both go to the holder's one-partition
   topic, so the holder applies the store before the fetch.

Whoever deletes the pending entry first (the reply handler or the deadline
timer) acts on it, so a late reply and an expired deadline cannot both
answer one operation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgpack
from redis.asyncio import Redis

from provisioner.api import is_audit_unavailable
from schemas import codec
from schemas.messages import (
    EventKind,
    HolderLifecycle,
    LifecycleEvent,
    OperationRequest,
    ProvisionReply,
    ProvisionRequest,
    Reason,
)
from shardbus.crypto import envelope
from shardbus.audit import AuditUnavailable
from shardbus.errors import DecodeError, Denied
from shardbus.store.mapping import BACKUP_SLOT, MappingTable
from streams.admission import Admission
from streams.outbox import Outbox
from streams.planning import FetchTarget, Planner, store_command

log = logging.getLogger(__name__)

PENDING_FORMAT_VERSION = 1

#: Default time the provisioner has to send its ProvisionReply, in seconds.
DEFAULT_PROVISION_TIMEOUT_S = 10.0


class HoldersUnavailable(Denied):
    """Too few holders can serve a request; `holders` names those at fault."""

    def __init__(self, detail: str, holders: tuple[str, ...] = ()) -> None:
        super().__init__(Reason.FRAGMENT_MISSING, detail)
        self.holders = holders


DenyFn = Callable[..., Awaitable[None]]

#: The detail of an audit_unavailable reply: the app learns that nothing was
#: done and that it may retry, not where the audit log lives.
AUDIT_UNAVAILABLE_DETAIL = "the audit log did not acknowledge the decision, so nothing was done; retry later"


class Provisioning:
    """Asks for per-operation holders, then loads and fetches from them."""

    def __init__(
        self,
        *,
        redis: Redis,
        prefix: str,
        outbox: Outbox,
        planner: Planner,
        mapping: MappingTable,
        deny: DenyFn,
        window_ms: int,
        timeout_s: float = DEFAULT_PROVISION_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._outbox = outbox
        self._planner = planner
        self._mapping = mapping
        self._deny = deny
        self._window_ms = window_ms
        self._timeout_s = timeout_s
        self._clock = clock
        self._deadlines = f"{prefix}:pending-deadlines"
        self.reply_topic = outbox.topics.provisioned

    def _pending_key(self, operation_id: str) -> str:
        return f"{self._prefix}:pending:{operation_id}"

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def request_holders(self, admission: Admission, lease_ttl_ms: int) -> None:
        """Store the accepted request and ask the provisioner for its holders."""
        request, version = admission.request, admission.version
        pending = msgpack.packb(
            {
                "v": PENDING_FORMAT_VERSION,
                "request": codec.encode(request),
                "secret_version": version.version,
                "lease_ttl_ms": lease_ttl_ms,
            },
            use_bin_type=True,
        )
        deadline_ms = self._now_ms() + int(self._timeout_s * 1000)
        # The entry outlives its deadline, so the timer always finds it.
        ttl_s = int(self._timeout_s * 4) + 60
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._pending_key(request.operation_id), pending, ex=ttl_s)
            pipe.zadd(self._deadlines, {request.operation_id: deadline_ms})
            await pipe.execute()
        provision = ProvisionRequest(
            request_id=request.operation_id,
            count=version.fragments,
            lifecycle=HolderLifecycle.PER_OPERATION,
            operation_id=request.operation_id,
            secret_name=request.secret_name,
            secret_version=version.version,
            reply_topic=self.reply_topic,
        )
        await self._outbox.send(self._outbox.topics.provisioner, provision)
        log.info(
            "asked for %d per-operation holders for operation %s on secret %r",
            version.fragments, request.operation_id, request.secret_name,
        )

    async def _take_pending(self, operation_id: str) -> tuple[OperationRequest, int, int] | None:
        raw = await self._redis.getdel(self._pending_key(operation_id))
        await self._redis.zrem(self._deadlines, operation_id)
        if raw is None:
            return None
        document = msgpack.unpackb(raw, raw=False)
        if document.get("v") != PENDING_FORMAT_VERSION:
            raise DecodeError(f"pending entry of operation {operation_id} has format {document.get('v')!r}, expected 1")
        request = codec.decode(document["request"], OperationRequest)
        return request, document["secret_version"], document["lease_ttl_ms"]

    async def handle_reply(self, reply: ProvisionReply) -> None:
        """Load and fetch from the holders of one ProvisionReply."""
        pending_entry = await self._take_pending(reply.request_id)
        holder_ids = tuple(h.holder_id for h in reply.holders)
        if pending_entry is None:
            log.warning("ignored a provision reply for operation %s: no request is pending (the reply is late or a duplicate)", reply.request_id)
            if holder_ids:
                await self._release(reply.request_id, "", 0, holder_ids, "provisioned after the deadline")
            return
        request, secret_version, lease_ttl_ms = pending_entry
        try:
            await self._load_and_fetch(request, secret_version, lease_ttl_ms, reply)
        except AuditUnavailable:
            denial = Denied(Reason.AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE_DETAIL)
        except Denied as exc:
            denial = exc
        else:
            return
        await self._deny(
            request.operation_id, request.app_id, denial.reason, denial.detail,
            secret_name=request.secret_name, secret_version=secret_version,
            holders=getattr(denial, "holders", ()),
        )
        if holder_ids:
            await self._release(
                request.operation_id, request.secret_name, secret_version, holder_ids, "denied before any fetch"
            )

    async def _load_and_fetch(
        self, request: OperationRequest, secret_version: int, lease_ttl_ms: int, reply: ProvisionReply
    ) -> None:
        if reply.error:
            if is_audit_unavailable(reply.error):
                raise AuditUnavailable(f"the provisioner could not provide holders: {reply.error}")
            raise HoldersUnavailable(f"the provisioner could not provide holders: {reply.error}")
        record = await self._mapping.get(request.secret_name)
        version = None if record is None else record.versions.get(secret_version)
        if version is None:
            raise Denied(Reason.SECRET_NOT_FOUND, f"secret {request.secret_name!r} version {secret_version} was deleted")

        loads: list[tuple[FetchTarget, bytes]] = []
        without_backup: list[str] = []
        for index, holder in enumerate(reply.holders[: version.fragments], start=1):
            backup = await self._mapping.get_backup(request.secret_name, version.version, index)
            if backup is None:
                without_backup.append(holder.holder_id)
                continue
            try:
                public_key = envelope.PublicKey.from_bytes(holder.kem, holder.public_key)
            except DecodeError as exc:
                log.warning("provisioned holder %s has an unusable public key: %s", holder.holder_id, exc)
                without_backup.append(holder.holder_id)
                continue
            loads.append((FetchTarget(holder.holder_id, index, public_key, BACKUP_SLOT), backup))
        if len(loads) < version.threshold:
            raise HoldersUnavailable(
                f"only {len(loads)} of the {version.threshold} fragments needed could be loaded "
                "into per-operation holders; restore the missing backups",
                tuple(without_backup),
            )

        deadline_ms = self._now_ms() + self._window_ms
        targets = [target for target, _ in loads]
        plan = self._planner.plan(request, version, targets, deadline_ms=deadline_ms, lease_ttl_ms=lease_ttl_ms)
        outbox = self._outbox
        outgoing = [outbox.outgoing(outbox.topics.plans, plan)]
        entries = []
        for target, backup in loads:
            topic = outbox.topics.holder(target.holder_id)
            fetch = self._planner.fetch(request.operation_id, request.secret_name, version, target, deadline_ms=deadline_ms)
            outgoing.append(outbox.outgoing(topic, store_command(request.secret_name, version, target, backup)))
            outgoing.append(outbox.outgoing(topic, fetch))
            entries.append(dict(
                action="fetch.sent", operation_id=request.operation_id, app_id=request.app_id,
                secret_name=request.secret_name, secret_version=version.version, holder_id=target.holder_id,
                outcome="sent", detail=f"fragment {target.index} loaded from the backup store",
            ))
        # The fetches are audited before any is sent; AuditUnavailable stops them all.
        await outbox.audit_many(entries)
        await outbox.send_all(outgoing)

    async def _release(
        self, operation_id: str, secret_name: str, secret_version: int, holder_ids: tuple[str, ...], detail: str
    ) -> None:
        # The operation ends here, so the provisioner may tear its holders down.
        event = LifecycleEvent(
            event=EventKind.OPERATION_COMPLETED,
            at_ms=self._now_ms(),
            holder_id="",
            operation_id=operation_id,
            secret_name=secret_name,
            secret_version=secret_version,
            detail=detail,
            holders=holder_ids,
        )
        await self._outbox.send(self._outbox.topics.lifecycle, event)

    async def expire(self) -> None:
        """Deny with fragment_missing every pending request whose provisioner did not reply in time."""
        expired = await self._redis.zrangebyscore(self._deadlines, "-inf", self._now_ms(), start=0, num=100)
        for raw_id in expired:
            operation_id = raw_id.decode()
            pending_entry = await self._take_pending(operation_id)
            if pending_entry is None:
                continue
            request, secret_version, _ = pending_entry
            await self._deny(
                request.operation_id, request.app_id, Reason.FRAGMENT_MISSING,
                f"the provisioner did not provide holders within {self._timeout_s:g} s",
                secret_name=request.secret_name, secret_version=secret_version,
            )
