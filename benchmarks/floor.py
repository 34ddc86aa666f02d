"""The floor: four plain aiokafka produce-to-consume hops, with no work in between.

A lease crosses four Kafka hops: app -> authorizer (``requests``), authorizer
-> holder (``holder.<id>``), holder -> reassembler (``fragments``),
reassembler -> app (``replies.<app>``). The floor sends records of a similar
size over four topics with the same partition counts, through three relay
processes that forward each record unchanged, and measures the time from a
record's due time to its arrival back at the sender. Producers use
``acks="all"`` as the services do. No service can beat this figure on the
same broker.

Run on its own (the load generator also runs it in the same session):

    PYTHONPATH=. python benchmarks/floor.py --rates 100,500 --duration 20

A relay is this file run as ``floor.py relay SOURCE TARGET``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.openloop import Results, run_open_loop  # noqa: E402
from shardbus.kafka import delete_topics, ensure_topics  # noqa: E402

#: Partition counts of the four hops, as in a deployment: requests 4,
#: a holder topic 1, fragments 4, a reply topic 1.
HOP_PARTITIONS = (4, 1, 4, 1)

#: About the size of an encoded OperationRequest with an X25519 reply key.
RECORD_BYTES = 300

_READY = "ready"


async def _assigned_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """Return a consumer that reads every partition of `topic` from its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="latest")
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not partitions:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - a topic created a moment ago
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for partition in partitions:
        await consumer.position(partition)
    return consumer


async def relay(bootstrap: str, source: str, target: str) -> None:
    """Forward every record of `source` to `target` with the same key, until killed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    consumer = await _assigned_consumer(bootstrap, source)
    print(_READY, flush=True)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            sends = [
                await producer.send(target, record.value, key=record.key)
                for records in batches.values()
                for record in records
            ]
            if sends:
                await asyncio.gather(*sends)
    finally:
        await consumer.stop()
        await producer.stop()


class Floor:
    """Four hop topics and three relay processes; use it as an async context manager."""

    def __init__(self, bootstrap: str, prefix: str | None = None) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix or f"floor{uuid.uuid4().hex[:8]}"
        self.topics = [f"{self.prefix}.hop{i}" for i in range(1, 5)]
        self.relays: list[subprocess.Popen] = []

    async def __aenter__(self) -> Floor:
        for topic, partitions in zip(self.topics, HOP_PARTITIONS):
            await ensure_topics(self.bootstrap, [topic], partitions=partitions)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        for source, target in zip(self.topics, self.topics[1:]):
            process = subprocess.Popen(
                [sys.executable, __file__, "relay", source, target, "--bootstrap", self.bootstrap],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True,
            )
            self.relays.append(process)
        for process in self.relays:
            line = await asyncio.to_thread(process.stdout.readline)
            if line.strip() != _READY:
                await self.__aexit__()
                raise RuntimeError(f"a floor relay exited before it was ready (status {process.poll()})")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for process in self.relays:
            process.terminate()
        for process in self.relays:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.relays.clear()
        await delete_topics(self.bootstrap, self.topics)

    async def measure(self, rate: float, duration_s: float, *, drain_s: float = 10.0) -> Results:
        """Send records over the four hops at `rate` per second for `duration_s` and time each."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        consumer = await _assigned_consumer(self.bootstrap, self.topics[-1])
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[float]] = {}

        async def read() -> None:
            async for record in consumer:
                (number,) = struct.unpack_from(">Q", record.value)
                future = waiting.pop(number, None)
                if future is not None and not future.done():
                    future.set_result(loop.time())

        async def fire(number: int, due: float, results: Results) -> None:
            future = loop.create_future()
            waiting[number] = future
            padding = bytes(RECORD_BYTES - 8)
            try:
                await producer.send_and_wait(
                    self.topics[0], struct.pack(">Q", number) + padding, key=uuid.uuid4().hex.encode()
                )
                arrived = await asyncio.wait_for(future, drain_s)
            except asyncio.TimeoutError:
                results.errors["timeout"] += 1
                return
            except Exception as exc:  # noqa: BLE001 - counted by kind, the run goes on
                results.errors[type(exc).__name__] += 1
                return
            finally:
                waiting.pop(number, None)
            results.latencies_s.append(arrived - due)

        reader = asyncio.create_task(read())
        try:
            return await run_open_loop(rate, duration_s, fire, drain_s=drain_s)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await consumer.stop()
            await producer.stop()


def print_results(label: str, results: Results) -> None:
    print(
        f"{label:>10} {results.rate:8g} {results.sent:7d} {results.received:7d} "
        f"{results.percentile_ms(0.50):8.1f} {results.percentile_ms(0.95):8.1f} "
        f"{results.percentile_ms(0.99):8.1f} {results.max_ms:8.1f}  errors: {results.error_text()}",
        flush=True,
    )


async def _main(arguments: argparse.Namespace) -> None:
    async with Floor(arguments.bootstrap) as floor:
        print(f"{'':>10} {'rate/s':>8} {'sent':>7} {'recv':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for rate in arguments.rates:
            print_results("floor", await floor.measure(rate, arguments.duration))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("SHARDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
                        help="Kafka bootstrap servers (default $SHARDBUS_KAFKA_BOOTSTRAP)")
    sub = parser.add_subparsers(dest="command")
    relay_parser = sub.add_parser("relay", help="forward SOURCE to TARGET (used by the floor itself)")
    relay_parser.add_argument("source")
    relay_parser.add_argument("target")
    relay_parser.add_argument("--bootstrap", dest="relay_bootstrap", default=None)
    parser.add_argument("--rates", type=lambda text: [float(r) for r in text.split(",")], default=[100.0],
                        help="comma-separated request rates per second (default 100)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate (default 20)")
    arguments = parser.parse_args()
    if arguments.command == "relay":
        asyncio.run(relay(arguments.relay_bootstrap or arguments.bootstrap, arguments.source, arguments.target))
    else:
        asyncio.run(_main(arguments))


if __name__ == "__main__":
    main()
