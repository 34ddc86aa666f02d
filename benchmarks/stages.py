"""Where a lease's latency goes: the time between the steps of each operation.

It runs the load generator at one rate, then reads back what the run left
on the topics: the request's Kafka timestamp, the authorizer's audit records
(``request.accepted``, ``fetch.sent``), the fragments' Kafka timestamps and
the reply's. Every timestamp comes from this host's clock, so the stages
can be subtracted. Run from the repository root:

    PYTHONPATH=. python benchmarks/stages.py --rate 20 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.deployment import APP_ID, BenchDeployment  # noqa: E402
from benchmarks.load import LoadRun  # noqa: E402
from schemas import codec  # noqa: E402
from schemas.audit import AuditRecord  # noqa: E402
from shardbus.sharing.fragmentation import Policy  # noqa: E402

STAGES = (
    ("request sent -> accepted", "authorizer: queue, checks, Redis"),
    ("accepted -> last fetch sent", "authorizer: plan, fetches, audit records"),
    ("last fetch -> k-th fragment", "holders (negative: fragments before the last fetch)"),
    ("k-th fragment -> reply sent", "reassembler: queue, Redis, combine, audit records"),
    ("request sent -> reply sent", "whole operation, without the client's own work"),
)


async def _read_topics(bootstrap: str, topics: list[str]) -> list:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records = []
    try:
        while batch := await consumer.getmany(timeout_ms=3000):
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


def stage_times(records: list, topics, threshold: int) -> dict[str, list[int]]:
    """Return the milliseconds each stage took, per operation that got its reply."""
    operations: dict[str, dict] = {}
    for record in records:
        steps = operations.setdefault(record.key.decode() if record.key else "", {})
        if record.topic == topics.requests:
            steps["request"] = record.timestamp
        elif record.topic == topics.fragments:
            steps.setdefault("fragments", []).append(record.timestamp)
        elif record.topic == topics.replies(APP_ID):
            steps["reply"] = record.timestamp
        else:
            audit = codec.decode(record.value, AuditRecord)
            steps.setdefault(audit.action, []).append(audit.at_ms)
    times: dict[str, list[int]] = {name: [] for name, _ in STAGES}
    for steps in operations.values():
        if not {"request", "reply", "request.accepted", "fetch.sent"} <= steps.keys():
            continue
        if len(steps.get("fragments", [])) < threshold:
            continue
        accepted, last_fetch = steps["request.accepted"][0], max(steps["fetch.sent"])
        kth_fragment = sorted(steps["fragments"])[threshold - 1]
        for (name, _), value in zip(STAGES, (
            accepted - steps["request"], last_fetch - accepted, kth_fragment - last_fetch,
            steps["reply"] - kth_fragment, steps["reply"] - steps["request"],
        )):
            times[name].append(value)
    return times


async def main(arguments: argparse.Namespace) -> None:
    bench = BenchDeployment(arguments.bootstrap, arguments.redis_url)
    await bench.start()
    try:
        policy = Policy(fragments=5, threshold=3)
        await bench.put_secret(f"{APP_ID}/stages", policy)
        client = bench.client(10.0)
        await client.start()
        try:
            run = LoadRun(bench, [client], timeout_s=10.0, release=True)
            await run.measure("3-of-5", [f"{APP_ID}/stages"], arguments.rate, arguments.duration)
        finally:
            await client.stop()
        topics = bench.topics
        records = await _read_topics(bench.bootstrap, [topics.requests, topics.fragments, topics.replies(APP_ID),
                                                       topics.audit])
        for (name, meaning), values in zip(STAGES, stage_times(records, topics, policy.threshold).values()):
            if values:
                print(f"{name:<30} p50 {statistics.median(values):6.0f} ms, max {max(values):6.0f} ms "
                      f"(n={len(values)})  {meaning}")
    finally:
        await bench.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("SHARDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--redis-url", default=os.environ.get("SHARDBUS_REDIS_URL", "redis://127.0.0.1:16379/0"))
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    asyncio.run(main(parser.parse_args()))
