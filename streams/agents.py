"""The agent loop and the producer both stream services use.

Every agent handles its records one at a time, in order, and acknowledges a
record to faust only once its handler returned. faust commits an offset only
when every record before it is acknowledged. So a record whose handling was
cut short is handled again after the restart instead of being skipped, be it
by a crash, a SIGKILL, a cancelled task or a stop while Kafka or Redis is
unreachable. Handlers are idempotent, which makes that second run safe.

The agents iterate over ``stream.noack()`` rather than the stream itself:
faust 0.15.3 acknowledges an automatically acknowledged event in a
``finally`` block, which also runs when the agent's task is cancelled or the
handler raises, and so would commit the offset of a record that was never
handled to completion.

No record may be acknowledged after one that is left unacknowledged:
faust 0.15.3 commits past a single unacknowledged record once the records
after it are acknowledged, because its check for a gap after the committed
offset is off by one (tests/chaos/test_stream_regressions.py shows it). So
the loop ends at the first record it leaves unacknowledged.

The services send through a producer of their own rather than faust's, so
that it uses acks=all and idempotence (faust turns idempotence on only for
exactly-once processing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.base import MAX_MESSAGE_SIZE
from shardbus.errors import ServiceUnavailable
from shardbus.kafka import RELIABLE_PRODUCER, client_options
from streams.handling import InputRecord, is_retriable, retrying

log = logging.getLogger(__name__)

Handler = Callable[[InputRecord], Awaitable[None]]

#: Largest record the producer sends: the largest message of the wire
#: contract (a sealed 1 MiB fragment) plus room for record headers.
MAX_REQUEST_SIZE = MAX_MESSAGE_SIZE + 64 * 1024


def input_record(event: faust.EventT) -> InputRecord:
    """Return the consumed record of a faust event; a tombstone's missing value becomes empty bytes.

    Any producer allowed on the topic can send a tombstone, and the handlers
    then dead-letter it like any other record that does not decode.
    """
    message = event.message
    value = message.value if message.value is not None else b""
    return InputRecord(message.topic, message.partition, message.offset, message.key, value)


async def handle_in_order(stream: faust.StreamT, handle: Handler, *, stopped: asyncio.Event, what: str) -> None:
    """Handle each record of `stream` with `handle`, and acknowledge it only afterwards.

    Retriable errors are retried with backoff (see streams.handling.retrying).
    A record whose handler raises another error is logged and acknowledged,
    so that one bad record does not stop the agent. A record that is still
    failing with a retriable error when the service stops is left
    unacknowledged, and the loop ends there.
    `what` names the records in log lines, such as "request".
    """
    async for event in stream.noack().events():
        record = input_record(event)
        try:
            await retrying(f"{what} at {record.topic}[{record.partition}]@{record.offset}",
                           lambda: handle(record), stop=stopped)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the agent.
            if stopped.is_set() and is_retriable(exc):
                log.warning("left the %s at %s[%d]@%d unacknowledged while stopping (%s: %s); "
                            "it is handled again after the restart",
                            what, record.topic, record.partition, record.offset, type(exc).__name__, exc)
                return
            log.exception("failed to handle the %s at %s[%d]@%d; skipped it",
                          what, record.topic, record.partition, record.offset)
        await stream.ack(event)


class ReliableProducer:
    """A Kafka producer with acks=all and idempotence, for the records a service sends."""

    def __init__(self, bootstrap: str, *, client_id: str) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, client_id=self._client_id,
            max_request_size=MAX_REQUEST_SIZE, **RELIABLE_PRODUCER, **client_options(),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise ServiceUnavailable(f"cannot reach Kafka at {self._bootstrap}: {exc}") from None
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Send one record and wait until the in-sync replicas have it."""
        if self._producer is None:
            raise RuntimeError(f"the {self._client_id} producer is not running; call start() first")
        await self._producer.send_and_wait(topic, value, key=key)

    async def send_many(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Send (topic, key, value) records in order; return once the in-sync replicas have them all.

        Each record is queued before the next, so records to one partition
        keep their order, and the broker round trips overlap instead of
        following one another.
        """
        if self._producer is None:
            raise RuntimeError(f"the {self._client_id} producer is not running; call start() first")
        deliveries = [await self._producer.send(topic, value, key=key) for topic, key, value in records]
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
