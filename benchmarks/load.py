"""Open-loop load on the whole shardbus stack: leases per second, latency, CPU and memory.

Each command starts a fresh deployment on the broker and Redis of
``scripts/stack`` (provisioner, authorizer and reassembler as processes, see
benchmarks.deployment), stores pooled secrets, and sends lease requests from
this process through one or more ShardbusClient instances. Run from the
repository root after ``eval "$(scripts/stack env)"``:

    PYTHONPATH=. python benchmarks/load.py rates --rates 50,200 --duration 20 --floor
    PYTHONPATH=. python benchmarks/load.py rates --policies 3-of-5,5-of-9,10-of-20 --rates 50
    PYTHONPATH=. python benchmarks/load.py rates --stored 10,1000,100000 --rates 50
    PYTHONPATH=. python benchmarks/load.py sustain --start 50 --duration 60
    PYTHONPATH=. python benchmarks/load.py holders

For each rate it prints requests sent, leases received, errors by kind,
latency from a request's due time to its lease (p50, p95, p99, max), and CPU
(percent of one core over the run) and RSS of each process. ``--floor``
also runs benchmarks.floor at the same rate and prints shardbus's p50 and
p99 as multiples of the floor's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import procstats  # noqa: E402
from benchmarks.deployment import APP_ID, BenchDeployment  # noqa: E402
from benchmarks.floor import Floor  # noqa: E402
from benchmarks.openloop import Results, run_open_loop  # noqa: E402
from shardbus.client import ShardbusClient  # noqa: E402
from shardbus.errors import Denied, ServiceUnavailable  # noqa: E402
from shardbus.sharing.fragmentation import Policy  # noqa: E402

#: The target of the sustain search: p99 under this, with no errors.
P99_TARGET_MS = 100.0

_HEADER = f"{'':>10} {'rate/s':>8} {'sent':>7} {'recv':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"


def parse_policy(text: str) -> Policy:
    threshold, _, fragments = text.partition("-of-")
    try:
        return Policy(fragments=int(fragments), threshold=int(threshold))
    except ValueError:
        raise argparse.ArgumentTypeError(f"policy {text!r} is invalid: expected K-of-N such as 3-of-5") from None


def _floats(text: str) -> list[float]:
    return [float(value) for value in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def secret_names(policy: Policy, count: int) -> list[str]:
    return [f"{APP_ID}/p{policy.threshold}of{policy.fragments}-{i}" for i in range(count)]


class LoadRun:
    """The deployment, its clients and the process groups measured in every run."""

    def __init__(self, bench: BenchDeployment, clients: list[ShardbusClient], *, timeout_s: float,
                 release: bool) -> None:
        self.bench = bench
        self.clients = clients
        self.timeout_s = timeout_s
        self.release = release
        self.meter = procstats.CpuMeter({
            "authorizer": lambda: [bench.pid("authorizer")],
            "reassembler": lambda: [bench.pid("reassembler")],
            "provisioner": lambda: [bench.pid("provisioner")],
            "holders": bench.holder_pids,
            "load generator": lambda: [os.getpid()],
        })

    async def drive(self, names: list[str], rate: float, duration_s: float) -> Results:
        """Request leases of `names` in turn at `rate` per second for `duration_s` seconds."""
        loop = asyncio.get_running_loop()

        async def fire(number: int, due: float, results: Results) -> None:
            client = self.clients[number % len(self.clients)]
            try:
                lease = await client.request(names[number % len(names)])
            except Denied as exc:
                results.errors[f"denied {exc.reason}"] += 1
                return
            except ServiceUnavailable:
                results.errors["no reply"] += 1
                return
            except Exception as exc:  # noqa: BLE001 - counted by kind, the run goes on
                results.errors[type(exc).__name__] += 1
                return
            results.latencies_s.append(loop.time() - due)
            if self.release:
                await client.release(lease)
            else:
                lease.release()

        return await run_open_loop(rate, duration_s, fire, drain_s=self.timeout_s + 2)

    async def settle(self, name: str, *, timeout_s: float = 120.0) -> None:
        """Wait until one request gets its lease within a second, so the last run's queues have drained."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                (await self.clients[0].request(name)).release()
            except (Denied, ServiceUnavailable):
                pass
            else:
                if time.monotonic() - started < 1.0:
                    return
            await asyncio.sleep(1.0)
        print(f"{'':>10} (the services were still busy {timeout_s:g} s after the last run)", flush=True)

    async def idle(self, duration_s: float) -> None:
        """Print the CPU and RSS of each process group while no requests are sent."""
        self.meter.start()
        await asyncio.sleep(duration_s)
        usage = self.meter.stop(duration_s)
        parts = [f"{name} {cpu:.0f}% {rss / 2**20:.0f} MB" for name, (cpu, rss, _) in usage.items()]
        print(f"idle for {duration_s:g} s, cpu/rss: {'; '.join(parts)}; load average {procstats.loadavg()}",
              flush=True)

    async def measure(self, label: str, names: list[str], rate: float, duration_s: float) -> Results:
        """Drive one rate, then print its latency row and the CPU and RSS of each process group."""
        load_before = procstats.loadavg()
        self.meter.start()
        started = time.monotonic()
        results = await self.drive(names, rate, duration_s)
        usage = self.meter.stop(time.monotonic() - started)
        print_row(label, results)
        parts = [f"{name} {cpu:.0f}% {rss / 2**20:.0f} MB" + (f" ({count})" if name == "holders" else "")
                 for name, (cpu, rss, count) in usage.items()]
        print(f"{'':>10} cpu/rss: {'; '.join(parts)}")
        print(f"{'':>10} send lag max {results.max_send_lag_s * 1000:.0f} ms; "
              f"load average {load_before} before, {procstats.loadavg()} after", flush=True)
        return results


