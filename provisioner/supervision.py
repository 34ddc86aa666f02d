"""Watching the provisioner's holders: heartbeats, failures, teardowns, adoption.

A holder is alive while its process runs and its heartbeats arrive. The
supervisor pins each holder's public key (from the backend's private channel,
or from the registry for an adopted holder) and ignores heartbeats with
another key or process id. A holder whose process exits, or whose last
heartbeat is older than ``heartbeat_timeout_s``, is recorded failed and
announced with ``holder_failed``. A per-operation holder still running
``orphan_timeout_s`` after it was handed out is torn down, because its
``operation_completed`` event was missed.

Each teardown and failure is recorded in the audit outbox before the holder
is stopped (see ``provisioner.holder_audit``), and never waits for the audit
log, so a holder stops on time even while the log is unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from provisioner.adoption import adopt_running
from provisioner.backend import HolderBackend
from provisioner.config import ProvisionerConfig
from provisioner.holder_audit import HolderAudit
from provisioner.pool import WarmPool
from provisioner.registry import HolderRecord, HolderRegistry, HolderState
from schemas.holders import EventKind, HolderHeartbeat
from schemas.topics import Topics
from shardbus.audit import actions
from shardbus.kafka import delete_topics

log = logging.getLogger(__name__)

FailureHook = Callable[[HolderRecord], Awaitable[None]]
EmitFn = Callable[..., Awaitable[None]]
SpawnFn = Callable[[Awaitable[None], str], None]

_STARTING_WHEN_STOPPED = "it was still starting when the earlier provisioner stopped"


class HolderSupervisor:
    """Keeps track of which holders are alive and ends those that are not."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Topics,
        backend: HolderBackend,
        registry: HolderRegistry,
        config: ProvisionerConfig,
        emit: EmitFn,
        spawn: SpawnFn,
        on_holder_failed: FailureHook,
        clock_ms: Callable[[], int],
        audit: HolderAudit,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._backend = backend
        self._registry = registry
        self._config = config
        self._emit = emit
        self._spawn = spawn
        self._on_holder_failed = on_holder_failed
        self._clock_ms = clock_ms
        self._audit = audit
        #: Set by the provisioner once the pool exists, because the pool calls back into fail_holder.
        self.pool: WarmPool | None = None
        #: Set by the provisioner when holders have certificates: deletes a holder's ACLs.
        self.revoke_access: Callable[[str], Awaitable[None]] | None = None
        self._keys: dict[str, bytes] = {}
        self._ignored: dict[str, int] = {}
        self._last_seen: dict[str, float] = {}
        self._failed: set[str] = set()
        #: When each per-operation holder was handed out, in clock_ms milliseconds.
        self._per_operation_since: dict[str, int] = {}

    def _pool(self) -> WarmPool:
        if self.pool is None:
            raise RuntimeError("the supervisor has no pool yet")
        return self.pool

    def handed_out(self, holder_id: str, *, per_operation: bool) -> None:
        """Note that a holder left the pool, so a per-operation one gets its orphan deadline."""
        if per_operation:
            self._per_operation_since[holder_id] = self._clock_ms()

    def _warn_ignored(self, holder_id: str, why: str) -> None:
        # Anyone who can write to the heartbeats topic can forge heartbeats,
        # so log the first and then every hundredth, not each one.
        self._ignored[holder_id] = count = self._ignored.get(holder_id, 0) + 1
        if count == 1 or count % 100 == 0:
            log.warning("ignored heartbeat for holder %s %s (%d ignored so far)", holder_id, why, count)

    async def on_heartbeat(self, heartbeat: HolderHeartbeat) -> None:
        """Record a heartbeat of one of this provisioner's holders, if it is genuine."""
        holder_id = heartbeat.holder_id
        status = self._backend.status(holder_id)
        if status is None or holder_id in self._failed:
            return  # Not a holder of this provisioner, or one already given up.
        if status.pid and status.pid != heartbeat.pid:
            self._warn_ignored(holder_id, f"from pid {heartbeat.pid}, expected pid {status.pid}")
            return
        pinned = self._keys.get(holder_id)
        if pinned is None:
            if not self._pool().on_heartbeat(holder_id, heartbeat.public_key, heartbeat.kem, heartbeat.pid):
                return
            self._keys[holder_id] = heartbeat.public_key
        elif pinned != heartbeat.public_key:
            self._warn_ignored(holder_id, "with a public key other than its first")
            return
        self._last_seen[holder_id] = time.monotonic()
        loaded = [(f.secret_name, f.secret_version, f.fragment_index) for f in heartbeat.loaded]
        await self._registry.record_heartbeat(holder_id, self._clock_ms(), loaded)

    async def adopt(self) -> None:
        """Take over the holders of an earlier provisioner; see ``provisioner.adoption``."""
        adoption = await adopt_running(self._registry, self._backend)
        now = time.monotonic()
        for holder in adoption.pooled:
            self._keys[holder.holder_id] = holder.public_key
            self._last_seen[holder.holder_id] = now
            await self._pool().adopt(holder)
        for record in adoption.in_use:
            self._keys[record.holder_id] = record.public_key
            self._last_seen[record.holder_id] = now
            if record.state is HolderState.PER_OPERATION:
                self._per_operation_since[record.holder_id] = record.updated_ms
        for holder_id in adoption.unready:
            await self.teardown(holder_id, _STARTING_WHEN_STOPPED)
        for record in adoption.gone:
            await self._record_gone(record)

    async def _record_gone(self, record: HolderRecord) -> None:
        """Report failed a holder that stopped running while no provisioner watched it."""
        if record.state is HolderState.WARMING:
            await self._audit.enqueue(actions.HOLDER_TORN_DOWN, record, outcome="torn_down",
                                      detail=_STARTING_WHEN_STOPPED)
            await self._registry.set_state(record.holder_id, HolderState.TORN_DOWN, detail=_STARTING_WHEN_STOPPED)
            return
        self._failed.add(record.holder_id)
        reason = f"holder process {record.pid} no longer runs after a provisioner restart"
        log.warning("holder %s failed: %s", record.holder_id, reason)
        await self._audit.enqueue(actions.HOLDER_FAILED, record, outcome="failed", detail=reason)
        await self._delete_topic(record.holder_id)
        await self._registry.set_state(record.holder_id, HolderState.FAILED, detail=reason)
        failed = await self._registry.get(record.holder_id) or record
        await self._emit(EventKind.HOLDER_FAILED, failed, detail=reason)
        await self._on_holder_failed(failed)

    async def teardown(self, holder_id: str, detail: str) -> None:
        """Record the teardown in the audit outbox, stop the holder and delete its topic, then announce it."""
        known = await self._known_record(holder_id)
        if known is None or known.state not in (HolderState.FAILED, HolderState.TORN_DOWN):
            subject = known or HolderRecord(holder_id, HolderState.TORN_DOWN)
            await self._audit.enqueue(actions.HOLDER_TORN_DOWN, subject, outcome="torn_down", detail=detail)
        await self._backend.stop(holder_id, self._config.stop_timeout_s)
        await self._delete_topic(holder_id)
        self._forget(holder_id)
        record = await self._registry.get(holder_id)
        if record is not None and record.state in (HolderState.FAILED, HolderState.TORN_DOWN):
            return
        await self._registry.set_state(holder_id, HolderState.TORN_DOWN, detail=detail)
        record = await self._registry.get(holder_id) or HolderRecord(holder_id, HolderState.TORN_DOWN)
        await self._emit(EventKind.HOLDER_TORN_DOWN, record, detail=detail)
        log.info("tore down holder %s: %s", holder_id, detail)

    async def fail_holder(self, holder_id: str, reason: str) -> None:
        """Record a holder as failed, stop what is left of it and call the failure hook.

        Calling it again for the same holder does nothing.
        """
        pool = self._pool()
        if holder_id in self._failed:
            return
        if pool.is_starting(holder_id):
            # The pool's watcher gives the launch up and calls back.
            pool.discard(holder_id, reason)
            return
        self._failed.add(holder_id)
        pool.discard(holder_id, reason)
        log.warning("holder %s failed: %s", holder_id, reason)
        known = await self._known_record(holder_id)
        await self._audit.enqueue(actions.HOLDER_FAILED, known or HolderRecord(holder_id, HolderState.FAILED),
                                  outcome="failed", detail=reason)
        await self._backend.stop(holder_id, self._config.stop_timeout_s)
        await self._delete_topic(holder_id)
        self._forget(holder_id)
        await self._registry.set_state(holder_id, HolderState.FAILED, detail=reason[:2048])
        record = await self._registry.get(holder_id) or HolderRecord(holder_id, HolderState.FAILED)
        await self._emit(EventKind.HOLDER_FAILED, record, detail=reason)
        pool.request_refill()
        await self._on_holder_failed(record)

    async def _known_record(self, holder_id: str) -> HolderRecord | None:
        # A holder is stopped even when Redis fails, so its record is then
        # written with the holder id alone.
        try:
            return await self._registry.get(holder_id)
        except RedisError as exc:
            log.error("cannot read holder %s from the registry before stopping it: %s", holder_id, exc)
            return None

    def _forget(self, holder_id: str) -> None:
        self._keys.pop(holder_id, None)
        self._last_seen.pop(holder_id, None)
        self._per_operation_since.pop(holder_id, None)

    async def _delete_topic(self, holder_id: str) -> None:
        # Every path that ends a holder deletes its topic here, so its ACLs go too.
        if self.revoke_access is not None:
            await self.revoke_access(holder_id)
        try:
            await delete_topics(self._bootstrap, [self._topics.holder(holder_id)])
        except KafkaError as exc:
            log.warning("could not delete the topic of holder %s: %s", holder_id, exc)

    async def watch(self) -> None:
        """Check every holder once per heartbeat interval, until cancelled."""
        while True:
            await asyncio.sleep(self._config.heartbeat_interval_s)
            now = time.monotonic()
            for holder_id in self._backend.holder_ids():
                status = self._backend.status(holder_id)
                if status is not None and not status.alive:
                    await self.fail_holder(holder_id, f"holder process exited ({status.detail})")
                    continue
                seen = self._last_seen.get(holder_id)
                if seen is not None and now - seen > self._config.heartbeat_timeout_s:
                    await self.fail_holder(holder_id, f"no heartbeat for {now - seen:.1f} s")
            self._tear_down_orphans()

    def _tear_down_orphans(self) -> None:
        now_ms = self._clock_ms()
        limit_ms = int(self._config.orphan_timeout_s * 1000)
        for holder_id, since_ms in list(self._per_operation_since.items()):
            if now_ms - since_ms > limit_ms:
                del self._per_operation_since[holder_id]
                age_s = (now_ms - since_ms) / 1000
                detail = f"per-operation holder still running {age_s:.0f} s after it was handed out"
                self._spawn(self.teardown(holder_id, detail), f"orphan-{holder_id}")
