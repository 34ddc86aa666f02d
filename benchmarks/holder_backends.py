"""Compare the holder backends: boot to ready, pool hand-out, host memory and CPU.

Run from the repository root with the stack up (``scripts/stack up`` and
``eval "$(scripts/stack env)"``) and, for microVMs, after
``scripts/microvm-setup``:

    PYTHONPATH=. python benchmarks/holder_backends.py [--backend process|microvm|both] [--repeat N]

For each backend it runs a provisioner in this process, on a prefix of its
own, and measures:

- boot to ready: with an empty pool, the time from a ProvisionRequest for 1
  holder to its ProvisionReply. That covers topic creation, the start of
  the process or VM, the key report and the first heartbeat. Measured one
  at a time, and once for 3 started together, as a refill after a 3-holder
  request does;
- pool hand-out: with a full pool, the time from a ProvisionRequest for 1
  holder to its ProvisionReply;
- host memory and CPU of one idle, ready holder: RSS and PSS of the holder
  process, or of QEMU plus the broker relays it spawned, and its CPU time
  over 20 s as a share of one core.

Every holder is torn down and every topic and Redis key of the prefix is
deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

from benchmarks import procstats
from provisioner.api import ProvisionerClient
from provisioner.backend import HolderBackend
from provisioner.config import ProvisionerConfig
from provisioner.microvm import MicroVMBackend
from provisioner.microvm_host import find_relay_pids
from provisioner.process import ProcessBackend
from provisioner.service import Provisioner
from schemas.topics import Topics
from shardbus.audit import AuditLog
from shardbus.crypto.signing import SigningKey
from shardbus.kafka import delete_topics

_IDLE_SAMPLE_S = 20.0


def _config(pool_size: int) -> ProvisionerConfig:
    return ProvisionerConfig(pool_size=pool_size, max_holders=16, ready_timeout_s=300.0,
                             heartbeat_timeout_s=30.0, teardown_on_stop=True)


def _backend(name: str, log_dir: Path) -> HolderBackend:
    return MicroVMBackend(log_dir) if name == "microvm" else ProcessBackend(log_dir)


class Bench:
    """One provisioner with its own prefix and backend, started and stopped around a measurement."""

    def __init__(self, backend_name: str, pool_size: int, bootstrap: str, redis_url: str, log_dir: Path) -> None:
        self.topics = Topics(f"bench{uuid.uuid4().hex[:8]}")
        self.backend = _backend(backend_name, log_dir)
        self._bootstrap = bootstrap
        self._redis = Redis.from_url(redis_url)
        # A throwaway key, because the audit records of a benchmark prefix are deleted with it.
        audit = AuditLog(bootstrap, self.topics, SigningKey.generate(), role="provisioner")
        self.service = Provisioner(bootstrap, self.topics, self.backend, self._redis, _config(pool_size), audit=audit)
        self._task: asyncio.Task[None] | None = None
        self.client = ProvisionerClient(bootstrap, self.topics)

    async def __aenter__(self) -> Bench:
        if isinstance(self.backend, MicroVMBackend):
            await self.backend.prepare()
        self._task = asyncio.create_task(self.service.run())
        await asyncio.wait_for(self.service.ready.wait(), 120)
        await self.client.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()
        self.service.stop()
        if self._task is not None:
            await self._task
        await _remove_prefix(self._bootstrap, self._redis, self.topics.prefix)
        await self._redis.aclose()

    async def time_request(self, count: int) -> float:
        """Time a request for `count` holders, then tear them down so that VMs do not pile up."""
        started = time.perf_counter()
        granted = await self.client.request(count, "pooled", timeout_s=300.0)
        elapsed = time.perf_counter() - started
        for holder in granted:
            await self.service.teardown(holder.holder_id, "measured by the benchmark")
        return elapsed

    async def wait_pool_full(self) -> None:
        await self.service.pool.wait_filled(300.0)
        # Let the refill's last heartbeat round settle, so that the next
        # request does not compete with a booting holder for the CPU.
        await asyncio.sleep(2.0)

    def host_pids(self, holder_id: str) -> list[int]:
        """Return the host processes of one holder: the holder, or QEMU and its relays."""
        if isinstance(self.backend, MicroVMBackend):
            qemu = self.backend.qemu_pid(holder_id)
            return [] if qemu is None else [qemu, *find_relay_pids(holder_id)]
        status = self.backend.status(holder_id)
        return [] if status is None else [status.pid]


async def _remove_prefix(bootstrap: str, redis: Redis, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
    finally:
        await admin.close()
    await delete_topics(bootstrap, names)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=500)]
    if keys:
        await redis.delete(*keys)


def _median_s(samples: list[float]) -> str:
    return f"{statistics.median(samples):.2f} s (min {min(samples):.2f}, max {max(samples):.2f})"


async def measure(backend_name: str, repeat: int, bootstrap: str, redis_url: str, log_dir: Path) -> dict[str, str]:
    figures: dict[str, str] = {}

    async with Bench(backend_name, 0, bootstrap, redis_url, log_dir) as bench:
        cold = [await bench.time_request(1) for _ in range(repeat)]
        figures["boot to ready, 1 holder"] = _median_s(cold)
        together = await bench.time_request(3)
        figures["boot to ready, 3 together"] = f"{together:.2f} s"

    async with Bench(backend_name, 2, bootstrap, redis_url, log_dir) as bench:
        await bench.wait_pool_full()
        warm = []
        for _ in range(repeat):
            warm.append(await bench.time_request(1))
            await bench.wait_pool_full()
        figures["pool hand-out, 1 holder"] = (f"{statistics.median(warm) * 1000:.0f} ms "
                                              f"(min {min(warm) * 1000:.0f}, max {max(warm) * 1000:.0f})")

        holder_id = bench.service.pool.ready_ids()[0]
        pids = bench.host_pids(holder_id)
        cpu_before = sum(procstats.cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(_IDLE_SAMPLE_S)
        pids = bench.host_pids(holder_id)
        cpu_after = sum(procstats.cpu_seconds(pid) for pid in pids)
        rss = sum(procstats.status_bytes(pid, "VmRSS") for pid in pids)
        pss = sum(procstats.rollup_bytes(pid, "Pss") for pid in pids)
        figures["host processes of an idle holder"] = str(len(pids))
        figures["RSS of an idle holder"] = f"{rss / 2**20:.0f} MiB"
        figures["PSS of an idle holder"] = f"{pss / 2**20:.0f} MiB"
        figures["CPU of an idle holder"] = f"{max(0.0, cpu_after - cpu_before) / _IDLE_SAMPLE_S * 100:.1f} % of a core"
        if isinstance(bench.backend, MicroVMBackend):
            figures["accelerator"] = str(bench.backend.accelerator)
    return figures


def _qemu_version() -> str:
    try:
        output = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return "not installed"
    return output.stdout.splitlines()[0] if output.stdout else "unknown"


async def main_async(args: argparse.Namespace) -> None:
    bootstrap = os.environ.get("SHARDBUS_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("SHARDBUS_REDIS_URL")
    if not bootstrap or not redis_url:
        raise SystemExit('SHARDBUS_KAFKA_BOOTSTRAP and SHARDBUS_REDIS_URL are not set: '
                         'run scripts/stack up && eval "$(scripts/stack env)"')
    backends = ["process", "microvm"] if args.backend == "both" else [args.backend]
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, {_qemu_version()}")
    print(f"# load average before the run: {procstats.loadavg()}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="shardbus-bench-logs-") as log_dir:
        for name in backends:
            results[name] = await measure(name, args.repeat, bootstrap, redis_url, Path(log_dir) / name)
    print(f"# load average after the run: {procstats.loadavg()}")
    rows = list(dict.fromkeys(row for figures in results.values() for row in figures))
    print("| | " + " | ".join(backends) + " |")
    print("|---|" + "---:|" * len(backends))
    for row in rows:
        print(f"| {row} | " + " | ".join(results[name].get(row, "-") for name in backends) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["process", "microvm", "both"], default="both",
                        help="backends to measure (default both)")
    parser.add_argument("--repeat", type=int, default=5, help="requests per timed case (default 5)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
