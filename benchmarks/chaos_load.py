"""Steady load with exact reply accounting, for the fault injection.

`SteadyLoad` sends signed lease requests at a fixed rate, round robin over
several secrets, and reads every record of the app's reply topic. Each
operation ends up as one of:

- a lease: a LeaseReply that opens with the request's reply key and holds
  the secret that was stored (a lease with any other secret counts as
  ``wrong_secret``);
- an error, by reason code;
- lost: no reply within ``wait_s`` of the send (the client's timeout), and
  late when a reply came after that but before the run ended.

Two different replies to one operation id count as a duplicate. The same
bytes delivered twice count as a copy instead, because an application that
keys replies by operation id cannot tell them apart.

Times are measured with the event loop's monotonic clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import codec
from schemas.messages import ErrorReply, LeaseReply, OperationRequest
from schemas.sealed import LeasePayload, lease_info
from schemas.topics import Topics
from shardbus.crypto import envelope, signing
from shardbus.errors import DecodeError, IntegrityError
from shardbus.kafka import RELIABLE_PRODUCER

log = logging.getLogger(__name__)

#: A reply slower than this counts as impaired when the recovery time is measured.
IMPAIRED_LATENCY_S = 2.0


@dataclass
class Operation:
    """One request sent, and every reply that arrived for it."""

    operation_id: str
    secret_name: str
    sent_at: float
    reply_keys: envelope.EnvelopeKeyPair = field(repr=False)
    #: (arrival time, reply bytes) of every reply, in arrival order.
    replies: list[tuple[float, bytes]] = field(default_factory=list, repr=False)
    #: "lease", "wrong_secret" or the error reason of the first reply.
    outcome: str = ""


@dataclass
class Report:
    """The counts and latencies of one run; times in seconds."""

    sent: int = 0
    leases: int = 0
    errors: Counter = field(default_factory=Counter)
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    copies: int = 0
    latencies: list[float] = field(default_factory=list)
    #: From the fault until the last impaired reply; 0 when no reply was impaired.
    recovery_s: float = 0.0
    #: The longest time in which no reply at all arrived, while requests were outstanding.
    longest_silence_s: float = 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def error_text(self) -> str:
        return ", ".join(f"{reason} {count}" for reason, count in sorted(self.errors.items())) or "none"


class SteadyLoad:
    """Sends requests at a fixed rate and accounts for every reply; see the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        app_id: str,
        signing_key: signing.SigningKey,
        secrets: dict[str, bytes],
        *,
        rate: float = 20.0,
        wait_s: float = 30.0,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._bootstrap = bootstrap
        self._topics = topics
        self._app_id = app_id
        self._signing_key = signing_key
        self._secrets = dict(secrets)
        self.rate = rate
        self.wait_s = wait_s
        self.operations: dict[str, Operation] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self.send_failures: Counter = Counter()

    async def start(self) -> None:
        """Connect, and read the reply topic from its end."""
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **RELIABLE_PRODUCER)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False)
        await self._producer.start()
        await self._consumer.start()
        topic = self._topics.replies(self._app_id)
        await self._consumer.topics()
        partitions = [TopicPartition(topic, n) for n in sorted(self._consumer.partitions_for_topic(topic) or {0})]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:
            await self._consumer.position(partition)
        self._reader = asyncio.create_task(self._read(), name="chaos-replies")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._sends):
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def run(self, duration_s: float) -> None:
        """Send requests at the fixed rate for `duration_s`; a slow send never delays the next."""
        loop = asyncio.get_running_loop()
        names = sorted(self._secrets)
        start = loop.time()
        for i in range(int(duration_s * self.rate)):
            delay = start + i / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._send(names[i % len(names)]))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def drain(self) -> None:
        """Wait until every operation has a reply or waited `wait_s`, plus a moment for stray copies."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*self._sends, return_exceptions=True)
        while True:
            now = loop.time()
            waiting = [op for op in self.operations.values() if not op.replies and now - op.sent_at < self.wait_s]
            if not waiting:
                break
            await asyncio.sleep(0.2)
        # Copies of a reply sent again after a crash may trail the first one.
        await asyncio.sleep(2.0)

    def report(self, fault_at: float | None = None) -> Report:
        """Summarise every operation sent; `fault_at` (loop time) is the moment of the fault."""
        report = Report(sent=len(self.operations))
        last_impaired = fault_at
        for op in self.operations.values():
            distinct = {reply for _, reply in op.replies}
            if len(distinct) > 1:
                report.duplicates += 1
            if len(op.replies) > len(distinct):
                report.copies += 1
            if not op.replies:
                report.lost += 1
                impaired_until = op.sent_at + self.wait_s
            else:
                arrived = op.replies[0][0]
                latency = arrived - op.sent_at
                if latency > self.wait_s:
                    report.late += 1
                report.latencies.append(latency)
                if op.outcome == "lease":
                    report.leases += 1
                else:
                    report.errors[op.outcome] += 1
                impaired = op.outcome != "lease" or latency > IMPAIRED_LATENCY_S
                impaired_until = arrived if impaired else None
            if fault_at is not None and impaired_until is not None and op.sent_at >= fault_at - self.wait_s:
                last_impaired = max(last_impaired, impaired_until)
        if fault_at is not None:
            report.recovery_s = max(0.0, last_impaired - fault_at)
        report.longest_silence_s = self._longest_silence()
        return report

    def _longest_silence(self) -> float:
        arrivals = sorted(op.replies[0][0] for op in self.operations.values() if op.replies)
        if not arrivals:
            return 0.0
        start = min(op.sent_at for op in self.operations.values())
        return max(later - earlier for earlier, later in zip([start] + arrivals, arrivals))

    async def _send(self, name: str) -> None:
        assert self._producer is not None
        reply_keys = envelope.EnvelopeKeyPair.generate()
        operation_id = uuid.uuid4().hex
        unsigned = OperationRequest(
            operation_id=operation_id, app_id=self._app_id, secret_name=name, operation="lease",
            reply_public_key=reply_keys.public_bytes(), reply_kem=reply_keys.kem,
            issued_at_ms=int(time.time() * 1000), signature=b"",
        )
        request = replace(unsigned, signature=signing.sign(self._signing_key, unsigned.signing_bytes()))
        self.operations[operation_id] = Operation(operation_id, name, asyncio.get_running_loop().time(), reply_keys)
        try:
            await self._producer.send_and_wait(self._topics.requests, codec.encode(request),
                                               key=operation_id.encode())
        except Exception as exc:  # noqa: BLE001 - counted; the operation then shows up as lost.
            self.send_failures[type(exc).__name__] += 1

    async def _read(self) -> None:
        assert self._consumer is not None
        loop = asyncio.get_running_loop()
        async for record in self._consumer:
            arrived = loop.time()
            try:
                reply = codec.decode(record.value or b"", (LeaseReply, ErrorReply))
            except DecodeError:
                continue
            op = self.operations.get(reply.operation_id)
            if op is None:
                continue
            if not op.replies:
                op.outcome = self._classify(op, reply)
            op.replies.append((arrived, record.value))

    def _classify(self, op: Operation, reply: LeaseReply | ErrorReply) -> str:
        if isinstance(reply, ErrorReply):
            return str(reply.reason)
        try:
            plaintext = envelope.open_(op.reply_keys, reply.sealed_lease, info=lease_info(op.operation_id, self._app_id))
            payload = LeasePayload.from_bytes(plaintext)
        except (IntegrityError, DecodeError):
            return "unopenable_lease"
        if payload.operation_id != op.operation_id or payload.secret != self._secrets[op.secret_name]:
            return "wrong_secret"
        return "lease"
