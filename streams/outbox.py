"""Sending from the stream services: messages, audit records and dead letters.

The services send through a plain ``send(topic, key, value)`` coroutine (the
faust-independent ReliableProducer's ``send`` in production), so the logic
here does not depend on faust. One step that sends several records, such as
the plan and the fetches of one operation, hands them to ``send_all``, which
queues them in order and waits for all their acknowledgements together.
Queuing in order keeps the order on each partition: a holder must see a
StoreFragment before the FetchCommand that follows it on the same topic.

Audit records go through a signed chain writer (shardbus.audit.AuditLog).
A step writes its records first and acts only once they are acknowledged,
so the audit trail has a record for every action (see docs/audit.md).

Every LifecycleEvent is signed with the same audit key on its way out
(``AuditWriter.sign_event``), because the provisioner acts only on events
whose signature verifies (see shardbus.audit.events).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from schemas import codec
from schemas.audit import DIGEST_LENGTH, AuditRecord, DeadLetter
from schemas.base import Message
from schemas.holders import LifecycleEvent
from schemas.topics import Topics

SendFn = Callable[[str, bytes, bytes], Awaitable[object]]

#: One record to send: topic, key and encoded value.
Outgoing = tuple[str, bytes, bytes]

#: Sends several records in order and returns once all are acknowledged.
SendManyFn = Callable[[Sequence[Outgoing]], Awaitable[object]]

# FreeText fields hold at most this many characters.
_MAX_DETAIL = 2048


class AuditWriter(Protocol):
    """What the services need of shardbus.audit.AuditLog."""

    async def record_many(self, entries: Iterable[Mapping[str, Any]]) -> list[AuditRecord]: ...

    def sign_event(self, event: LifecycleEvent) -> LifecycleEvent: ...


class Outbox:
    """Encodes and sends the messages of one service, which it names `actor`.

    `audit` writes the service's audit records. It raises
    shardbus.audit.AuditUnavailable when a record was not acknowledged, and
    then the caller must not perform the action the record describes.
    `send_many` sends one step's records together; without it they are
    sent one at a time.

    NOTE: without `audit`, records go to an unsigned chain kept in memory,
    as before the services wrote through AuditLog. That is only for callers
    not yet moved to AuditLog, and it will be removed.
    """

    def __init__(
        self,
        send: SendFn,
        topics: Topics,
        actor: str,
        *,
        audit: AuditWriter | None = None,
        send_many: SendManyFn | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._send = send
        self._send_many = send_many
        self._audit = audit if audit is not None else _UnsignedChain(self)
        self.topics = topics
        self.actor = actor
        self._clock = clock

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def outgoing(self, topic: str, message: Message) -> Outgoing:
        """Encode `message` for ``send_all``, keyed by ``Topics.partition_key``, signing a LifecycleEvent first."""
        message = self._signed(message)
        return topic, Topics.partition_key(message), codec.encode(message)

    async def send(self, topic: str, message: Message) -> bytes:
        """Encode `message`, send it keyed by ``Topics.partition_key``, return the bytes.

        A LifecycleEvent is signed with the audit key first.
        """
        message = self._signed(message)
        encoded = codec.encode(message)
        await self._send(topic, Topics.partition_key(message), encoded)
        return encoded

    def _signed(self, message: Message) -> Message:
        if isinstance(message, LifecycleEvent):
            return self._audit.sign_event(message)
        return message

    async def send_encoded(self, topic: str, key: bytes, encoded: bytes) -> None:
        """Send bytes that were encoded earlier, such as a claimed reply sent again."""
        await self._send(topic, key, encoded)

    async def send_all(self, records: Sequence[Outgoing]) -> None:
        """Send `records` in order and return once every one is acknowledged."""
        if self._send_many is not None:
            await self._send_many(records)
            return
        for topic, key, value in records:
            await self._send(topic, key, value)

    async def audit(self, action: str, **fields: Any) -> None:
        """Append one record to this service's signed audit chain and wait for its acknowledgement.

        `fields` are the keyword arguments of ``AuditLog.record``.
        """
        await self._audit.record_many([{"action": action, **fields}])

    async def audit_many(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append the records of one step as one batch and wait for all their acknowledgements."""
        await self._audit.record_many(entries)

    async def dead_letter(self, source_topic: str, partition: int, offset: int, payload: bytes, reason: str) -> None:
        """Report an undecodable record on ``{p}.deadletter``: its size and hash, never its bytes."""
        letter = DeadLetter(
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            reason=reason[:_MAX_DETAIL],
            payload_size=len(payload),
            payload_sha256=hashlib.sha256(payload).digest(),
            at_ms=self.now_ms(),
        )
        await self.send(self.topics.deadletter, letter)


class _UnsignedChain:
    """The unsigned in-memory chain of callers that pass no AuditWriter; it restarts at 0 with the process."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._sequence = 0
        self._prev_hash = bytes(DIGEST_LENGTH)
        self._lock = asyncio.Lock()

    async def record_many(self, entries: Iterable[Mapping[str, Any]]) -> list[AuditRecord]:
        written = []
        async with self._lock:
            for entry in entries:
                fields = {**_UNSIGNED_DEFAULTS, **entry}
                fields["detail"] = fields["detail"][:_MAX_DETAIL]
                record = AuditRecord(
                    at_ms=self._outbox.now_ms(), actor=self._outbox.actor, sequence=self._sequence,
                    prev_hash=self._prev_hash, signature=b"", **fields,
                )
                encoded = await self._outbox.send(self._outbox.topics.audit, record)
                self._sequence += 1
                self._prev_hash = hashlib.sha256(encoded).digest()
                written.append(record)
        return written

    def sign_event(self, event: LifecycleEvent) -> LifecycleEvent:
        raise ValueError(
            f"cannot sign the {event.event.value} event: an Outbox without an AuditWriter has no audit key; "
            "pass audit=AuditLog.from_settings(...)"
        )


_UNSIGNED_DEFAULTS: Mapping[str, Any] = {
    "operation_id": "", "app_id": "", "secret_name": "", "secret_version": 0,
    "holder_id": "", "outcome": "", "reason": "", "detail": "",
}
