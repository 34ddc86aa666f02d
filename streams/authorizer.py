"""The authorizer: checks each request and starts the fetch of its fragments.

It consumes ``{p}.requests``. A record that does not decode goes to
``{p}.deadletter``. A decoded request passes the checks of
streams.admission, then the holder check: at least k holders of the current
version must have sent a heartbeat within ``holder_max_silence_s``. Each
failed check sends an ErrorReply (see streams.denials) and an audit record
``request.denied``.

An accepted request of a pooled secret gets an OperationPlan on ``{p}.plans``
and one FetchCommand per live holder. An accepted request of a per-operation
secret first gets its holders from the provisioner (streams.provisioning). The audit
records are ``request.accepted`` and one ``fetch.sent`` per holder.

A ReleaseRequest on the same topic ends the app's lease (streams.releases).

Run it with ``python -m streams.authorizer``; it reads shardbus.config.Settings
and these variables:

| Variable | Meaning | Default |
|---|---|---|
| SHARDBUS_FETCH_WINDOW_S | time holders and reassembler have per operation, in seconds | 5 |
| SHARDBUS_HOLDER_MAX_SILENCE_S | a holder whose last heartbeat is older is counted dead, in seconds | 10 |
| SHARDBUS_PROVISION_TIMEOUT_S | time the provisioner has to provide per-operation holders, in seconds | 10 |
| SHARDBUS_HOLDER_REPAIR | "on" or "off": replace failed pooled holders (provisioner.repair) | on |
| SHARDBUS_AGENT_WINDOW | requests handled at once; acknowledged in order (streams.agents) | 16 |

The authorizer also runs the holder repair: an agent on ``{p}.lifecycle``
that restores the fragment of each failed pooled holder onto a new holder
(see provisioner.repair), because only the master key opens the backups.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import faust
from redis.asyncio import Redis

from schemas import codec
from schemas.messages import OperationRequest, ProvisionReply, Reason, ReleaseRequest
from schemas.topics import Topics
from shardbus.audit import AuditLog, AuditUnavailable
from shardbus.config import Settings
from shardbus.crypto import envelope
from shardbus.crypto.keys import MasterKey
from shardbus.errors import ConfigError, DecodeError, Denied
from shardbus.kafka import ensure_topics
from shardbus.policy import Policy, load_policy
from shardbus.redis_health import check_redis
from shardbus.store.mapping import MappingTable, VersionRecord
from provisioner.api import ProvisionerClient
from provisioner.registry import HolderRegistry, HolderState
from provisioner.repair import HolderAcks, HolderRepair, pooled_holder_request
from streams.admission import DEFAULT_MAX_SKEW_S, Admission, RequestChecks
from streams.app import DEFAULT_PARTITIONS, LARGE_RECORD_CONFIG, make_app, raw_topic, run_main, run_until_stopped
from streams.agents import ReliableProducer, agent_window, handle_in_order
from streams.denials import Denials, readable_ids
from streams.handling import InputRecord, RepeatedFailureLog, is_retriable
from shardbus.deployment import load_reassembler_public
from streams.outbox import AuditWriter, Outbox, SendFn, SendManyFn
from streams.leases import LeaseBook
from streams.planning import FetchTarget, Planner
from streams.provisioning import AUDIT_UNAVAILABLE_DETAIL, HoldersUnavailable, Provisioning
from streams.releases import Releases
from streams.replies import ReplyLedger
from streams.topic_check import TopicCheck

log = logging.getLogger(__name__)

_DEAD_STATES = (HolderState.FAILED, HolderState.TORN_DOWN)


@dataclass(frozen=True)
class AuthorizerOptions:
    """Tunable settings of the authorizer; the defaults suit a single host."""

    window_s: float = 5.0
    holder_max_silence_s: float = 10.0
    provision_timeout_s: float = 10.0
    max_skew_s: int = DEFAULT_MAX_SKEW_S
    partitions: int = DEFAULT_PARTITIONS
    repair_holders: bool = True

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AuthorizerOptions:
        env = os.environ if environ is None else environ
        values = {}
        for field_name, variable in (
            ("window_s", "SHARDBUS_FETCH_WINDOW_S"),
            ("holder_max_silence_s", "SHARDBUS_HOLDER_MAX_SILENCE_S"),
            ("provision_timeout_s", "SHARDBUS_PROVISION_TIMEOUT_S"),
        ):
            if variable in env:
                try:
                    values[field_name] = float(env[variable])
                except ValueError:
                    raise ConfigError(f"{variable}={env[variable]!r} is invalid: expected seconds as a number") from None
                if not 0 < values[field_name] <= _MAX_OPTION_S:
                    raise ConfigError(f"{variable}={env[variable]!r} is invalid: expected a positive number of "
                                      f"seconds up to {_MAX_OPTION_S:g}")
        repair = env.get("SHARDBUS_HOLDER_REPAIR", "on")
        if repair not in ("on", "off"):
            raise ConfigError(f"SHARDBUS_HOLDER_REPAIR={repair!r} is invalid: expected on or off")
        return cls(**values, repair_holders=repair == "on")


#: Largest value of the authorizer's time settings: a day. It also turns
#: away nan and inf, which no comparison with a number accepts.
_MAX_OPTION_S = 86400.0


class Authorizer:
    """The request handling of the authorizer, independent of how records arrive."""

    def __init__(
        self,
        *,
        policy: Policy,
        master_key: MasterKey,
        reassembler_key: envelope.PublicKey,
        redis: Redis,
        redis_prefix: str,
        topics: Topics,
        send: SendFn,
        audit: AuditWriter,
        topic_check: TopicCheck,
        send_many: SendManyFn | None = None,
        options: AuthorizerOptions = AuthorizerOptions(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self.options = options
        self._master_key = master_key
        self._clock = clock
        self.outbox = Outbox(send, topics, "authorizer", audit=audit, send_many=send_many, clock=clock)
        mapping = MappingTable(redis, master_key, redis_prefix)
        self._registry = HolderRegistry(redis, redis_prefix, clock_ms=lambda: int(clock() * 1000))
        self.checks = RequestChecks(policy, mapping, redis, redis_prefix, max_skew_s=options.max_skew_s, clock=clock)
        self._ledger = ReplyLedger(redis, redis_prefix)
        self.denials = Denials(
            self.outbox,
            self._ledger,
            topic_check,
            registered_apps=frozenset(policy.apps),
            seen=self.checks.seen,
        )
        self.releases = Releases(policy=policy, leases=LeaseBook(redis, redis_prefix), outbox=self.outbox)
        self._planner = Planner(master_key, reassembler_key)
        self.provisioning = Provisioning(
            redis=redis,
            prefix=redis_prefix,
            outbox=self.outbox,
            planner=self._planner,
            mapping=mapping,
            deny=self.denials.deny,
            window_ms=int(options.window_s * 1000),
            timeout_s=options.provision_timeout_s,
            clock=clock,
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def handle_request(self, record: InputRecord) -> None:
        """Check one record of ``{p}.requests``, then deny it or start its fetches, or handle a release."""
        try:
            request = codec.decode(record.value, (OperationRequest, ReleaseRequest))
        except DecodeError as exc:
            await self._reject_undecodable(record, str(exc))
            return
        if isinstance(request, ReleaseRequest):
            await self.releases.handle(record, request)
            return
        try:
            admission = await self.checks.admit(request, record.partition, record.offset)
            if await self._ledger.stored(request.operation_id) is not None:
                # A request processed again after its operation finished.
                log.info("operation %s already has its final reply; no new fetches sent", request.operation_id)
                return
            await self._accept(admission)
        except AuditUnavailable:
            # Nothing was sent for the operation: its records come first.
            log.error("the audit log is unavailable; denied operation %s without acting", request.operation_id)
            await self._deny(request, Denied(Reason.AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE_DETAIL))
        except HoldersUnavailable as denial:
            await self._deny(request, denial, holders=denial.holders)
        except Denied as denial:
            await self._deny(request, denial)
        except Exception as exc:
            if is_retriable(exc):
                raise
            log.exception(
                "failed to handle operation %s of app %s on secret %r", request.operation_id, request.app_id, request.secret_name
            )
            if await self.checks.seen(request.operation_id):
                await self._deny(request, Denied(Reason.INTERNAL_ERROR, f"the authorizer failed: {type(exc).__name__}"))

    async def _reject_undecodable(self, record: InputRecord, reason: str) -> None:
        log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        await self.outbox.dead_letter(record.topic, record.partition, record.offset, record.value, reason)
        ids = readable_ids(record.value)
        if ids is not None:
            operation_id, app_id = ids
            await self.denials.deny(operation_id, app_id, Reason.INVALID_REQUEST, reason)

    async def _deny(self, request: OperationRequest, denial: Denied, holders: tuple[str, ...] = ()) -> None:
        await self.denials.deny(
            request.operation_id, request.app_id, Reason(denial.reason), denial.detail,
            secret_name=request.secret_name, holders=holders,
        )

    async def _accept(self, admission: Admission) -> None:
        request, version = admission.request, admission.version
        if version.key_version != self._master_key.version:
            raise Denied(
                Reason.INTERNAL_ERROR,
                f"secret {request.secret_name!r} version {version.version} is sealed under master key version "
                f"{version.key_version}, but the authorizer has version {self._master_key.version}",
            )
        lease_ttl_ms = admission.grant.lease_ttl_s * 1000
        if version.lifecycle == "per_operation":
            await self._audit_accepted(admission)
            await self.provisioning.request_holders(admission, lease_ttl_ms)
            return

        targets, dead = await self._live_targets(version)
        if len(targets) < version.threshold:
            raise HoldersUnavailable(
                f"only {len(targets)} of the {version.threshold} holders needed are alive", tuple(dead)
            )
        deadline_ms = self._now_ms() + int(self.options.window_s * 1000)
        plan = self._planner.plan(request, version, targets, deadline_ms=deadline_ms, lease_ttl_ms=lease_ttl_ms)
        outgoing = [self.outbox.outgoing(self.topics.plans, plan)]
        entries = [_accepted_entry(admission)]
        for target in targets:
            fetch = self._planner.fetch(request.operation_id, request.secret_name, version, target, deadline_ms=deadline_ms)
            outgoing.append(self.outbox.outgoing(self.topics.holder(target.holder_id), fetch))
            entries.append(dict(
                action="fetch.sent", operation_id=request.operation_id, app_id=request.app_id,
                secret_name=request.secret_name, secret_version=version.version, holder_id=target.holder_id,
                outcome="sent", detail=f"fragment {target.index}",
            ))
        # One batch of records, acknowledged before the one batch of sends it describes.
        _log_accepted(admission)
        await self.outbox.audit_many(entries)
        await self.outbox.send_all(outgoing)

    async def _audit_accepted(self, admission: Admission) -> None:
        _log_accepted(admission)
        await self.outbox.audit_many([_accepted_entry(admission)])

    async def _live_targets(self, version: VersionRecord) -> tuple[list[FetchTarget], list[str]]:
        """Return the placements whose holders are alive as fetch targets, and the dead holders' ids."""
        max_silence_ms = int(self.options.holder_max_silence_s * 1000)
        now_ms = self._now_ms()
        targets: list[FetchTarget] = []
        dead: list[str] = []
        for placement in version.placements:
            record = await self._registry.get(placement.holder_id)
            alive = (
                record is not None
                and record.state not in _DEAD_STATES
                and record.public_key
                and record.last_heartbeat_ms > 0
                # A heartbeat time slightly ahead of this clock counts as fresh,
                # because the provisioner that records it may run on another host.
                and now_ms - record.last_heartbeat_ms <= max_silence_ms
            )
            if not alive:
                dead.append(placement.holder_id)
                continue
            try:
                public_key = envelope.PublicKey.from_bytes(record.kem, record.public_key)
            except (DecodeError, ValueError) as exc:
                log.warning("holder %s has an unusable public key in the registry: %s", placement.holder_id, exc)
                dead.append(placement.holder_id)
                continue
            targets.append(FetchTarget(placement.holder_id, placement.index, public_key, placement.fragment_key_slot))
        return targets, dead

    async def handle_provisioned(self, record: InputRecord) -> None:
        """Act on one ProvisionReply from ``{p}.authorizer.provisioned``."""
        try:
            reply = codec.decode(record.value, ProvisionReply)
        except DecodeError as exc:
            log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            await self.outbox.dead_letter(record.topic, record.partition, record.offset, record.value, str(exc))
            return
        await self.provisioning.handle_reply(reply)


