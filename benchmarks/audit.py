"""Measure AuditLog write rates and the speed of verify and replay against a real broker.

Run from the repository root, with the stack up:

    eval "$(scripts/stack env)"
    PYTHONPATH=. python benchmarks/audit.py [--records N]

It writes N records (default 5,000) four ways, then reads them back with
``verify_topic`` and the replay, and prints records per second for each.
Every record is acknowledged by the broker (acks=all) before its call
returns, as in production. The topics use a fresh prefix and are deleted
afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import time
import uuid

from aiokafka.admin import AIOKafkaAdminClient

from schemas.topics import Topics
from shardbus.audit import AuditLog
from shardbus.audit.render import JsonSink
from shardbus.audit.replay import Replayer, replay_topics
from shardbus.audit.verify import verify_topic
from shardbus.crypto.signing import SigningKey


async def timed(label: str, count: int, work) -> None:
    start = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - start
    print(f"{label:<48} {count:>7} records  {elapsed:7.2f} s  {count / elapsed:9.0f} records/s")


async def main(records: int) -> None:
    bootstrap = os.environ.get("SHARDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    topics = Topics(f"bench{uuid.uuid4().hex[:8]}")
    key = SigningKey.generate()
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, broker {bootstrap}")
    try:
        async with AuditLog(bootstrap, topics, key, role="authorizer") as audit:

            async def one_by_one() -> None:
                for n in range(records):
                    await audit.record("fetch.sent", operation_id=f"{n:032x}", holder_id="h1", outcome="sent")

            async def in_steps(size: int) -> None:
                for start in range(0, records, size):
                    await audit.record_many(
                        dict(action="fetch.sent", operation_id=f"{n:032x}", holder_id="h1", outcome="sent")
                        for n in range(start, min(records, start + size))
                    )

            async def concurrent_callers(callers: int) -> None:
                async def caller(first: int) -> None:
                    for n in range(first, records, callers):
                        await audit.record("fetch.sent", operation_id=f"{n:032x}", holder_id="h1")
                await asyncio.gather(*(caller(i) for i in range(callers)))

            await timed("record(), awaited one by one", records, one_by_one)
            await timed("record_many(), steps of 5 (a fetch fan-out)", records, lambda: in_steps(5))
            await timed("record_many(), steps of 100", records, lambda: in_steps(100))
            await timed("record() from 50 concurrent callers", records, lambda: concurrent_callers(50))

        total = 4 * records

        async def verify() -> None:
            report = await verify_topic(bootstrap, topics.audit, key.verify_key)
            assert report.break_count == 0, report.breaks[:3]

        async def replay() -> None:
            replayer = Replayer(JsonSink(io.StringIO()), audit_topic=topics.audit, verify_key=key.verify_key)
            await replay_topics(bootstrap, replayer)

        await timed("verify_topic (decode, signature, chain)", total, verify)
        await timed("replay with signature checks, JSON output", total, replay)
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topics.audit])
        finally:
            await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000, help="records per write method (default: 5000)")
    asyncio.run(main(parser.parse_args().records))
