"""The reassembler: rebuilds each operation's secret from k fragments and sends the lease.

It consumes ``{p}.plans`` and ``{p}.fragments``, which have the same number
of partitions and are both keyed by operation id, through one faust agent,
so the plan and the fragments of one operation are handled one at a time.
A plan may arrive before or after its fragments. As soon as ``threshold``
fragments open with this reassembler's key and match their commitments, it
combines them, checks the digest, seals a LeasePayload to the app's reply
key and sends a LeaseReply. For an operation whose deadline passed, a timer
sends fragment_corrupted (naming the holders whose fragment was rejected) or
fragment_missing (naming the holders that sent none). Each operation gets
exactly one final reply, claimed in Redis first (see streams.replies),
followed by a LifecycleEvent ``operation_completed`` listing its holders.

Each lease is recorded in Redis before its LeaseReply is sent, and a timer
sweeps the leases that expired without a release: each gets the audit
record ``lease.expired`` and the LifecycleEvent ``lease_expired``
(streams.leases).

The per-operation state lives in Redis (streams.opstate) rather than in a
faust windowed table: it survives a crash of the process, it is shared by
several reassembler instances, and it avoids faust's known bugs with
windowed-table expiry after a rebalance. The state contains the responses as
they arrived, still sealed to the reassembler, never a plaintext fragment.

NOTE: HPKE base mode does not authenticate the sender, so anyone who can
write to ``{p}.plans`` can seal a plan. A forged plan cannot produce a lease
for fragments it has no commitments for, but it can make an operation fail.

Run it with ``python -m streams.reassembler``; it reads shardbus.config.Settings
and ``SHARDBUS_AGENT_WINDOW``, the number of records it handles at once
(default 16; see streams.agents). Records of one operation take turns on a
lock, so only records of different operations overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable

import faust
from redis.asyncio import Redis

from schemas import codec
from schemas.messages import (
    ErrorReply,
    EventKind,
    FragmentResponse,
    LeaseReply,
    LifecycleEvent,
    OperationPlan,
    Reason,
)
from schemas.sealed import PlanContext
from schemas.topics import Topics
from shardbus.audit import AuditLog
from shardbus.config import Settings
from shardbus.crypto import envelope
from shardbus.deployment import load_reassembler_key
from shardbus.errors import CombineError, DecodeError, IntegrityError
from shardbus.kafka import ensure_topics
from shardbus.redis_health import check_redis
from shardbus.sharing.fragment import Fragment
from streams.app import (
    DEFAULT_PARTITIONS,
    LARGE_RECORD_CONFIG,
    check_copartitioned,
    make_app,
    raw_topic,
    run_main,
    run_until_stopped,
)
from streams.assembly import FragmentRejected, open_context, open_fragment, seal_lease
from streams.agents import ReliableProducer, agent_window, handle_in_order
from streams.handling import InputRecord, RepeatedFailureLog
from streams.leases import SWEEP_INTERVAL_S, LeaseBook, LeaseExpiry
from streams.opstate import OperationState, OperationStore
from streams.outbox import AuditWriter, Outbox, Outgoing, SendFn, SendManyFn
from streams.replies import ReplyLedger

log = logging.getLogger(__name__)

# Operations are serialised within one process by one of these locks, picked
# by a hash of the operation id, so the agent and the timer never work on the
# same operation at once while the number of locks stays fixed.
_LOCK_STRIPES = 64

#: Seconds after start-up during which no deadline is judged, so that the
#: agent first handles the records that queued up while no reassembler ran.
CATCH_UP_GRACE_S = 10.0


class Reassembler:
    """The reassembler's handling of plans, responses and deadlines, independent of faust."""

    def __init__(
        self,
        *,
        keys: envelope.EnvelopeKeyPair,
        redis: Redis,
        redis_prefix: str,
        topics: Topics,
        send: SendFn,
        audit: AuditWriter,
        send_many: SendManyFn | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self._keys = keys
        self._clock = clock
        self.outbox = Outbox(send, topics, "reassembler", audit=audit, send_many=send_many, clock=clock)
        self._store = OperationStore(redis, redis_prefix)
        self._ledger = ReplyLedger(redis, redis_prefix)
        self._leases = LeaseBook(redis, redis_prefix)
        self.lease_expiry = LeaseExpiry(self._leases, self.outbox, clock=clock)
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]

    def _lock(self, operation_id: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(operation_id.encode()) % _LOCK_STRIPES]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def handle(self, record: InputRecord) -> None:
        """Handle one record of ``{p}.plans`` or ``{p}.fragments``."""
        expected = OperationPlan if record.topic == self.topics.plans else FragmentResponse
        try:
            message = codec.decode(record.value, expected)
        except DecodeError as exc:
            log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            await self.outbox.dead_letter(record.topic, record.partition, record.offset, record.value, str(exc))
            return
        async with self._lock(message.operation_id):
            if isinstance(message, OperationPlan):
                await self._on_plan(message, record.value)
            else:
                await self._on_response(message, record.value)

    async def _on_plan(self, plan: OperationPlan, encoded: bytes) -> None:
        operation_id = plan.operation_id
        if await self._finish_claimed(operation_id):
            await self.outbox.audit(
                "plan.ignored", operation_id=operation_id, app_id=plan.app_id, secret_name=plan.secret_name,
                secret_version=plan.secret_version, outcome="ignored", detail="the operation already has its final reply",
            )
            return
        if not await self._store.put_plan(operation_id, encoded, plan.deadline_ms):
            log.warning("ignored a second plan for operation %s of app %s", operation_id, plan.app_id)
            await self.outbox.audit(
                "plan.ignored", operation_id=operation_id, app_id=plan.app_id, secret_name=plan.secret_name,
                secret_version=plan.secret_version, outcome="ignored", detail="the operation has a plan already",
            )
            return
        await self._progress(operation_id, deadline_passed=False)

    async def _on_response(self, response: FragmentResponse, encoded: bytes) -> None:
        operation_id, holder_id = response.operation_id, response.holder_id
        if await self._finish_claimed(operation_id):
            log.info("ignored a late response from holder %s for finished operation %s", holder_id, operation_id)
            await self.outbox.audit(
                "fragment.ignored", operation_id=operation_id, holder_id=holder_id, outcome="ignored",
                detail="the operation already has its final reply",
            )
            return
        if not await self._store.put_response(operation_id, holder_id, encoded):
            log.info("ignored a second response from holder %s for operation %s", holder_id, operation_id)
            await self.outbox.audit(
                "fragment.ignored", operation_id=operation_id, holder_id=holder_id, outcome="ignored",
                detail="the holder responded already",
            )
            return
        await self.outbox.audit(
            "fragment.received", operation_id=operation_id, holder_id=holder_id,
            outcome="error" if response.error else "received",
            reason=str(response.error), detail=f"fragment {response.fragment_index}",
        )
        await self._progress(operation_id, deadline_passed=False)

    async def expire(self) -> None:
        """Send the final reply of every operation whose deadline has passed."""
        for operation_id in await self._store.expired(self._now_ms()):
            async with self._lock(operation_id):
                if await self._finish_claimed(operation_id):
                    # The state may have expired from Redis without its deadline entry.
                    await self._store.wipe(operation_id)
                    continue
                if not await self._progress(operation_id, deadline_passed=True):
                    # The plan expired from Redis, so no reply can be built.
                    log.warning("dropped operation %s: its deadline passed and its plan is gone", operation_id)
                    await self._store.wipe(operation_id)

    async def _finish_claimed(self, operation_id: str) -> bool:
        """Tell whether the operation has its final reply, and complete it if a crash interrupted it.

        A claim with state still in Redis means an earlier run claimed the
        reply and stopped before it wiped the state, maybe before it sent
        the reply. The claimed bytes are sent again; the app ignores a copy.
        """
        stored = await self._ledger.stored(operation_id)
        if stored is None:
            return False
        state = await self._store.load(operation_id)
        if state.empty:
            return True
        reply = codec.decode(stored, (LeaseReply, ErrorReply))
        plan = None if state.plan is None else codec.decode(state.plan, OperationPlan)
        log.info("sending the claimed reply of operation %s again", operation_id)
        # The interrupted run may have stopped before its record was
        # acknowledged, so the reply is audited again before it is sent again.
        await self.outbox.audit_many([_final_entry(reply, plan, again=True)])
        outgoing = [(self.topics.replies(reply.app_id), operation_id.encode(), stored)]
        if plan is not None:
            await self._record_lease(plan, reply)
            outgoing.append(self._completed(plan, reply))
        await self.outbox.send_all(outgoing)
        await self._store.wipe(operation_id)
        return True

    async def _progress(self, operation_id: str, *, deadline_passed: bool) -> bool:
        """Send the operation's final reply if it is due; return False when it has no plan yet."""
        state = await self._store.load(operation_id)
        if state.plan is None:
            return False
        plan = codec.decode(state.plan, OperationPlan)
        if not deadline_passed and self._still_waiting(plan, state):
            return True
        try:
            context = open_context(self._keys, plan)
        except (IntegrityError, DecodeError):
            log.error("the plan of operation %s does not open with this reassembler's key", operation_id)
            await self._finish(plan, _error(plan, Reason.INTERNAL_ERROR,
                               "the plan is sealed to another reassembler key; check the deployment's key files"))
            return True

        valid, rejected, failed = await self._check_responses(plan, context, state)
        if len(valid) >= plan.threshold:
            await self._finish(plan, self._lease_or_error(plan, context, valid))
            return True

        silent = [slot.holder_id for slot in plan.holders if slot.holder_id not in state.responses]
        if not deadline_passed and len(valid) + len(silent) >= plan.threshold:
            return True
        if rejected:
            reply = _error(plan, Reason.FRAGMENT_CORRUPTED,
                           f"{len(rejected)} fragments were rejected and only {len(valid)} of "
                           f"{plan.threshold} needed verified", tuple(rejected))
        else:
            errors = "".join(f"; holder {h} reported {e}" for h, e in failed.items())
            when = "before the deadline" if deadline_passed else "because the other holders reported errors"
            reply = _error(plan, Reason.FRAGMENT_MISSING,
                           f"only {len(valid)} of the {plan.threshold} fragments needed arrived {when}{errors}",
                           tuple(silent) + tuple(failed))
        await self._finish(plan, reply)
        return True

    @staticmethod
    def _still_waiting(plan: OperationPlan, state: OperationState) -> bool:
        """Return True when fewer than k usable responses are in and k can still arrive.

        Opening the plan and each fragment costs an HPKE decapsulation, so
        the reassembler waits until k responses could rebuild the secret.
        An invalid fragment counts as usable until then, when it is opened,
        rejected and audited. So this check never ends an operation early.
        """
        usable = lost = 0
        for slot in plan.holders:
            encoded = state.responses.get(slot.holder_id)
            if slot.holder_id in state.rejected:
                lost += 1
            elif encoded is not None and codec.decode(encoded, FragmentResponse).error:
                lost += 1
            elif encoded is not None:
                usable += 1
        return usable < plan.threshold <= len(plan.holders) - lost

    async def _check_responses(
        self, plan: OperationPlan, context: PlanContext, state: OperationState
    ) -> tuple[list[Fragment], list[str], dict[str, str]]:
        """Return the valid fragments in plan order, the rejected holders and the holders that reported an error."""
        slots = {slot.holder_id: slot.index for slot in plan.holders}
        for holder_id in state.responses:
            if holder_id not in slots and holder_id not in state.rejected:
                await self._reject(plan, holder_id, "the holder is not in the plan")
                state.rejected[holder_id] = "the holder is not in the plan"

        valid: list[Fragment] = []
        failed: dict[str, str] = {}
        for slot in plan.holders:
            encoded = state.responses.get(slot.holder_id)
            if encoded is None or slot.holder_id in state.rejected:
                continue
            response = codec.decode(encoded, FragmentResponse)
            if response.error:
                failed[slot.holder_id] = str(response.error)
                continue
            try:
                valid.append(open_fragment(self._keys, plan, context, slot.index, response))
            except FragmentRejected as exc:
                await self._reject(plan, slot.holder_id, str(exc))
                state.rejected[slot.holder_id] = str(exc)
        rejected = [slot.holder_id for slot in plan.holders if slot.holder_id in state.rejected]
        return valid, rejected, failed

    async def _reject(self, plan: OperationPlan, holder_id: str, why: str) -> None:
        if not await self._store.mark_rejected(plan.operation_id, holder_id, why):
            return
        log.warning("rejected the fragment of holder %s for operation %s on secret %r: %s",
                    holder_id, plan.operation_id, plan.secret_name, why)
        await self.outbox.audit(
            "fragment.rejected", operation_id=plan.operation_id, app_id=plan.app_id,
            secret_name=plan.secret_name, secret_version=plan.secret_version, holder_id=holder_id,
            outcome="rejected", detail=why,
        )

    def _lease_or_error(self, plan: OperationPlan, context: PlanContext, valid: list[Fragment]) -> LeaseReply | ErrorReply:
        try:
            return seal_lease(plan, context, valid, self._now_ms())
        except (CombineError, IntegrityError) as exc:
            # Every fragment matched its commitment, so the mapping record's
            # commitments and digest disagree with each other.
            log.error("operation %s on secret %r: verified fragments do not rebuild the secret (%s)",
                      plan.operation_id, plan.secret_name, type(exc).__name__)
            return _error(plan, Reason.INTERNAL_ERROR, "the verified fragments do not match the secret's digest")

    async def _finish(self, plan: OperationPlan, reply: LeaseReply | ErrorReply) -> None:
        """Claim, audit, send and announce the final reply, then wipe the operation's state."""
        encoded = codec.encode(reply)
        stored = await self._ledger.claim(plan.operation_id, encoded)
        if stored is not None:
            # Another attempt claimed first; its bytes are the reply, never ours.
            encoded = stored
            reply = codec.decode(stored, (LeaseReply, ErrorReply))
        if isinstance(reply, LeaseReply):
            log.info("issuing the lease of operation %s on secret %r to app %s",
                     plan.operation_id, plan.secret_name, plan.app_id)
        else:
            log.warning("operation %s on secret %r failed: %s (%s) holders %s",
                        plan.operation_id, plan.secret_name, reply.reason, reply.detail, ", ".join(reply.holders))
        # The claim comes first, so that only one reply is ever audited and
        # sent as new; the record comes before the reply it describes. When
        # the record fails, the claim stays and the retry sends the claimed
        # reply, audited again (_finish_claimed).
        await self.outbox.audit_many([_final_entry(reply, plan)])
        await self._record_lease(plan, reply)
        await self.outbox.send_all([
            (self.topics.replies(plan.app_id), plan.operation_id.encode(), encoded),
            self._completed(plan, reply),
        ])
        await self._store.wipe(plan.operation_id)

    async def _record_lease(self, plan: OperationPlan, reply: LeaseReply | ErrorReply) -> None:
        """Record a lease before its reply goes out, so that its release or expiry finds it."""
        if isinstance(reply, LeaseReply):
            await self._leases.record(
                plan.operation_id, app_id=plan.app_id, secret_name=plan.secret_name,
                secret_version=plan.secret_version, holders=tuple(slot.holder_id for slot in plan.holders),
                expires_at_ms=reply.expires_at_ms,
            )

    def _completed(self, plan: OperationPlan, reply: LeaseReply | ErrorReply) -> Outgoing:
        """Return the LifecycleEvent that announces the operation's end; the provisioner tears down its holders on it."""
        event = LifecycleEvent(
            event=EventKind.OPERATION_COMPLETED,
            at_ms=self._now_ms(),
            holder_id="",
            operation_id=plan.operation_id,
            secret_name=plan.secret_name,
            secret_version=plan.secret_version,
            detail="lease issued" if isinstance(reply, LeaseReply) else f"failed: {reply.reason}",
            holders=tuple(slot.holder_id for slot in plan.holders),
        )
        return self.outbox.outgoing(self.topics.lifecycle, event)


