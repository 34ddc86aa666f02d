"""The agent loop and the producer both stream services use.

Every agent handles up to a window of records at once and acknowledges
each record to faust, in offset order, only once its handler returned and
every record before it was acknowledged. faust commits an offset only
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
import functools
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.base import MAX_MESSAGE_SIZE
from shardbus.errors import ConfigError, ServiceUnavailable
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


#: Environment variable with the number of records an agent handles at once.
WINDOW_ENV = "SHARDBUS_AGENT_WINDOW"
DEFAULT_WINDOW = 16
MAX_WINDOW = 256


def agent_window(environ: Mapping[str, str] | None = None) -> int:
    """Return the agent window from ``SHARDBUS_AGENT_WINDOW`` (default 16)."""
    raw = (os.environ if environ is None else environ).get(WINDOW_ENV, "").strip()
    if not raw:
        return DEFAULT_WINDOW
    try:
        window = int(raw)
    except ValueError:
        window = 0
    if not 1 <= window <= MAX_WINDOW:
        raise ConfigError(f"{WINDOW_ENV} must be a whole number from 1 to {MAX_WINDOW}, got {raw!r}")
    return window


@dataclass
class _InFlight:
    event: faust.EventT
    record: InputRecord
    task: asyncio.Task


async def handle_in_order(
    stream: faust.StreamT, handle: Handler, *, stopped: asyncio.Event, what: str, window: int = 1,
) -> None:
    """Handle the records of `stream` with `handle`, and acknowledge each only after its handler returned.

    Up to `window` records are handled at once, so that one record's broker
    and Redis round trips overlap with the next ones'. They are acknowledged
    in offset order: a record that finished early waits for every record
    before it. Handlers must therefore be safe to run concurrently for
    different records, and idempotent, as for a restart.

    Retriable errors are retried with backoff (see streams.handling.retrying).
    A record whose handler raises another error is logged and acknowledged,
    so that one bad record does not stop the agent. A record that is still
    failing with a retriable error when the service stops is left
    unacknowledged, the records after it are cancelled and left too, and the
    loop ends there. `what` names the records in log lines, such as "request".
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    in_flight: deque[_InFlight] = deque()
    try:
        async for event in stream.noack().events():
            record = input_record(event)
            task = asyncio.ensure_future(retrying(
                f"{what} at {record.topic}[{record.partition}]@{record.offset}",
                functools.partial(handle, record), stop=stopped,
            ))
            in_flight.append(_InFlight(event, record, task))
            while in_flight and (len(in_flight) >= window or in_flight[0].task.done()):
                if not await _finish_oldest(stream, in_flight, stopped, what):
                    return
        while in_flight:
            if not await _finish_oldest(stream, in_flight, stopped, what):
                return
    finally:
        # Cancelled or ended early: whatever is still running is left
        # unacknowledged and handled again after the restart.
        for item in in_flight:
            item.task.cancel()
        await asyncio.gather(*(item.task for item in in_flight), return_exceptions=True)


async def _finish_oldest(stream: faust.StreamT, in_flight: deque[_InFlight], stopped: asyncio.Event, what: str) -> bool:
    """Wait for the oldest record's handler and acknowledge the record; return False to end the loop."""
    item = in_flight[0]
    record = item.record
    try:
        await asyncio.shield(item.task)
    except Exception as exc:  # noqa: BLE001 - one bad record must not stop the agent.
        if stopped.is_set() and is_retriable(exc):
            log.warning("left the %s at %s[%d]@%d unacknowledged while stopping (%s: %s); "
                        "it is handled again after the restart",
                        what, record.topic, record.partition, record.offset, type(exc).__name__, exc)
            return False
        log.error("failed to handle the %s at %s[%d]@%d; skipped it",
                  what, record.topic, record.partition, record.offset, exc_info=exc)
    in_flight.popleft()
    await stream.ack(item.event)
    return True


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
