"""The main job: the whole shardbus stack, end to end, on the real broker and Redis.

Run it with `scripts/demo`, which starts Kafka and Redis first. It creates a
fresh deployment (keys, policy, topic prefix), starts the provisioner, the
authorizer and the reassembler as separate processes, and then, printing
each step:

1. stores a random secret at 3-of-5 with pooled holders,
2. leases it as the app `billing`,
3. kills two of the five holders with SIGKILL and leases it again,
4. is denied as the app `intruder`, which has no grant,
5. stores a secret with per-operation holders, leases it, and watches its
   holders come and go.

With ``--backend microvm`` every holder runs in its own QEMU microVM
(``scripts/microvm-setup`` installs QEMU and the guest kernel), and the
demo kills the VMs of two holders instead of their processes.

Everything runs through the same code a deployment uses; nothing is faked.
The secrets are random bytes, and the demo prints only their length and a
short digest, never the value.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import signal
import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

from provisioner.microvm_host import find_qemu_pid
from provisioner.registry import HolderRecord, HolderRegistry, HolderState
from schemas.topics import Topics
from shardbus import deployment
from shardbus.cli.secret_commands import open_store
from shardbus.client import ShardbusClient
from shardbus.config import Settings
from shardbus.demo_watch import LifecycleWatcher
from shardbus.errors import ConfigError, Denied
from shardbus.services import ServiceGroup
from shardbus.sharing.fragmentation import Policy

#: Warm pool of the microVM demo: the five holders that db/password takes.
_MICROVM_POOL = 5

_START_STACK = 'start the local stack with scripts/stack up && eval "$(scripts/stack env)", or run scripts/demo'


def _step(number: int, text: str) -> None:
    print(f"\n[{number}] {text}", flush=True)


def _fingerprint(data: bytes | bytearray) -> str:
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}…"


def make_settings(state_dir: Path) -> Settings:
    """Build a fresh deployment's settings: its own folder and topic prefix."""
    for variable in ("SHARDBUS_KAFKA_BOOTSTRAP", "SHARDBUS_REDIS_URL"):
        if not os.environ.get(variable):
            raise ConfigError(f"{variable} is not set: {_START_STACK}")
    run_id = uuid.uuid4().hex[:8]
    environ = dict(os.environ)
    environ["SHARDBUS_TOPIC_PREFIX"] = f"demo{run_id}"
    environ["SHARDBUS_HOME"] = str(state_dir / run_id)
    return Settings.from_env(environ)


def service_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SHARDBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHARDBUS_REDIS_URL": settings.redis_url,
        "SHARDBUS_TOPIC_PREFIX": settings.topic_prefix,
        "SHARDBUS_HOME": str(settings.home),
    })
    return env


def _holder_pid(holder_id: str, record: HolderRecord | None) -> int | None:
    """Return the host process that runs a holder: the holder itself, or its QEMU."""
    if record is not None and record.pid:
        return record.pid
    return find_qemu_pid(holder_id)


async def run_demo(settings: Settings, backend: str = "process") -> None:
    topics = Topics(settings.topic_prefix)
    _step(1, f"creating a deployment in {settings.home} (topic prefix {settings.topic_prefix})")
    deployment.init_deployment(settings.home)
    deployment.add_app(settings.home, "billing", ["db/*", "payments/*"])
    deployment.add_app(settings.home, "intruder", ["public/*"])
    print("    master key, reassembler key, audit key and policy.yaml written; apps billing and intruder registered")

    provisioner_args = ["--backend", backend]
    if backend == "microvm":
        # Storing db/password takes five holders at once, and a VM that
        # boots on demand can take longer than the store's 30 s wait for
        # the provisioner.
        provisioner_args += ["--pool-size", str(_MICROVM_POOL)]
    group = ServiceGroup(
        env=service_env(settings), log_dir=settings.home / "logs",
        # The provisioner is ready once its pool is full, and VMs boot slowly
        # under software emulation.
        ready_timeout_s=300.0 if backend == "microvm" else 90.0,
        service_args={"provisioner": provisioner_args},
    )
    _step(2, f"starting the provisioner ({backend} holders), the authorizer and the reassembler")
    started = time.monotonic()
    group.start()
    print(f"    all three ready after {time.monotonic() - started:.1f} s; logs in {group.log_dir}")
    os.environ.update(service_env(settings))  # the store and client below read the same settings
    try:
        await _scenario(settings, topics, backend)
    finally:
        print("\nstopping the services (the provisioner tears down every holder it started)")
        group.stop()
    print(f"done. Logs: {group.log_dir}; the stack keeps running (scripts/stack down stops it)")