def print_row(label: str, results: Results) -> None:
    print(
        f"{label:>10} {results.rate:8g} {results.sent:7d} {results.received:7d} "
        f"{results.percentile_ms(0.50):8.1f} {results.percentile_ms(0.95):8.1f} "
        f"{results.percentile_ms(0.99):8.1f} {results.max_ms:8.1f}  errors: {results.error_text()}",
        flush=True,
    )


def passes(results: Results) -> bool:
    return not results.errors and results.received == results.sent and results.percentile_ms(0.99) < P99_TARGET_MS


async def _with_deployment(arguments: argparse.Namespace, body) -> None:
    print(f"machine: {os.cpu_count()} cores, {procstats.cpu_model()}, Linux {platform.release()}, "
          f"Python {platform.python_version()}; load average {procstats.loadavg()}", flush=True)
    bench = BenchDeployment(arguments.bootstrap, arguments.redis_url)
    started = time.monotonic()
    await bench.start()
    print(f"deployment {bench.prefix} ready after {time.monotonic() - started:.1f} s", flush=True)
    clients = [bench.client(arguments.timeout) for _ in range(arguments.clients)]
    try:
        for client in clients:
            await client.start()
        run = LoadRun(bench, clients, timeout_s=arguments.timeout, release=not arguments.no_release)
        await body(run)
    finally:
        for client in clients:
            await client.stop()
        await bench.stop()


async def _store(run: LoadRun, policy: Policy, count: int) -> list[str]:
    names = secret_names(policy, count)
    started = time.monotonic()
    for name in names:
        await run.bench.put_secret(name, policy)
    print(f"stored {count} secrets at {policy.threshold}-of-{policy.fragments} "
          f"in {time.monotonic() - started:.1f} s", flush=True)
    # A few requests first, so that connections and caches are warm.
    await run.drive(names, 10, 1.0)
    return names


async def rates_command(arguments: argparse.Namespace) -> None:
    summary: list[tuple[str, int, Results, Results | None]] = []

    async def body(run: LoadRun) -> None:
        stored = {}
        for policy in arguments.policies:
            stored[policy] = await _store(run, policy, arguments.secrets)
        if arguments.idle > 0:
            await run.idle(arguments.idle)
        real_count = sum(len(names) for names in stored.values())
        first_name = stored[arguments.policies[0]][0]
        filled = real_count
        floor = Floor(arguments.bootstrap) if arguments.floor else None
        if floor is not None:
            await floor.__aenter__()
        try:
            for table_size in arguments.stored or [real_count]:
                if table_size > filled:
                    memory_before = await run.bench.redis_memory()
                    started = time.monotonic()
                    await run.bench.add_filler_records(first_name, table_size - filled)
                    print(f"mapping table: {table_size} records ({table_size - real_count} fillers, "
                          f"written in {time.monotonic() - started:.1f} s; Redis used_memory "
                          f"+{(await run.bench.redis_memory() - memory_before) / 2**20:.1f} MB)", flush=True)
                    filled = table_size
                for policy in arguments.policies:
                    label = f"{policy.threshold}-of-{policy.fragments}"
                    print(f"\n{label}, {filled} records in the mapping table\n{_HEADER}")
                    for rate in arguments.rates:
                        await run.settle(stored[policy][0])
                        results = await run.measure(label, stored[policy], rate, arguments.duration)
                        floor_results = None
                        if floor is not None:
                            floor_results = await floor.measure(rate, arguments.duration)
                            print_row("floor", floor_results)
                            print(f"{'':>10} shardbus/floor: p50 x{_ratio(results, floor_results, 0.5)}, "
                                  f"p99 x{_ratio(results, floor_results, 0.99)}", flush=True)
                        summary.append((label, filled, results, floor_results))
        finally:
            if floor is not None:
                await floor.__aexit__()

    await _with_deployment(arguments, body)
    print(f"\nsummary\n{'policy':>9} {'records':>8} {'rate/s':>7} {'leases/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'floor p50':>9} {'floor p99':>9}  errors")
    for label, table_size, results, floor_results in summary:
        floor_text = (f"{floor_results.percentile_ms(0.5):9.1f} {floor_results.percentile_ms(0.99):9.1f}"
                      if floor_results else f"{'-':>9} {'-':>9}")
        print(f"{label:>9} {table_size:8d} {results.rate:7g} {results.received / results.duration_s:9.1f} "
              f"{results.percentile_ms(0.5):7.1f} {results.percentile_ms(0.99):7.1f} {floor_text}  "
              f"{results.error_text()}")


