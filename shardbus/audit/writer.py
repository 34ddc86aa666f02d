"""AuditLog: append signed, hash-chained records to the audit topic, failing closed.

Every service that acts on a secret writes through one AuditLog::

    audit = AuditLog.from_settings(settings, role="authorizer")
    await audit.start()
    try:
        await audit.record("request.accepted", operation_id=..., app_id=..., outcome="accepted")
    except AuditUnavailable:
        ...  # do not perform the action; reply audit_unavailable
    # perform the action

Each AuditLog owns one partition of ``{p}.audit`` and keeps the hash chain
described in ``shardbus.audit.chain`` on it. The partition follows from the
role (:data:`ROLE_PARTITIONS`). A second instance of a role needs its own
partition, given as ``partition=`` or in ``SHARDBUS_AUDIT_PARTITION``.

One partition must have one writer at a time. Two writers on the same
partition each extend the chain from the head they read, so the chain forks
and ``shardbus audit verify`` reports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas import codec
from schemas.audit import AuditRecord
from schemas.holders import LifecycleEvent
from schemas.fields import MAX_TEXT_LENGTH
from schemas.topics import Topics
from shardbus.audit import chain, events
from shardbus.audit.topic import ChainHead, ensure_audit_topic, read_chain_head
from shardbus.config import Settings
from shardbus.crypto.signing import SigningKey, VerifyKey
from shardbus.errors import ConfigError, ServiceUnavailable
from shardbus.kafka import client_options

log = logging.getLogger(__name__)

#: The partition of each role's chain on ``{p}.audit``.
ROLE_PARTITIONS: Mapping[str, int] = {"controller": 0, "authorizer": 1, "reassembler": 2, "provisioner": 3}

#: Environment variable that moves a writer to another partition, for a
#: second instance of a role.
PARTITION_ENV = "SHARDBUS_AUDIT_PARTITION"

#: Default bound on start-up and on each record's acknowledgement, in seconds.
DEFAULT_TIMEOUT_S = 10.0

_TRUNCATED = " [truncated]"

_ENTRY_DEFAULTS: Mapping[str, Any] = {
    "operation_id": "", "app_id": "", "secret_name": "", "secret_version": 0,
    "holder_id": "", "outcome": "", "reason": "", "detail": "",
}
_ENTRY_NAMES = frozenset({"action", *_ENTRY_DEFAULTS})


class AuditUnavailable(ServiceUnavailable):
    """The audit record could not be written, so the action it describes must not happen.

    Retriable: the next ``record()`` call reconnects and reads the chain head
    again.
    """

    retriable = True


class AuditLog:
    """Writes one role's signed audit chain to one partition of ``{p}.audit``.

    ``record()`` returns only after every in-sync replica has the record
    (acks=all), so a caller that performs its action after ``record()``
    returned leaves an audit trail for every action it performed. Concurrent
    ``record()`` calls are pipelined: each takes the next sequence number in
    call order and waits only for its own acknowledgement.

    NOTE: a record whose acknowledgement timed out may still reach the topic
    later. Its action was not performed, so the trail can show an action that
    did not happen, but never the reverse.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        signing_key: SigningKey,
        *,
        role: str,
        actor: str | None = None,
        partition: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        """Describe the writer; nothing connects before ``start()`` or the first ``record()``.

        `kafka_options` are the security settings of every Kafka client,
        from ``shardbus.kafka.client_options``; None reads them from the
        environment.
        """
        if not isinstance(signing_key, SigningKey):
            raise TypeError(f"signing_key must be a SigningKey, got {type(signing_key).__name__}")
        if partition is None:
            if role not in ROLE_PARTITIONS:
                raise ValueError(
                    f"role must be one of {sorted(ROLE_PARTITIONS)} or come with a partition, got {role!r}"
                )
            partition = ROLE_PARTITIONS[role]
        if type(partition) is not int or not 0 <= partition <= chain.MAX_PARTITION:
            raise ValueError(f"partition must be an int from 0 to {chain.MAX_PARTITION}, got {partition!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.bootstrap = bootstrap
        self.topic = topics.audit
        self.role = role
        self.actor = actor or role
        self.partition = partition
        self.timeout_s = timeout_s
        self._key = signing_key
        self._clock = clock
        self._kafka_options = dict(client_options() if kafka_options is None else kafka_options)
        self._lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._head: ChainHead | None = None
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        role: str,
        *,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> AuditLog:
        """Build the AuditLog of `role` from the settings and ``audit.key`` in the deployment folder.

        ``SHARDBUS_AUDIT_PARTITION`` in `environ` (default: the process
        environment) overrides the role's partition.
        """
        env = os.environ if environ is None else environ
        if "partition" not in options and env.get(PARTITION_ENV):
            text = env[PARTITION_ENV]
            if not text.isdigit() or int(text) > chain.MAX_PARTITION:
                raise ConfigError(f"{PARTITION_ENV}={text!r} is invalid: use a partition number from 0")
            options["partition"] = int(text)
        options.setdefault("kafka_options", client_options(settings))
        key = chain.load_signing_key(settings.home / "audit.key")
        return cls(settings.kafka_bootstrap, Topics(settings.topic_prefix), key, role=role, **options)

    @property
    def verify_key(self) -> VerifyKey:
        """The public half of the audit key, which checks records and lifecycle events."""
        return self._key.verify_key

    def sign_event(self, event: LifecycleEvent) -> LifecycleEvent:
        """Return `event` signed with the audit key, ready to send to ``{p}.lifecycle``."""
        return events.sign_event(event, self._key)

    @property
    def next_sequence(self) -> int | None:
        """The sequence number of the next record, or None before the chain head is known."""
        return None if self._head is None else self._head.next_sequence

    async def start(self) -> None:
        """Create the audit topic if needed, connect, and read this partition's chain head.

        Does nothing when already connected. Raises AuditUnavailable when Kafka does not respond within ``timeout_s``.
        """
        async with self._lock:
            if self._producer is None:
                await self._connect()

    async def close(self) -> None:
        """Wait for the records in flight and disconnect; ``record()`` raises afterwards."""
        async with self._lock:
            self._closed = True
            await self._disconnect()

    async def __aenter__(self) -> AuditLog:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def record(
        self,
        action: str,
        *,
        operation_id: str = "",
        app_id: str = "",
        secret_name: str = "",
        secret_version: int = 0,
        holder_id: str = "",
        outcome: str = "",
        reason: str = "",
        detail: str = "",
    ) -> AuditRecord:
        """Append one signed record and wait until Kafka acknowledged it; return the record.

        Call it before the action it describes, and perform the action only
        if it returns. It raises AuditUnavailable when the record was not
        acknowledged within ``timeout_s``: the caller must then not perform
        the action (the authorizer replies ``audit_unavailable``). Invalid
        fields raise ValueError or TypeError before anything is sent.
        ``detail`` is free text cut to 2048 characters. It must never
        contain secret material.
        """
        entry = dict(
            action=action, operation_id=operation_id, app_id=app_id, secret_name=secret_name,
            secret_version=secret_version, holder_id=holder_id, outcome=outcome, reason=reason, detail=detail,
        )
        [signed] = await self.record_many([entry])
        return signed

    async def record_many(self, entries: Iterable[Mapping[str, Any]]) -> list[AuditRecord]:
        """Append several records in order and wait for all their acknowledgements together.

        Each entry contains keyword arguments of ``record()``, including
        ``action``. The rules of ``record()`` apply to the whole batch: every
        record is checked before any is sent, and AuditUnavailable means that
        none of the actions may be performed.
        """
        batch = [_entry_fields(dict(entry)) for entry in entries]
        if not batch:
            return []
        async with self._lock:
            if self._closed:
                raise RuntimeError("AuditLog.record() called after close()")
            if self._producer is None:
                await self._connect()
            producer = self._producer
            head = self._head
            signed, values = [], []
            for fields in batch:
                record = self._next_record(fields, head)
                value = codec.encode(record)
                signed.append(record)
                values.append(value)
                head = ChainHead(record.sequence + 1, chain.record_hash(value), -1)
            futures = []
            try:
                async with asyncio.timeout(self.timeout_s):
                    for record, value in zip(signed, values):
                        futures.append(await producer.send(
                            self.topic, value, key=Topics.partition_key(record),
                            partition=self.partition, timestamp_ms=record.at_ms,
                        ))
            except (KafkaError, TimeoutError) as exc:
                await self._discard(producer)
                raise self._unavailable(f"{_describe_batch(signed)} could not be queued", exc) from None
            # The head moves before the acknowledgements so that concurrent
            # calls pipeline. If a send fails, _discard() drops the head and
            # the next call reads it again from Kafka.
            self._head = head
        try:
            async with asyncio.timeout(self.timeout_s):
                await asyncio.shield(asyncio.gather(*futures))
        except (KafkaError, TimeoutError) as exc:
            async with self._lock:
                await self._discard(producer)
            raise self._unavailable(f"{_describe_batch(signed)}: no acknowledgement", exc) from None
        return signed

    def _next_record(self, fields: dict[str, Any], head: ChainHead) -> AuditRecord:
        record = AuditRecord(
            at_ms=int(self._clock() * 1000),
            actor=self.actor,
            sequence=head.next_sequence,
            prev_hash=head.prev_hash,
            signature=b"",
            **fields,
        )
        return chain.sign_record(record, self.partition, self._key)

    async def _connect(self) -> None:
        if self._closed:
            raise RuntimeError("AuditLog used after close()")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self.actor}-audit",
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self.timeout_s * 1000),
            **self._kafka_options,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._ensure_topic()
                await producer.start()
                self._head = await self._read_head()
        except (KafkaError, OSError, TimeoutError) as exc:
            await _stop_quietly(producer, self.timeout_s)
            raise AuditUnavailable(
                f"audit log {self.topic}:{self.partition} unavailable: cannot reach Kafka at {self.bootstrap} "
                f"within {self.timeout_s:g} s ({_describe(exc)}); check that the broker runs"
            ) from None
        self._producer = producer
        log.info(
            "audit log %s:%d for %s continues its chain at sequence %d",
            self.topic, self.partition, self.actor, self._head.next_sequence,
        )

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id=f"{self.actor}-audit-admin", **self._kafka_options,
        )
        await admin.start()
        try:
            await ensure_audit_topic(admin, self.topic, self.partition + 1)
        finally:
            await admin.close()

    async def _read_head(self) -> ChainHead:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self.actor}-audit-head",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._kafka_options,
        )
        await consumer.start()
        try:
            return await read_chain_head(consumer, self.topic, self.partition, self._key.verify_key)
        finally:
            await consumer.stop()

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        """Drop `producer` and the chain head, unless an earlier failure replaced them already."""
        if self._producer is not producer:
            return
        self._producer = None
        self._head = None
        # Stopping waits for the records still queued, so that the head read
        # on reconnect comes after them.
        await _stop_quietly(producer, self.timeout_s)

    def _unavailable(self, failure: str, exc: BaseException) -> AuditUnavailable:
        log.error("audit log %s:%d: %s: %s", self.topic, self.partition, failure, _describe(exc))
        return AuditUnavailable(
            f"audit log {self.topic}:{self.partition}: {failure} within {self.timeout_s:g} s "
            f"({_describe(exc)}); do not perform the action, and retry once Kafka at {self.bootstrap} responds"
        )

    async def _disconnect(self) -> None:
        producer, self._producer = self._producer, None
        self._head = None
        if producer is not None:
            await _stop_quietly(producer, self.timeout_s)


async def _stop_quietly(producer: AIOKafkaProducer, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await producer.stop()
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("stopping the audit producer failed: %s", _describe(exc))


def _entry_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """Check one entry's names and its detail, cutting a long detail; the record checks the rest."""
    unknown = set(entry) - _ENTRY_NAMES
    if unknown or "action" not in entry:
        raise TypeError(f"an audit entry needs 'action' and only the names {sorted(_ENTRY_NAMES)}, got {sorted(entry)}")
    detail = entry.get("detail", "")
    if not isinstance(detail, str):
        raise TypeError(f"detail must be a str, got {type(detail).__name__}; never pass secret bytes")
    if len(detail) > MAX_TEXT_LENGTH:
        entry["detail"] = detail[: MAX_TEXT_LENGTH - len(_TRUNCATED)] + _TRUNCATED
    return {**_ENTRY_DEFAULTS, **entry}


def _describe_batch(records: list[AuditRecord]) -> str:
    first = records[0]
    if len(records) == 1:
        return f"record {first.sequence} ({first.action})"
    return f"records {first.sequence}..{records[-1].sequence}"


def _describe(exc: BaseException) -> str:
    # aiokafka's messages start with the class name already; TimeoutError has no message.
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"
