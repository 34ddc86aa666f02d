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

Everything runs through the same code a deployment uses; nothing is faked.
The secrets are random bytes, and the demo prints only their length and a
short digest, never the value.
"""

from __future__ import annotations

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

from provisioner.registry import HolderRegistry
from schemas.topics import Topics
from shardbus import deployment
from shardbus.cli.secret_commands import open_store
from shardbus.client import ShardbusClient
from shardbus.config import Settings
from shardbus.demo_watch import LifecycleWatcher
from shardbus.errors import ConfigError, Denied
from shardbus.services import ServiceGroup
from shardbus.sharing.fragmentation import Policy

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


async def run_demo(settings: Settings) -> None:
    topics = Topics(settings.topic_prefix)
    _step(1, f"creating a deployment in {settings.home} (topic prefix {settings.topic_prefix})")
    deployment.init_deployment(settings.home)
    deployment.add_app(settings.home, "billing", ["db/*", "payments/*"])
    deployment.add_app(settings.home, "intruder", ["public/*"])
    print("    master key, reassembler key, audit key and policy.yaml written; apps billing and intruder registered")

    group = ServiceGroup(env=service_env(settings), log_dir=settings.home / "logs")
    _step(2, "starting the provisioner, the authorizer and the reassembler")
    started = time.monotonic()
    group.start()
    print(f"    all three ready after {time.monotonic() - started:.1f} s; logs in {group.log_dir}")
    os.environ.update(service_env(settings))  # the store and client below read the same settings
    try:
        await _scenario(settings, topics)
    finally:
        print("\nstopping the services (the provisioner tears down every holder it started)")
        group.stop()
    print(f"done. Logs: {group.log_dir}; the stack keeps running (scripts/stack down stops it)")


async def _scenario(settings: Settings, topics: Topics) -> None:
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
            record = await registry.get(holder_id)
            print(f"    fragment {index} -> {holder_id} (pid {record.pid if record else '?'})")

        billing = deployment.load_signing_key(settings.home / "apps" / "billing.key")
        intruder = deployment.load_signing_key(settings.home / "apps" / "intruder.key")
        async with ShardbusClient(settings.kafka_bootstrap, "billing", billing, topics=topics) as client:
            _step(4, "leasing db/password as billing")
            await _lease_and_check(client, "db/password", password)

            victims = stored.holders[:2]
            _step(5, f"killing holders {', '.join(victims)} with SIGKILL, then leasing again (3 of 5 remain)")
            for holder_id in victims:
                record = await registry.get(holder_id)
                if record and record.pid:
                    os.kill(record.pid, signal.SIGKILL)
                    print(f"    killed {holder_id} (pid {record.pid})")
            await _lease_and_check(client, "db/password", password)

            _step(6, "requesting db/password as intruder, which has no grant for it")
            async with ShardbusClient(settings.kafka_bootstrap, "intruder", intruder, topics=topics) as other:
                try:
                    async with other.lease("db/password"):
                        raise AssertionError("intruder got a lease")
                except Denied as exc:
                    print(f"    denied: {exc.reason} ({exc.detail})")

            _step(7, f"storing payments/api-key ({_fingerprint(api_key)}) at 2-of-3 with per-operation holders")
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


def main() -> int:
    state_dir = Path(os.environ.get("SHARDBUS_DEMO_DIR", Path.home() / ".local/state/shardbus/demo"))
    try:
        settings = make_settings(state_dir)
        asyncio.run(run_demo(settings))
    except (ConfigError, Denied, AssertionError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
