"""The provisioner service: hands out holders and cleans up after them.

It consumes three topics:

- ``{p}.provisioner``: a ProvisionRequest takes holders from the warm pool,
  which starts new ones if it is empty. The holders are recorded in the
  registry as assigned (pooled) or per_operation, and a ProvisionReply with
  their ids and public keys goes to the request's ``reply_topic``. The
  provisioner never reads or sends fragments, because the caller loads them.
- ``{p}.heartbeats``: a holder's first heartbeat makes it ready; later ones
  keep it alive. A heartbeat from a process other than the one started, or
  with another public key than the first, is ignored.
- ``{p}.lifecycle``: ``operation_completed`` tears down the operation's
  per-operation holders and refills the pool. ``lease_released`` and
  ``lease_expired`` make the pooled holders they name ``holder_returned``:
  a pooled holder's part ends with the lease, not with the reply.
  ``holders_released`` tears down the holders it names, whose fragments were
  destroyed. With mutual TLS only the services may write this topic
  (shardbus.certs.acls); holders acknowledge commands on ``{p}.acks``.
  The provisioner acts only on an event signed with the audit key
  (shardbus.audit.events), and dead-letters one whose signature does not
  verify, so a principal without that key cannot make it tear holders down.
  It signs the events it sends with the same key.

A watcher marks a holder failed, with a ``holder_failed`` event, when its
process exits or its heartbeats stop, and tears down a per-operation holder
that outlived ``orphan_timeout_s`` (its ``operation_completed`` event was
missed, for example while no provisioner ran).

Holders outlive the provisioner. On start it adopts the holders of an
earlier provisioner that still run (``provisioner.adoption``), so a crash or
a restart loses no pooled fragment. Stopping the service leaves the ready
holders running for the next provisioner to adopt, and tears down only
those still starting. With ``teardown_on_stop`` it tears down every holder,
pooled ones included, which suits a throwaway deployment.

Every holder handed out, torn down, failed or returned is an audit record
on ``{p}.audit`` (see ``provisioner.holder_audit``). A provision whose
records the audit log did not acknowledge hands out no holder, and its reply
says ``audit_unavailable``.

Partitions are assigned directly, from the end, so no consumer group is
involved: one provisioner owns its holder processes, and a request sent
while no provisioner runs times out at the caller instead of being served
late.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from provisioner.api import AUDIT_UNAVAILABLE_ERROR
from provisioner.backend import HolderBackend, HolderSpec
from provisioner.config import HOLDER_TOPIC_CONFIG, ProvisionerConfig
from provisioner.holder_audit import HolderAudit
from provisioner.pool import WarmPool, new_holder_id
from provisioner.registry import HolderRecord, HolderRegistry, HolderState
from provisioner.supervision import FailureHook, HolderSupervisor
from schemas import codec
from schemas.audit import DeadLetter
from schemas.base import Message
from schemas.holders import (
    EventKind,
    HolderHeartbeat,
    HolderLifecycle,
    LifecycleEvent,
    ProvisionedHolder,
    ProvisionReply,
    ProvisionRequest,
)
from schemas.topics import Topics
from shardbus.audit import AuditLog, AuditUnavailable, actions
from shardbus.audit.events import verify_event
from shardbus.errors import DecodeError, IntegrityError, ServiceUnavailable
from shardbus.kafka import RELIABLE_PRODUCER, client_options, ensure_topics, topic_partitions
from shardbus.readiness import mark_ready

if TYPE_CHECKING:
    from provisioner.access import HolderAccess

log = logging.getLogger(__name__)

def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _no_action(record: HolderRecord) -> None:
    # The replacement is not made here: restoring a fragment needs the master
    # key, so the repair agent in the authorizer acts on the holder_failed
    # event (see provisioner.repair).
    return None


class Provisioner:
    """Runs the provisioner until `stop()`; see the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        backend: HolderBackend,
        redis: Redis,
        config: ProvisionerConfig = ProvisionerConfig(),
        *,
        clock_ms: Callable[[], int] = _now_ms,
        make_holder_id: Callable[[], str] = new_holder_id,
        on_holder_failed: FailureHook = _no_action,
        access: HolderAccess | None = None,
        audit: AuditLog,
    ) -> None:
        """Describe the service; `audit` is its AuditLog (role "provisioner"), which `run()` starts and closes."""
        self._bootstrap = bootstrap
        #: Issues holder certificates and ACLs when Kafka requires mutual TLS.
        self.access = access
        self.topics = topics
        self.backend = backend
        self.config = config
        self.registry = HolderRegistry(redis, topics.prefix, clock_ms=clock_ms)
        self._clock_ms = clock_ms
        self.audit = HolderAudit(audit, redis, topics.prefix, clock_ms=clock_ms)
        # The audit key also signs the lifecycle events sent and checks those received.
        self._event_keys = audit
        self.supervisor = HolderSupervisor(
            bootstrap=bootstrap, topics=topics, backend=backend, registry=self.registry, config=config,
            emit=self._emit, spawn=self._spawn, on_holder_failed=on_holder_failed, clock_ms=clock_ms,
            audit=self.audit,
        )
        self.pool = WarmPool(
            backend, self.registry, self._spec_for, self._create_holder_topics, self.fail_holder,
            target=config.pool_size, ready_timeout_s=config.ready_timeout_s, make_holder_id=make_holder_id,
        )
        self.supervisor.pool = self.pool
        if access is not None:
            self.supervisor.revoke_access = access.revoke
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        #: Set once the consumer has its position, so a request sent now is seen.
        self.ready = asyncio.Event()

    def _spec_for(self, holder_id: str) -> HolderSpec:
        tls = self.access.credentials(holder_id) if self.access is not None else None
        return HolderSpec(holder_id, self._bootstrap, self.topics.prefix,
                          self.config.heartbeat_interval_s, self.config.kem, tls=tls)

    async def _create_holder_topics(self, holder_ids: list[str]) -> None:
        await ensure_topics(self._bootstrap, [self.topics.holder(h) for h in holder_ids],
                            config=HOLDER_TOPIC_CONFIG)
        if self.access is not None:
            await self.access.grant(holder_ids)

    # -- running ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the service to stop; safe to call from a signal handler."""
        self._stopping.set()

    async def run(self) -> None:
        """Adopt the holders still running, serve until stopped, then stop the pool."""
        consumed = [self.topics.provisioner, self.topics.heartbeats, self.topics.lifecycle]
        # Its holders write acknowledgements to {p}.acks, which they may not create.
        await ensure_topics(self._bootstrap, consumed + [self.topics.acks, self.topics.deadletter])
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, client_id="provisioner",
                                          **RELIABLE_PRODUCER, **client_options())
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, client_id="provisioner",
                                          group_id=None, enable_auto_commit=False, **client_options())
        await self._producer.start()
        try:
            await self.audit.start()
            await self._consumer.start()
            try:
                await self._assign_from_end(consumed)
                await self.supervisor.adopt()
                self.pool.start()
                self._spawn(self.supervisor.watch(), "watch-holders")
                self.ready.set()
                self._spawn(self._announce_ready(), "announce-ready")
                log.info("provisioner serving prefix %s with a pool of %d", self.topics.prefix, self.pool.target)
                await self._serve()
            finally:
                await self._consumer.stop()
            await self._shutdown()
        finally:
            # After the shutdown, so that the records of its teardowns are written.
            await self.audit.close()
            await self._producer.stop()

    async def _announce_ready(self) -> None:
        # A supervisor waits for the ready file before it sends requests, so
        # the file waits for a full pool, which serves them without cold starts.
        try:
            await self.pool.wait_filled(self.config.ready_timeout_s)
        except ServiceUnavailable as exc:
            log.warning("announcing readiness without a full pool: %s", exc)
        mark_ready()

    async def _assign_from_end(self, topic_names: list[str]) -> None:
        assert self._consumer is not None
        partitions = await topic_partitions(self._consumer, topic_names)
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:
            await self._consumer.position(partition)

    async def _serve(self) -> None:
        assert self._consumer is not None
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                fetch = asyncio.create_task(self._consumer.getmany(timeout_ms=500))
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    await asyncio.gather(fetch, return_exceptions=True)
                    break
                for records in fetch.result().values():
                    for record in records:
                        await self._dispatch(record)
        finally:
            stopping.cancel()

    async def _shutdown(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _, starting = await self.pool.close()
        doomed = starting
        if self.config.teardown_on_stop:
            # A launch may still wait in backend.start(), so `starting` has
            # holders the backend does not list yet, and their topics exist.
            doomed = sorted(set(self.backend.holder_ids()) | set(starting))
        await asyncio.gather(*(self.teardown(h, "the provisioner is stopping") for h in doomed))
        left = len(self.backend.holder_ids())
        log.info("provisioner stopped: tore down %d holders, left %d running for the next provisioner to adopt",
                 len(doomed), left)

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("provisioner task %s failed", task.get_name(), exc_info=task.exception())

    # -- incoming records -----------------------------------------------------------

    async def _dispatch(self, record) -> None:  # noqa: ANN001 (aiokafka ConsumerRecord)
        payload = record.value if record.value is not None else b""
        expected = {
            self.topics.provisioner: (ProvisionRequest,),
            self.topics.heartbeats: (HolderHeartbeat,),
            self.topics.lifecycle: (LifecycleEvent,),
        }[record.topic]
        try:
            message = codec.decode(payload, expected)
        except DecodeError as exc:
            await self._dead_letter(record.topic, record.partition, record.offset, payload, str(exc))
            return
        if isinstance(message, LifecycleEvent):
            try:
                verify_event(message, self._event_keys.verify_key)
            except IntegrityError:
                # _dead_letter logs the one line, with the kind and ids from the reason.
                await self._dead_letter(record.topic, record.partition, record.offset, payload,
                                        f"LifecycleEvent.signature: expected a signature by the audit key, got one "
                                        f"that does not verify; not acting on this {message.event.value} event "
                                        f"(operation {message.operation_id or '-'}, holders "
                                        f"{', '.join(message.holders) or '-'})")
                return
        try:
            if isinstance(message, ProvisionRequest):
                self._spawn(self.provision(message), f"provision-{message.request_id}")
            elif isinstance(message, HolderHeartbeat):
                await self.supervisor.on_heartbeat(message)
            elif isinstance(message, LifecycleEvent):
                await self._on_lifecycle(message)
        except RedisError as exc:
            log.error("could not handle %s from %s[%d]@%d, Redis failed: %s", message.type_name,
                      record.topic, record.partition, record.offset, exc)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the provisioner.
            log.exception("failed to handle %s from %s[%d]@%d", message.type_name,
                          record.topic, record.partition, record.offset)
            await self._dead_letter(record.topic, record.partition, record.offset, payload,
                                    f"the provisioner failed on this {message.type_name}: {type(exc).__name__}")

    async def _on_lifecycle(self, event: LifecycleEvent) -> None:
        named = set(event.holders) | ({event.holder_id} if event.holder_id else set())
        if event.event is EventKind.HOLDERS_RELEASED:
            for holder_id in sorted(named):
                if self.backend.status(holder_id) is not None:
                    self._spawn(self.teardown(holder_id, "its fragments were destroyed"), f"release-{holder_id}")
            self.pool.request_refill()
            return
        if event.event is EventKind.OPERATION_COMPLETED:
            if event.operation_id:
                self._spawn(self.teardown_operation(event.operation_id), f"teardown-{event.operation_id}")
            return
        if event.event not in (EventKind.LEASE_RELEASED, EventKind.LEASE_EXPIRED):
            return
        # Every lease end names all the holders of its operation, so their
        # records are read and their events sent together, not one round
        # trip after another on the loop that also reads heartbeats.
        records = await asyncio.gather(*(self.registry.get(holder_id) for holder_id in sorted(named)))
        await asyncio.gather(*(
            self._emit(EventKind.HOLDER_RETURNED, record, detail=f"after {event.event.value}",
                       operation_id=event.operation_id)
            for record in records
            if record is not None and record.state is HolderState.ASSIGNED
        ))

    # -- actions --------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> None:
        """Serve one ProvisionRequest and send its ProvisionReply."""
        running = len(self.backend.holder_ids())
        unready = running - self.pool.ready_count
        try:
            self._check_holder_limit(request.count, unready)
            taken = await self.pool.take(request.count)
        except ServiceUnavailable as exc:
            log.warning("provision request %s for %d holders failed: %s", request.request_id, request.count, exc)
            await self._send(request.reply_topic, ProvisionReply(request.request_id, holders=(), error=str(exc)))
            return

        ids = tuple(h.holder_id for h in taken)
        try:
            await self.audit.provisioned(request, ids)
        except AuditUnavailable as exc:
            # Fail closed: the holders are still empty, so they go back to the pool unused.
            log.error("provision request %s: handed out none of holders %s, because the audit log is "
                      "unavailable: %s", request.request_id, ", ".join(ids), exc)
            await self.pool.put_back(taken)
            error = (f"{AUDIT_UNAVAILABLE_ERROR}: the audit log is unavailable, so no holder was handed out; "
                     "retry once Kafka accepts audit records again")
            await self._send(request.reply_topic, ProvisionReply(request.request_id, holders=(), error=error))
            return

        per_operation = request.lifecycle is HolderLifecycle.PER_OPERATION
        state = HolderState.PER_OPERATION if per_operation else HolderState.ASSIGNED
        for holder in taken:
            self.supervisor.handed_out(holder.holder_id, per_operation=per_operation)
            await self.registry.set_state(
                holder.holder_id, state,
                lifecycle=request.lifecycle.value, operation_id=request.operation_id,
                secret_name=request.secret_name, secret_version=request.secret_version,
            )

        reply = ProvisionReply(
            request_id=request.request_id,
            holders=tuple(ProvisionedHolder(h.holder_id, h.public_key, h.kem) for h in taken),
            error="",
        )
        await self._send(request.reply_topic, reply)

        log.info("provision request %s: %s holders %s for %r v%d, operation %s", request.request_id,
                 request.lifecycle.value, ", ".join(ids), request.secret_name, request.secret_version,
                 request.operation_id or "-")
        await self._send(self.topics.lifecycle, LifecycleEvent(
            event=EventKind.HOLDER_PROVISIONED, at_ms=self._clock_ms(), holder_id="",
            operation_id=request.operation_id, secret_name=request.secret_name,
            secret_version=request.secret_version, detail=request.lifecycle.value, holders=ids,
        ))

    def _check_holder_limit(self, count: int, unready: int) -> None:
        """Raise ServiceUnavailable when `count` more holders would exceed --max-holders.

        `unready` counts the running holders that are not ready in the warm
        pool. Pooled holders that keep a stored fragment stay among them until
        their secret is deleted, so the limit also caps how many secrets are stored.
        """
        limit = self.config.max_holders
        if count > limit:
            raise ServiceUnavailable(
                f"{count} holders exceed --max-holders ({limit}), so retrying cannot help; "
                f"restart the provisioner with --max-holders {count} or more"
            )
        if unready + count > limit:
            raise ServiceUnavailable(
                f"{count} more holders would exceed --max-holders ({limit}), because {unready} holders are in "
                "use or starting, counting pooled holders that keep stored fragments. Retry after operations "
                "complete or secrets are deleted, or restart the provisioner with a larger --max-holders"
            )

    async def teardown_operation(self, operation_id: str) -> None:
        """Tear down the per-operation holders of one operation and refill the pool."""
        holder_ids = await self.registry.holders_of_operation(operation_id)
        for holder_id in holder_ids:
            await self.teardown(holder_id, f"operation {operation_id} completed")
        await self.registry.forget_operation(operation_id)
        self.pool.request_refill()

    async def teardown(self, holder_id: str, detail: str) -> None:
        """Stop a holder, delete its topic, record it torn down and announce it."""
        await self.supervisor.teardown(holder_id, detail)

    async def fail_holder(self, holder_id: str, reason: str) -> None:
        """Record a holder as failed and stop it; calling it again for the same holder does nothing."""
        await self.supervisor.fail_holder(holder_id, reason)

    # -- outgoing records -----------------------------------------------------------

    async def _emit(self, kind: EventKind, record: HolderRecord, *, detail: str = "", operation_id: str = "") -> None:
        if kind is EventKind.HOLDER_RETURNED:
            # Returning a pooled holder exposes nothing new, so its record goes through the outbox.
            await self.audit.enqueue(actions.HOLDER_RETURNED, record, outcome="returned", detail=detail,
                                     operation_id=operation_id)
        await self._send(self.topics.lifecycle, LifecycleEvent(
            event=kind, at_ms=self._clock_ms(), holder_id=record.holder_id,
            operation_id=operation_id or record.operation_id, secret_name=record.secret_name,
            secret_version=record.secret_version, detail=detail[:2048], holders=(record.holder_id,),
        ))

    async def _dead_letter(self, topic: str, partition: int, offset: int, payload: bytes, reason: str) -> None:
        log.warning("sent the record at %s[%d]@%d to the dead-letter topic: %s", topic, partition, offset, reason)
        await self._send(self.topics.deadletter, DeadLetter(
            source_topic=topic, partition=partition, offset=offset, reason=reason[:2048],
            payload_size=len(payload), payload_sha256=hashlib.sha256(payload).digest(), at_ms=self._clock_ms(),
        ))

    async def _send(self, topic: str, message: Message) -> None:
        if self._producer is None:
            raise RuntimeError("the provisioner's producer is not running")
        if isinstance(message, LifecycleEvent):
            message = self._event_keys.sign_event(message)
        try:
            await self._producer.send_and_wait(topic, codec.encode(message), key=Topics.partition_key(message))
        except KafkaError as exc:
            log.error("could not send %s to %s: %s", message.type_name, topic, exc)