def _log_accepted(admission: Admission) -> None:
    request, version = admission.request, admission.version
    log.info(
        "accepted operation %s of app %s on secret %r version %d",
        request.operation_id, request.app_id, request.secret_name, version.version,
    )


def _accepted_entry(admission: Admission) -> dict[str, object]:
    request, version = admission.request, admission.version
    return dict(
        action="request.accepted", operation_id=request.operation_id, app_id=request.app_id,
        secret_name=request.secret_name, secret_version=version.version, outcome="accepted",
        detail=f"lifecycle {version.lifecycle}, threshold {version.threshold} of {version.fragments}",
    )


def build_app(
    app: faust.App, authorizer: Authorizer, stopped: asyncio.Event, repair: HolderRepair | None = None
) -> None:
    """Attach the authorizer's agents and timer to a faust app, and the repair agent if `repair` is given."""
    requests = raw_topic(app, authorizer.topics.requests)
    provisioned = raw_topic(app, authorizer.provisioning.reply_topic)
    window = agent_window()

    @app.agent(requests, name="authorizer.requests")
    async def authorize(stream: faust.StreamT) -> None:
        await handle_in_order(stream, authorizer.handle_request, stopped=stopped, what="request", window=window)

    @app.agent(provisioned, name="authorizer.provisioned")
    async def load_holders(stream: faust.StreamT) -> None:
        await handle_in_order(stream, authorizer.handle_provisioned, stopped=stopped, what="provision reply")

    if repair is not None:
        lifecycle = raw_topic(app, authorizer.topics.lifecycle)

        @app.agent(lifecycle, name="authorizer.repair")
        async def repair_holders(stream: faust.StreamT) -> None:
            await handle_in_order(stream, lambda record: repair.handle_encoded(record.value), stopped=stopped,
                                  what="lifecycle event")

    failures = RepeatedFailureLog(log, "expiring pending provision requests")

    @app.timer(0.25, name="authorizer.expire_pending")
    async def expire_pending() -> None:
        try:
            await authorizer.provisioning.expire()
        except Exception as exc:  # noqa: BLE001 - the timer must keep running; the next tick retries.
            failures.failed(exc)
        else:
            failures.succeeded()


