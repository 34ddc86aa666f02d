"""Holder start-up and memory: cold start, warm-pool hand-out, RSS and PSS of an idle holder.

Run through the load generator, which starts the deployment:

    PYTHONPATH=. python benchmarks/load.py holders --repeat 5

- Warm hand-out: with the pool full (the provisioner keeps 2 ready holders
  by default), the time from sending a ProvisionRequest for 1 pooled holder
  to its ProvisionReply.
- Cold start: with the pool full, a request for 3 holders takes the 2 ready
  ones and starts 1 (topic creation, process start, Kafka connection, first
  heartbeat); a request for 5 starts 3 at once, as storing a 3-of-5 secret
  does.
- Memory of each idle holder: VmRSS, and Pss and Locked from
  /proc/PID/smaps_rollup. For comparison, one holder is started by hand
  without CAP_IPC_LOCK, so that its mlockall is skipped.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

from redis.asyncio import Redis

from benchmarks import procstats
from benchmarks.deployment import BenchDeployment
from provisioner.api import ProvisionerClient
from provisioner.config import HOLDER_TOPIC_CONFIG, ProvisionerConfig
from provisioner.registry import HolderRegistry, HolderState
from shardbus.kafka import ensure_topics

_POOL_SIZE = ProvisionerConfig().pool_size


async def _wait_pool_full(registry: HolderRegistry, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(await registry.ids_in_state(HolderState.POOL)) < _POOL_SIZE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm pool did not refill to {_POOL_SIZE} within {timeout_s:g} s")
        await asyncio.sleep(0.1)
    # Let the refill's own holder starts finish so they do not compete.
    await asyncio.sleep(1.0)


async def _time_requests(client: ProvisionerClient, registry: HolderRegistry, count: int, repeat: int) -> list[float]:
    times = []
    for attempt in range(repeat):
        await _wait_pool_full(registry)
        started = time.monotonic()
        await client.request(count, "pooled", secret_name=f"bench/startup-{count}-{attempt}", secret_version=1)
        times.append((time.monotonic() - started) * 1000)
    return times


def _summary(times: list[float]) -> str:
    return (f"median {statistics.median(times):.0f} ms, min {min(times):.0f}, max {max(times):.0f} "
            f"(n={len(times)}: {', '.join(f'{t:.0f}' for t in times)})")


def _memory_row(label: str, pid: int) -> tuple[int, int, int]:
    rss = procstats.status_bytes(pid, "VmRSS")
    pss = procstats.rollup_bytes(pid, "Pss")
    locked = procstats.rollup_bytes(pid, "Locked")
    print(f"  {label:<28} pid {pid:>7}: RSS {rss / 2**20:5.1f} MB, PSS {pss / 2**20:5.1f} MB, "
          f"locked {locked / 2**20:5.1f} MB")
    return rss, pss, locked


async def _unlocked_holder(bench: BenchDeployment) -> None:
    """Start one holder without CAP_IPC_LOCK, so hardening skips mlockall, and print its memory."""
    holder_id = "bench-nolock"
    await ensure_topics(bench.bootstrap, [bench.topics.holder(holder_id)], config=HOLDER_TOPIC_CONFIG)
    env = bench.service_env()
    command = [sys.executable, "-m", "holders", "--holder-id", holder_id, "--parent-pid", str(os.getpid())]
    if os.geteuid() == 0:
        # Root gets every capability in its bounding set on exec, so the
        # bounding set is where CAP_IPC_LOCK has to go.
        command = ["setpriv", "--bounding-set", "-ipc_lock", "--inh-caps", "-ipc_lock", *command]
    log_path = bench.home / "logs" / f"{holder_id}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        # The holder is idle once it has connected and sent a few heartbeats.
        await asyncio.sleep(8)
        if process.poll() is not None:
            print(f"  the holder without mlockall exited with status {process.returncode}; see {log_path}")
            return
        applied = [line for line in log_path.read_text().splitlines() if "hardening applied" in line]
        _memory_row("without mlockall", process.pid)
        print(f"    its log: {applied[-1].split(': ', 1)[-1] if applied else '(no hardening line)'}")
    finally:
        process.terminate()
        process.wait(timeout=20)


async def measure_holders(bench: BenchDeployment, *, repeat: int) -> None:
    """Print hand-out and cold-start times, then the memory of every idle holder."""
    redis = Redis.from_url(bench.redis_url)
    registry = HolderRegistry(redis, bench.prefix)
    try:
        async with ProvisionerClient(bench.bootstrap, bench.topics) as client:
            print(f"load average {procstats.loadavg()}")
            warm = await _time_requests(client, registry, 1, repeat)
            print(f"warm hand-out, 1 holder from a full pool: {_summary(warm)}")
            cold = await _time_requests(client, registry, _POOL_SIZE + 1, repeat)
            print(f"cold start, {_POOL_SIZE + 1} holders requested ({_POOL_SIZE} from the pool, 1 started): "
                  f"{_summary(cold)}")
            batch = await _time_requests(client, registry, _POOL_SIZE + 3, max(1, repeat // 2))
            print(f"cold start, {_POOL_SIZE + 3} holders requested ({_POOL_SIZE} from the pool, 3 started at once): "
                  f"{_summary(batch)}")
            print(f"load average {procstats.loadavg()}")
        await _wait_pool_full(registry)
        await asyncio.sleep(5)  # every holder idle: started, connected, heartbeating
        rows = [_memory_row(f"idle holder {i + 1}", pid) for i, pid in enumerate(sorted(bench.holder_pids()))]
        if rows:
            rss, pss, locked = (statistics.median(column) / 2**20 for column in zip(*rows))
            print(f"  median of {len(rows)} idle holders: RSS {rss:.1f} MB, PSS {pss:.1f} MB, locked {locked:.1f} MB")
        await _unlocked_holder(bench)
    finally:
        await redis.aclose()