def _ratio(results: Results, floor_results: Results, fraction: float) -> str:
    return f"{results.percentile_ms(fraction) / floor_results.percentile_ms(fraction):.1f}"


async def sustain_command(arguments: argparse.Namespace) -> None:
    """Search for the largest rate that passes: double until a failure, then bisect."""
    table: list[tuple[float, Results]] = []

    async def body(run: LoadRun) -> None:
        names = await _store(run, arguments.policy, arguments.secrets)
        label = f"{arguments.policy.threshold}-of-{arguments.policy.fragments}"
        print(f"\nsustain search at {label}: {arguments.duration:g} s per rate, pass = no errors and "
              f"p99 < {P99_TARGET_MS:g} ms\n{_HEADER}")
        good, bad, rate = 0.0, float("inf"), arguments.start
        for _ in range(arguments.steps):
            results = await run.measure(label, names, rate, arguments.duration)
            table.append((rate, results))
            if passes(results):
                good = rate
            else:
                bad = rate
            if bad - good <= max(arguments.precision * good, 1):
                break
            rate = rate * 2 if bad == float("inf") else round((good + bad) / 2)
            await run.settle(names[0])

    await _with_deployment(arguments, body)
    print(f"\n{'rate/s':>7} {'leases/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>8} {'pass':>5}  errors")
    for rate, results in table:
        print(f"{rate:7g} {results.received / results.duration_s:9.1f} {results.percentile_ms(0.5):7.1f} "
              f"{results.percentile_ms(0.99):7.1f} {results.max_ms:8.1f} {'yes' if passes(results) else 'no':>5}  "
              f"{results.error_text()}")
    best = max((rate for rate, results in table if passes(results)), default=None)
    print(f"largest rate sustained for {arguments.duration:g} s with p99 < {P99_TARGET_MS:g} ms: "
          f"{best if best is not None else 'none of those tried'}")


async def holders_command(arguments: argparse.Namespace) -> None:
    from benchmarks.holders import measure_holders

    async def body(run: LoadRun) -> None:
        await measure_holders(run.bench, repeat=arguments.repeat)

    await _with_deployment(arguments, body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("SHARDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
                        help="Kafka bootstrap servers (default $SHARDBUS_KAFKA_BOOTSTRAP)")
    parser.add_argument("--redis-url", default=os.environ.get("SHARDBUS_REDIS_URL", "redis://127.0.0.1:16379/0"),
                        help="Redis URL (default $SHARDBUS_REDIS_URL)")
    parser.add_argument("--clients", type=int, default=1, help="ShardbusClient instances sharing the load (default 1)")
    parser.add_argument("--secrets", type=int, default=1,
                        help="secrets per policy, requested in turn, each with its own holders (default 1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a request waits for its reply (default 10)")
    parser.add_argument("--no-release", action="store_true",
                        help="wipe each lease locally without sending a ReleaseRequest")
    sub = parser.add_subparsers(dest="command", required=True)

    rates = sub.add_parser("rates", help="run fixed rates and print latency, CPU and memory for each")
    rates.add_argument("--rates", type=_floats, default=[50.0], help="comma-separated requests per second")
    rates.add_argument("--duration", type=float, default=20.0, help="seconds per rate (default 20)")
    rates.add_argument("--policies", type=lambda t: [parse_policy(p) for p in t.split(",")],
                       default=[parse_policy("3-of-5")], help="comma-separated K-of-N (default 3-of-5)")
    rates.add_argument("--stored", type=_ints, default=None,
                       help="comma-separated mapping table sizes to run at, ascending; filler records make up the count")
    rates.add_argument("--floor", action="store_true", help="run the four-hop floor at each rate too")
    rates.add_argument("--idle", type=float, default=10.0,
                       help="seconds of CPU measurement with no load before the first rate; 0 skips it (default 10)")

    sustain = sub.add_parser("sustain", help="search for the largest rate with p99 under 100 ms")
    sustain.add_argument("--policy", type=parse_policy, default=parse_policy("3-of-5"))
    sustain.add_argument("--start", type=float, default=50.0, help="first rate tried, per second (default 50)")
    sustain.add_argument("--duration", type=float, default=60.0, help="seconds per rate (default 60)")
    sustain.add_argument("--steps", type=int, default=8, help="maximum rates tried (default 8)")
    sustain.add_argument("--precision", type=float, default=0.1,
                         help="stop when the gap between pass and fail is below this share (default 0.1)")

    holders = sub.add_parser("holders", help="time holder cold starts and warm hand-outs; measure idle memory")
    holders.add_argument("--repeat", type=int, default=5, help="hand-outs and cold starts timed (default 5)")

    arguments = parser.parse_args(argv)
    command = {"rates": rates_command, "sustain": sustain_command, "holders": holders_command}[arguments.command]
    asyncio.run(command(arguments))


if __name__ == "__main__":
    main()
