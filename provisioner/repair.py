"""Replacing a failed pooled holder: its fragment is restored from the backup store.

The provisioner notices a holder die (its process exits or its heartbeats
stop) and announces ``holder_failed`` on ``{p}.lifecycle``. Restoring the
fragment needs the master key: the backup copy's Redis key is a keyed tag of
the secret's name, and the mapping table that records which fragment the
holder had is sealed. So the repair runs inside the authorizer,
which has the master key, as a consumer of ``{p}.lifecycle``. For each
``holder_failed`` event of a holder that the registry has as failed and that
the mapping table names in a placement, it

1. asks the provisioner for one pooled holder;
2. sends it a StoreFragment with the backup copy and key slot ``backup``,
   and waits for its HolderAck on ``{p}.acks``;
3. moves the placement to the new holder with key slot ``backup``, so the
   authorizer derives the fragment key for that slot from now on;
4. announces ``holder_replaced`` naming the failed and the new holder.

Before the placement moves, it appends two audit records to the
authorizer's chain: ``holder.replaced`` for the failed holder and
``fragment.restored`` for the new one, so each holder's timeline in
``shardbus audit replay --holder`` shows the replacement.

The backup copy stays sealed end to end: neither the repair nor the new
holder ever sees the plaintext fragment.

The repair acts only on an event whose signature verifies with the audit
key (shardbus.audit.events); the provisioner, which reads the same topic,
dead-letters the others.

An event processed twice finds the placement moved already and does
nothing. If the restore fails, the new holder is released (the provisioner
tears it down) and the error propagates, so the event is retried.

NOTE: a crash between steps 1 and 3 leaves the new holder assigned with a
loaded fragment and no placement; the retried event provisions another one.
The provisioner's registry still lists the leftover holder.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from provisioner.api import GrantedHolder, ProvisionerClient
from provisioner.registry import HolderRegistry, HolderState
from schemas import codec
from schemas.holders import EventKind, HolderAck, HolderLifecycle, LifecycleEvent, StoreFragment
from schemas.topics import Topics
from shardbus.audit import AuditUnavailable
from shardbus.audit.events import verify_event
from shardbus.crypto.signing import VerifyKey
from shardbus.errors import DecodeError, IntegrityError, ServiceUnavailable
from shardbus.kafka import client_options, topic_partitions
from shardbus.store.mapping import BACKUP_SLOT, MappingTable, Placement, VersionRecord

log = logging.getLogger(__name__)

#: Asks the provisioner for one pooled holder: (secret name, secret version) -> the holder.
RequestHolder = Callable[[str, int], Awaitable[GrantedHolder]]
#: Sends a StoreFragment and returns the holder's acknowledgement.
StoreFn = Callable[[StoreFragment], Awaitable[HolderAck]]
#: Sends one lifecycle event.
AnnounceFn = Callable[[LifecycleEvent], Awaitable[None]]
#: Appends one audit record: (action, keyword fields of streams.outbox.Outbox.audit).
AuditFn = Callable[..., Awaitable[None]]

DEFAULT_ACK_TIMEOUT_S = 15.0


def pooled_holder_request(client: ProvisionerClient) -> RequestHolder:
    """Return a RequestHolder that sends its ProvisionRequest through `client`, which must be started."""

    async def request(secret_name: str, secret_version: int) -> GrantedHolder:
        holders = await client.request(1, HolderLifecycle.POOLED, secret_name=secret_name,
                                       secret_version=secret_version)
        return holders[0]

    return request


class HolderAcks:
    """Sends holder commands and waits for their HolderAck on ``{p}.acks``.

    The acknowledgements are read by a consumer of its own, from the end of
    the topic, so that only acknowledgements of commands sent after the
    start are waited for.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        send: Callable[[str, bytes, bytes], Awaitable[object]],
        *,
        timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._send = send
        self._timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[HolderAck]] = {}

    async def start(self) -> None:
        """Start reading acknowledgements from the end of ``{p}.acks``."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
                                    **client_options())
        await consumer.start()
        try:
            partitions = await topic_partitions(consumer, [self._topics.acks])
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for partition in partitions:
                await consumer.position(partition)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(), name="holder-acks")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def store(self, command: StoreFragment) -> HolderAck:
        """Send `command` to its holder and return the holder's acknowledgement.

        Raises ServiceUnavailable when none arrives within the timeout.
        """
        if self._consumer is None:
            raise RuntimeError("start HolderAcks before sending commands")
        future: asyncio.Future[HolderAck] = asyncio.get_running_loop().create_future()
        self._pending[command.request_id] = future
        try:
            await self._send(self._topics.holder(command.holder_id), Topics.partition_key(command),
                             codec.encode(command))
            return await asyncio.wait_for(future, self._timeout_s)
        except asyncio.TimeoutError:
            raise ServiceUnavailable(
                f"holder {command.holder_id} did not acknowledge fragment {command.fragment_index} of "
                f"{command.secret_name!r} v{command.secret_version} within {self._timeout_s:g} s"
            ) from None
        finally:
            self._pending.pop(command.request_id, None)

    async def _read(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            try:
                message = codec.decode(record.value or b"", HolderAck)
            except DecodeError:
                continue  # This reader only listens, so it does not dead-letter what it skips.
            future = self._pending.get(message.request_id)
            if future is not None and not future.done():
                future.set_result(message)


class HolderRepair:
    """Restores the fragment of each failed pooled holder on a new holder; see the module docstring."""

    def __init__(
        self,
        *,
        mapping: MappingTable,
        registry: HolderRegistry,
        request_holder: RequestHolder,
        store_fragment: StoreFn,
        announce: AnnounceFn,
        audit: AuditFn,
        clock_ms: Callable[[], int],
        verify_key: VerifyKey,
    ) -> None:
        """`verify_key` is the audit public key, which every event read must be signed for."""
        self._mapping = mapping
        self._registry = registry
        self._request_holder = request_holder
        self._store_fragment = store_fragment
        self._announce = announce
        self._audit = audit
        self._clock_ms = clock_ms
        self._verify_key = verify_key

    async def handle_encoded(self, value: bytes) -> None:
        """Decode one record of ``{p}.lifecycle`` and handle it.

        Records that do not decode or whose signature does not verify are
        left to the provisioner, which consumes the same topic and
        dead-letters them.
        """
        try:
            message = codec.decode(value, LifecycleEvent)
        except DecodeError:
            return
        try:
            verify_event(message, self._verify_key)
        except IntegrityError:
            log.warning("ignored %s event for holder %s: its signature does not verify with the audit key",
                        message.event.value, message.holder_id or "-")
            return
        await self.handle(message)

    async def handle(self, event: LifecycleEvent) -> None:
        """Replace the holder a verified ``holder_failed`` event names, if it had a placed fragment."""
        if event.event is not EventKind.HOLDER_FAILED or not event.holder_id or not event.secret_name:
            return
        failed_id, name = event.holder_id, event.secret_name
        found = await self._placement_of(name, failed_id)
        if found is None:
            return  # Not a pooled holder with a fragment, or replaced already.
        version, placement = found
        record = await self._registry.get(failed_id)
        if record is None or record.state is not HolderState.FAILED:
            # The provisioner records a failure in the registry before it
            # announces one. An event the registry contradicts is stale, or
            # forged where anyone may write the lifecycle topic (the
            # plaintext development stack).
            log.warning("ignored holder_failed for holder %s: the registry has it as %s, not failed",
                        failed_id, "missing" if record is None else record.state.value)
            return

        backup = await self._mapping.get_backup(name, version.version, placement.index)
        if backup is None:
            log.error("cannot replace holder %s: secret %r v%d has no backup of fragment %d",
                      failed_id, name, version.version, placement.index)
            await self._audit("holder.replace_failed", secret_name=name, secret_version=version.version,
                              holder_id=failed_id, outcome="failed",
                              detail=f"fragment {placement.index} has no backup copy")
            return

        holder = await self._request_holder(name, version.version)
        command = StoreFragment(
            holder_id=holder.holder_id, secret_name=name, secret_version=version.version,
            fragment_index=placement.index, key_version=version.key_version, sealed_fragment=backup,
            request_id=uuid.uuid4().hex, key_slot=BACKUP_SLOT,
        )
        try:
            ack = await self._store_fragment(command)
            if not ack.ok:
                raise ServiceUnavailable(f"holder {holder.holder_id} rejected the restored fragment: {ack.error}")
        except ServiceUnavailable:
            await self._release(holder.holder_id, name, version.version, "restoring the fragment failed")
            raise

        # The audit records come before the placement moves, as every audit
        # record comes before the action it describes.
        detail = f"replaces {failed_id}: fragment {placement.index} restored from the backup store"
        try:
            await self._audit("holder.replaced", secret_name=name, secret_version=version.version,
                              holder_id=failed_id, outcome="replaced",
                              detail=f"replaced by {holder.holder_id}: fragment {placement.index} restored from "
                                     "the backup store")
            await self._audit("fragment.restored", secret_name=name, secret_version=version.version,
                              holder_id=holder.holder_id, outcome="restored", detail=detail)
        except AuditUnavailable:
            # The placement stays, so no placement would name the new holder's fragment.
            await self._release(holder.holder_id, name, version.version, "the audit log is unavailable")
            raise
        replacement = Placement(index=placement.index, holder_id=holder.holder_id, key_slot=BACKUP_SLOT)
        if not await self._mapping.replace_placement(name, version.version, failed_id, replacement):
            log.info("holder %s was replaced meanwhile; releasing the spare holder %s", failed_id, holder.holder_id)
            await self._audit("holder.replace_abandoned", secret_name=name, secret_version=version.version,
                              holder_id=holder.holder_id, outcome="abandoned",
                              detail=f"fragment {placement.index} of {failed_id} was placed elsewhere meanwhile")
            await self._release(holder.holder_id, name, version.version, "the fragment was placed elsewhere")
            return

        log.info("replaced holder %s of secret %r v%d by holder %s (fragment %d)",
                 failed_id, name, version.version, holder.holder_id, placement.index)
        await self._announce(LifecycleEvent(
            event=EventKind.HOLDER_REPLACED, at_ms=self._clock_ms(), holder_id=holder.holder_id,
            operation_id="", secret_name=name, secret_version=version.version, detail=detail,
            holders=(failed_id, holder.holder_id),
        ))

    async def _placement_of(self, name: str, holder_id: str) -> tuple[VersionRecord, Placement] | None:
        record = await self._mapping.get(name)
        if record is None:
            return None
        for version in sorted(record.versions.values(), key=lambda v: v.version != record.current):
            for placement in version.placements:
                if placement.holder_id == holder_id:
                    return version, placement
        return None

    async def _release(self, holder_id: str, name: str, version: int, detail: str) -> None:
        # holders_released makes the provisioner tear the holder down, which wipes what it stores.
        await self._announce(LifecycleEvent(
            event=EventKind.HOLDERS_RELEASED, at_ms=self._clock_ms(), holder_id="", operation_id="",
            secret_name=name, secret_version=version, detail=detail, holders=(holder_id,),
        ))