def _final_entry(reply: LeaseReply | ErrorReply, plan: OperationPlan | None, *, again: bool = False) -> dict[str, object]:
    """Return the audit entry of a final reply: ``lease.issued`` or ``operation.failed``."""
    ids = dict(operation_id=reply.operation_id, app_id=reply.app_id)
    if plan is not None:
        ids.update(secret_name=plan.secret_name, secret_version=plan.secret_version)
    if isinstance(reply, LeaseReply):
        entry = dict(action="lease.issued", outcome="issued", detail=f"expires at {reply.expires_at_ms} ms", **ids)
    else:
        entry = dict(action="operation.failed", outcome="failed", reason=str(reply.reason), detail=reply.detail, **ids)
    if again:
        entry.update(outcome="sent_again", detail=f"claimed reply sent again after an interrupted run; {entry['detail']}")
    return entry


def _error(plan: OperationPlan, reason: Reason, detail: str, holders: tuple[str, ...] = ()) -> ErrorReply:
    return ErrorReply(operation_id=plan.operation_id, app_id=plan.app_id, reason=reason, detail=detail, holders=holders)


def build_app(app: faust.App, reassembler: Reassembler, stopped: asyncio.Event) -> None:
    """Attach the reassembler's agent and deadline timer to a faust app."""
    inputs = raw_topic(app, reassembler.topics.plans, reassembler.topics.fragments)
    window = agent_window()

    @app.agent(inputs, name="reassembler.inputs")
    async def reassemble(stream: faust.StreamT) -> None:
        # A skipped record's operation still ends with a final reply when its deadline passes.
        await handle_in_order(stream, reassembler.handle, stopped=stopped, what="record", window=window)

    failures = RepeatedFailureLog(log, "sending the final replies of operations past their deadline")
    built_at = time.monotonic()

    lease_failures = RepeatedFailureLog(log, "recording the leases that expired without a release")

    @app.timer(SWEEP_INTERVAL_S, name="reassembler.leases")
    async def expire_leases() -> None:
        try:
            await reassembler.lease_expiry.sweep()
        except Exception as exc:  # noqa: BLE001 - the timer must keep running; the next tick retries.
            lease_failures.failed(exc)
        else:
            lease_failures.succeeded()

    @app.timer(0.25, name="reassembler.deadlines")
    async def deadlines() -> None:
        # A reassembler that starts after a crash first works through the
        # fragments that arrived while none ran. Judging deadlines before that
        # would answer fragment_missing for fragments already on the topic.
        # NOTE: a backlog that takes longer than the grace still can.
        if time.monotonic() - built_at < CATCH_UP_GRACE_S:
            return
        try:
            await reassembler.expire()
        except Exception as exc:  # noqa: BLE001 - the timer must keep running; the next tick retries.
            failures.failed(exc)
        else:
            failures.succeeded()


