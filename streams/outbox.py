"""Sending from the stream services: messages, audit records and dead letters.

The services send through a plain ``send(topic, key, value)`` coroutine (the
faust producer's ``send_and_wait`` in production), so the logic here does not
depend on faust and each send is acknowledged before the next one starts.
That order matters: a holder must see a StoreFragment before the FetchCommand
that follows it on the same topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

from schemas import codec
from schemas.audit import DIGEST_LENGTH, AuditRecord, DeadLetter
from schemas.base import Message
from schemas.topics import Topics

SendFn = Callable[[str, bytes, bytes], Awaitable[object]]

# FreeText fields hold at most this many characters.
_MAX_DETAIL = 2048


class Outbox:
    """Encodes and sends the messages of one service, which it names `actor`.

    Audit records form one hash chain per Outbox: each record carries a
    sequence number and the SHA-256 of the previous encoded record.

    NOTE: the chain lives in memory, so a restarted service starts a new chain
    at sequence 0, and several instances of one service each keep their own.
    """

    def __init__(
        self,
        send: SendFn,
        topics: Topics,
        actor: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._send = send
        self.topics = topics
        self.actor = actor
        self._clock = clock
        self._sequence = 0
        self._prev_hash = bytes(DIGEST_LENGTH)
        self._audit_lock = asyncio.Lock()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def send(self, topic: str, message: Message) -> bytes:
        """Encode `message`, send it keyed as ``Topics.partition_key`` says, return the bytes."""
        encoded = codec.encode(message)
        await self._send(topic, Topics.partition_key(message), encoded)
        return encoded

    async def send_encoded(self, topic: str, key: bytes, encoded: bytes) -> None:
        """Send bytes that were encoded earlier, such as a claimed reply sent again."""
        await self._send(topic, key, encoded)

    async def audit(
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
    ) -> None:
        """Append one record to this service's audit chain on ``{p}.audit``."""
        async with self._audit_lock:
            record = AuditRecord(
                at_ms=self.now_ms(),
                actor=self.actor,
                action=action,
                operation_id=operation_id,
                app_id=app_id,
                secret_name=secret_name,
                secret_version=secret_version,
                holder_id=holder_id,
                outcome=outcome,
                reason=reason,
                detail=detail[:_MAX_DETAIL],
                sequence=self._sequence,
                prev_hash=self._prev_hash,
                signature=b"",
            )
            encoded = await self.send(self.topics.audit, record)
            self._sequence += 1
            self._prev_hash = hashlib.sha256(encoded).digest()

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