async def serve(
    settings: Settings,
    stopped: asyncio.Event,
    *,
    options: AuthorizerOptions | None = None,
    redis_prefix: str | None = None,
) -> None:
    """Run the authorizer until `stopped` is set."""
    options = options or AuthorizerOptions.from_env()
    policy = load_policy(settings.policy_path)
    master_key = MasterKey.load(settings.master_key_path)
    reassembler_key = load_reassembler_public(settings.reassembler_public_path)
    topics = Topics(settings.topic_prefix)
    # Without this check the authorizer would start, and every request and
    # timer tick would fail on Redis instead.
    await check_redis(settings.redis_url)

    app = make_app(f"{settings.topic_prefix}-authorizer", settings.kafka_bootstrap)
    redis = Redis.from_url(settings.redis_url)
    topic_check = TopicCheck(settings.kafka_bootstrap)
    producer = ReliableProducer(settings.kafka_bootstrap, client_id="authorizer")
    audit = AuditLog.from_settings(settings, "authorizer")
    prefix = redis_prefix or settings.topic_prefix

    authorizer = Authorizer(
        policy=policy, master_key=master_key, reassembler_key=reassembler_key, redis=redis,
        redis_prefix=prefix, topics=topics, send=producer.send, send_many=producer.send_many, audit=audit,
        topic_check=topic_check, options=options,
    )
    provisioner_client = ProvisionerClient(settings.kafka_bootstrap, topics)
    acks = HolderAcks(settings.kafka_bootstrap, topics, producer.send)
    repair = None
    if options.repair_holders:
        repair = HolderRepair(
            mapping=MappingTable(redis, master_key, prefix),
            registry=HolderRegistry(redis, prefix),
            request_holder=pooled_holder_request(provisioner_client),
            store_fragment=acks.store,
            announce=lambda event: authorizer.outbox.send(topics.lifecycle, event),
            audit=authorizer.outbox.audit,
            clock_ms=authorizer.outbox.now_ms,
            verify_key=audit.verify_key,
        )
    build_app(app, authorizer, stopped, repair)

    async def start() -> None:
        await producer.start()
        await create_topics()
        # The audit log creates its own topic, with unlimited retention.
        await audit.start()
        if repair is not None:
            await provisioner_client.start()
            await acks.start()

    async def create_topics() -> None:
        bootstrap = settings.kafka_bootstrap
        await ensure_topics(bootstrap, [topics.requests, topics.provisioner, topics.lifecycle,
                                        topics.deadletter, topics.provisioned],
                            partitions=options.partitions)
        # The holder repair waits for acknowledgements there (HolderAcks).
        await ensure_topics(bootstrap, [topics.acks])
        await ensure_topics(bootstrap, [topics.plans, topics.fragments], partitions=options.partitions,
                            config=LARGE_RECORD_CONFIG)
        await ensure_topics(bootstrap, [topics.replies(app_id) for app_id in policy.apps], config=LARGE_RECORD_CONFIG)

    async def close() -> None:
        await acks.close()
        await provisioner_client.close()
        await producer.stop()
        await audit.close()
        await topic_check.close()
        await redis.aclose()

    log.info(
        "authorizer for prefix %s: %d registered apps, master key version %d, holder repair %s",
        topics.prefix, len(policy.apps), master_key.version, "on" if repair is not None else "off",
    )
    await run_until_stopped(app, stopped, on_start=start, on_stop=close)


def main() -> None:
    settings = Settings.from_env()
    run_main(lambda stopped: serve(settings, stopped), prog='python -m streams.authorizer', description=__doc__)


if __name__ == "__main__":
    main()