async def _wait_for_pool(registry: HolderRegistry, count: int, timeout_s: float = 300.0) -> None:
    started = time.monotonic()
    while len(await registry.ids_in_state(HolderState.POOL)) < count:
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"the warm pool had fewer than {count} ready holders after {timeout_s:g} s")
        await asyncio.sleep(0.5)
    print(f"    {count} VMs ready in the warm pool after {time.monotonic() - started:.1f} s")


async def _scenario(settings: Settings, topics: Topics, backend: str = "process") -> None:
    from shardbus.kafka import ensure_topics

    await ensure_topics(settings.kafka_bootstrap, [topics.replies("billing"), topics.replies("intruder")])
    password = secrets.token_bytes(24)
    api_key = secrets.token_bytes(40)
    redis = Redis.from_url(settings.redis_url)
    registry = HolderRegistry(redis, settings.topic_prefix)
    try:
        _step(3, f"storing db/password ({_fingerprint(password)}) at 3-of-5 with pooled holders")
        async with open_store(settings) as store:
            stored = await store.put("db/password", password, Policy(fragments=5, threshold=3), "pooled")
        for index, holder_id in enumerate(stored.holders, start=1):
            pid = _holder_pid(holder_id, await registry.get(holder_id))
            print(f"    fragment {index} -> {holder_id} (pid {pid or '?'})")

        billing = deployment.load_signing_key(settings.home / "apps" / "billing.key")
        intruder = deployment.load_signing_key(settings.home / "apps" / "intruder.key")
        async with ShardbusClient(settings.kafka_bootstrap, "billing", billing, topics=topics) as client:
            _step(4, "leasing db/password as billing")
            await _lease_and_check(client, "db/password", password)

            victims = stored.holders[:2]
            _step(5, f"killing holders {', '.join(victims)} with SIGKILL, then leasing again (3 of 5 remain)")
            for holder_id in victims:
                pid = _holder_pid(holder_id, await registry.get(holder_id))
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    print(f"    killed {holder_id} (pid {pid})")
            await _lease_and_check(client, "db/password", password)

            _step(6, "requesting db/password as intruder, which has no grant for it")
            async with ShardbusClient(settings.kafka_bootstrap, "intruder", intruder, topics=topics) as other:
                try:
                    async with other.lease("db/password"):
                        raise AssertionError("intruder got a lease")
                except Denied as exc:
                    print(f"    denied: {exc.reason} ({exc.detail})")

            _step(7, f"storing payments/api-key ({_fingerprint(api_key)}) at 2-of-3 with per-operation holders")
            if backend == "microvm":
                # The authorizer waits 10 s for per-operation holders by
                # default (SHARDBUS_PROVISION_TIMEOUT_S), less than a VM
                # needs to boot, so the pool must have them ready.
                await _wait_for_pool(registry, 3)
            async with open_store(settings) as store:
                await store.put("payments/api-key", api_key, Policy(fragments=3, threshold=2), "per_operation")
            print("    fragments sealed in the backup store only; no holder has them yet")
            async with LifecycleWatcher(settings.kafka_bootstrap, topics) as watcher:
                await _lease_and_check(client, "payments/api-key", api_key)
                events = await watcher.collect(until="holder_torn_down", count=3, timeout_s=20)
            for event in events:
                print(f"    lifecycle: {event}")
            if not any(e.startswith("holder_torn_down") for e in events):
                print("    (no teardown seen within 20 s; see the provisioner log)")
    finally:
        await redis.aclose()


async def _lease_and_check(client: ShardbusClient, name: str, expected: bytes) -> None:
    started = time.monotonic()
    async with client.lease(name) as secret:
        elapsed_ms = (time.monotonic() - started) * 1000
        same = secrets.compare_digest(bytes(secret), expected)
        print(f"    lease in {elapsed_ms:.0f} ms: {_fingerprint(secret)}; matches what was stored: {same}")
        if not same:
            raise AssertionError(f"the lease of {name} does not match the stored secret")
    print("    lease released; its buffer is zeroed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardbus.demo", description="Run the shardbus demo.")
    parser.add_argument("--backend", choices=["process", "microvm"], default="process",
                        help="run each holder as an OS process or in its own QEMU microVM (default process)")
    args = parser.parse_args(argv)
    state_dir = Path(os.environ.get("SHARDBUS_DEMO_DIR", Path.home() / ".local/state/shardbus/demo"))
    try:
        settings = make_settings(state_dir)
        asyncio.run(run_demo(settings, args.backend))
    except (ConfigError, Denied, AssertionError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
