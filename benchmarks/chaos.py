"""Fault injection under steady load: kill each part of shardbus in turn and count the replies.

    python -m benchmarks.chaos                       # every scenario on a private 3-node cluster
    python -m benchmarks.chaos --scenarios holder,authorizer --rate 10

It starts a private stack (a 3-node KRaft cluster and a Redis server with
an append-only file, see benchmarks/chaos_stack.py) and one deployment on it
with pooled secrets. For each scenario it drives steady load
(benchmarks/chaos_load.py), injects one fault, keeps the load running, and
prints what every request got:

| Scenario | Fault |
|---|---|
| baseline | none: the same load without a fault, for comparison |
| holder | SIGKILL one pooled holder; the repair replaces it |
| authorizer, reassembler, provisioner | SIGKILL the service, then start it again at once |
| broker | SIGKILL one of the three Kafka nodes; start it again after ``--broker-down`` seconds |
| redis | restart Redis (SIGTERM, then start it from its append-only file) |

The recovery time runs from the fault until the last reply that was an
error or slower than 2 s, or until the client's timeout for a request that
got no reply. It is 0 when no request was impaired, and it includes the
time to work off the requests that queued up during the fault. "No reply
for" is the longest time in which no reply at all arrived, and "Load" the
machine's 1-minute load average at the end of the scenario. Figures and the
machine they came from are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.chaos_deployment import APP_ID, ChaosDeployment
from benchmarks.chaos_load import Report, SteadyLoad
from benchmarks.chaos_stack import PrivateStack
from shardbus.demo_watch import LifecycleWatcher

SCENARIOS = ("baseline", "holder", "authorizer", "reassembler", "provisioner", "broker", "redis")
SERVICES = ("authorizer", "reassembler", "provisioner")

#: Node of the private cluster that the broker scenario kills.
BROKER_NODE = 1


@dataclass
class LoadShape:
    """How much load one scenario drives, and when the fault comes; times in seconds."""

    rate: float = 20.0
    duration_s: float = 40.0
    fault_after_s: float = 10.0
    wait_s: float = 30.0
    broker_down_s: float = 20.0


@dataclass
class Outcome:
    scenario: str
    report: Report
    detail: str
    #: The machine's 1-minute load average at the end of the scenario.
    load_average: float = 0.0


async def run_scenario(
    scenario: str, deployment: ChaosDeployment, shape: LoadShape, stack: PrivateStack | None = None
) -> Outcome:
    """Drive load, inject one fault at ``shape.fault_after_s``, and return what the load saw."""
    if scenario in ("broker", "redis") and stack is None:
        raise ValueError(f"scenario {scenario!r} needs the private stack")
    load = SteadyLoad(deployment.settings.kafka_bootstrap, deployment.topics, APP_ID, deployment.signing_key,
                      deployment.secrets, rate=shape.rate, wait_s=shape.wait_s)
    await load.start()
    try:
        sending = asyncio.create_task(load.run(shape.duration_s))
        await asyncio.sleep(shape.fault_after_s)
        fault_at = asyncio.get_running_loop().time()
        detail = await _inject(scenario, deployment, shape, stack, fault_at)
        await sending
        await load.drain()
        report = load.report(fault_at)
        if load.send_failures:
            detail += f"; request sends failed: {dict(load.send_failures)}"
    finally:
        await load.stop()
    return Outcome(scenario, report, detail, os.getloadavg()[0])


async def _inject(scenario: str, deployment: ChaosDeployment, shape: LoadShape, stack: PrivateStack | None,
                  fault_at: float) -> str:
    loop = asyncio.get_running_loop()
    if scenario == "baseline":
        return "no fault"
    if scenario == "holder":
        return await _kill_holder(deployment, fault_at)
    if scenario in SERVICES:
        deployment.kill(scenario)
        await deployment.restart(scenario)
        return f"{scenario} killed, restarted and ready after {loop.time() - fault_at:.1f} s"
    assert stack is not None
    if scenario == "broker":
        pid = await asyncio.to_thread(stack.kill_broker, BROKER_NODE)
        await asyncio.sleep(shape.broker_down_s)
        await asyncio.to_thread(stack.up)
        return (f"broker {BROKER_NODE} (pid {pid}) killed, down for {shape.broker_down_s:g} s, "
                f"back after {loop.time() - fault_at:.1f} s")
    if scenario == "redis":
        await asyncio.to_thread(stack.restart_redis)
        return f"redis restarted, ready after {loop.time() - fault_at:.1f} s"
    raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")


async def _kill_holder(deployment: ChaosDeployment, fault_at: float) -> str:
    name = sorted(deployment.secrets)[0]
    victim = (await deployment.placements(name))[0].holder_id
    async with LifecycleWatcher(deployment.settings.kafka_bootstrap, deployment.topics) as events:
        await deployment.kill_holder(victim)
        replaced = [e for e in await events.wait_for("holder_replaced", count=1, timeout_s=60)
                    if e.holders and e.holders[0] == victim]
    took = asyncio.get_running_loop().time() - fault_at
    if not replaced:
        return f"holder {victim} of {name} killed; no holder_replaced within 60 s"
    return f"holder {victim} of {name} killed; {replaced[0].holder_id} replaced it after {took:.1f} s"


async def warm_up(deployment: ChaosDeployment, shape: LoadShape, duration_s: float) -> None:
    """Drive the load for `duration_s` without a fault and without a report.

    A fresh deployment answers its first requests slowly (JIT compilation
    in the brokers, first connections, caches), which would count against
    the first scenario.
    """
    load = SteadyLoad(deployment.settings.kafka_bootstrap, deployment.topics, APP_ID, deployment.signing_key,
                      deployment.secrets, rate=shape.rate, wait_s=shape.wait_s)
    await load.start()
    try:
        await load.run(duration_s)
        await load.drain()
    finally:
        await load.stop()


def format_table(outcomes: list[Outcome]) -> str:
    """Return the outcomes as a Markdown table, one row per scenario."""
    lines = [
        "| Scenario | Sent | Leases | Errors | Lost | Late | Duplicates | Copies | p50 ms | p99 ms | Max ms "
        "| No reply for s | Recovery s | Load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        r = outcome.report
        lines.append(
            f"| {outcome.scenario} | {r.sent} | {r.leases} | {r.error_text()} | {r.lost} | {r.late} | "
            f"{r.duplicates} | {r.copies} | {r.percentile(0.5) * 1000:.0f} | {r.percentile(0.99) * 1000:.0f} | "
            f"{max(r.latencies, default=float('nan')) * 1000:.0f} | {r.longest_silence_s:.1f} | {r.recovery_s:.1f} "
            f"| {outcome.load_average:.1f} |"
        )
    lines.append("")
    lines += [f"- {outcome.scenario}: {outcome.detail}" for outcome in outcomes]
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    shape = LoadShape(rate=args.rate, duration_s=args.duration, fault_after_s=args.fault_after,
                      wait_s=args.wait, broker_down_s=args.broker_down)
    stack = PrivateStack(args.stack_dir, cluster=not args.single_broker)
    kind = "a single Kafka node" if args.single_broker else "a 3-node Kafka cluster"
    print(f"starting a private stack with {kind} and Redis in {stack.state_dir}", file=sys.stderr)
    began = time.monotonic()
    await asyncio.to_thread(stack.up)
    deployment = ChaosDeployment(stack.bootstrap, stack.redis_url)
    outcomes: list[Outcome] = []
    try:
        await deployment.start()
        for i in range(args.secrets):
            await deployment.put(f"{APP_ID}/secret-{i}", fragments=args.fragments, threshold=args.threshold)
        print(f"stack and deployment ready after {time.monotonic() - began:.0f} s", file=sys.stderr)
        if args.warmup > 0:
            print(f"warming up with {args.warmup:g} s of load", file=sys.stderr)
            await warm_up(deployment, shape, args.warmup)
        for scenario in args.scenarios:
            print(f"running scenario {scenario}", file=sys.stderr)
            outcome = await run_scenario(scenario, deployment, shape, stack)
            outcomes.append(outcome)
            print(format_table([outcome]), file=sys.stderr)
            await asyncio.sleep(args.settle)
    finally:
        await deployment.stop()
        if not args.keep_stack:
            await asyncio.to_thread(stack.down)
    print(format_table(outcomes))
    failed = [o.scenario for o in outcomes if o.report.lost or o.report.duplicates]
    return 1 if failed else 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=None,
                        help=f"comma-separated scenarios to run, in order (default {','.join(SCENARIOS)}, "
                        "without broker when --single-broker is given)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load per scenario (default 40)")
    parser.add_argument("--fault-after", type=float, default=10.0,
                        help="seconds of load before the fault (default 10)")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds a request waits for its reply before it counts as lost (default 30)")
    parser.add_argument("--broker-down", type=float, default=20.0,
                        help="seconds the killed broker stays down (default 20)")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds of load before the first scenario, not counted (default 60)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds between two scenarios (default 10)")
    parser.add_argument("--secrets", type=int, default=4, help="pooled secrets the load spreads over (default 4)")
    parser.add_argument("--fragments", type=int, default=3, help="fragments per secret (default 3)")
    parser.add_argument("--threshold", type=int, default=2, help="fragments needed per secret (default 2)")
    parser.add_argument("--stack-dir", type=Path, default=None,
                        help="state folder of a private stack to use again (default: a new temporary one)")
    parser.add_argument("--single-broker", action="store_true",
                        help="run the private stack with one Kafka node instead of three (no broker scenario)")
    parser.add_argument("--keep-stack", action="store_true",
                        help="leave the private stack running afterwards, for another run with --stack-dir")
    args = parser.parse_args(argv)
    if args.scenarios is None:
        args.scenarios = [s for s in SCENARIOS if not (args.single_broker and s == "broker")]
    else:
        args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    if args.single_broker and "broker" in args.scenarios:
        parser.error("the broker scenario needs the 3-node cluster; drop --single-broker or the scenario")
    if args.fault_after >= args.duration:
        parser.error(f"--fault-after ({args.fault_after:g}) must be shorter than --duration ({args.duration:g})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The load's own clients log every failed connection to a killed broker,
    # which is the fault under test, not news.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