async def serve(
    settings: Settings,
    stopped: asyncio.Event,
    *,
    redis_prefix: str | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run the reassembler until `stopped` is set; `clock` dates its deadlines, leases and expiries."""
    keys = load_reassembler_key(settings.reassembler_key_path)
    topics = Topics(settings.topic_prefix)
    # Without this check the reassembler would start, and every fragment and
    # timer tick would fail on Redis instead.
    await check_redis(settings.redis_url)
    app = make_app(f"{settings.topic_prefix}-reassembler", settings.kafka_bootstrap)
    redis = Redis.from_url(settings.redis_url)
    producer = ReliableProducer(settings.kafka_bootstrap, client_id="reassembler")
    audit = AuditLog.from_settings(settings, "reassembler")

    reassembler = Reassembler(
        keys=keys, redis=redis, redis_prefix=redis_prefix or settings.topic_prefix, topics=topics,
        send=producer.send, send_many=producer.send_many, audit=audit, clock=clock,
    )
    build_app(app, reassembler, stopped)

    async def start() -> None:
        await producer.start()
        await create_topics()
        # The audit log creates its own topic, with unlimited retention.
        await audit.start()

    async def create_topics() -> None:
        bootstrap = settings.kafka_bootstrap
        await ensure_topics(bootstrap, [topics.plans, topics.fragments], partitions=partitions, config=LARGE_RECORD_CONFIG)
        await check_copartitioned(bootstrap, topics.plans, topics.fragments)
        await ensure_topics(bootstrap, [topics.lifecycle, topics.deadletter], partitions=partitions)

    async def close() -> None:
        await producer.stop()
        await audit.close()
        await redis.aclose()

    log.info("reassembler for prefix %s with a %s key", topics.prefix, keys.kem)
    await run_until_stopped(app, stopped, on_start=start, on_stop=close)


def main() -> None:
    settings = Settings.from_env()
    run_main(lambda stopped: serve(settings, stopped), prog='python -m streams.reassembler', description=__doc__)


if __name__ == "__main__":
    main()
