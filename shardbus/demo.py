"""The main job: the whole shardbus stack, end to end, on the real broker and Redis.

Run it with `scripts/demo`, which starts the mutual TLS stack first
(``scripts/stack up --tls``). It creates a fresh deployment (keys, policy,
topic prefix), issues its certificates and applies its Kafka ACLs and Redis
users as the stack's admin, starts the provisioner, the authorizer and the
reassembler as separate processes, each as its own principal, and then,
printing each step:

1. stores a random secret at 3-of-5 with pooled holders, as the controller,
2. leases it as the app `billing`, with billing's certificate,
3. kills two of the five holders with SIGKILL and leases it again,
4. is denied as the app `intruder`, which has no grant, and shows that the
   broker rejects intruder's certificate on billing's reply topic,
5. stores a secret with per-operation holders, leases it, and watches its
   holders come and go. It fails when they are not all torn down in time.

``--plaintext`` runs the same steps on the plaintext development stack
(``scripts/stack up``), where nothing authenticates anyone. See
``shardbus.demo_access`` for which identity each step uses.

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
import datetime
import hashlib
import itertools
import logging
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from aiokafka.errors import TopicAuthorizationFailedError
from redis.asyncio import Redis

from provisioner.microvm_host import find_qemu_pid
from provisioner.registry import HolderRecord, HolderRegistry, HolderState
from schemas.topics import Topics
from shardbus import deployment
from shardbus.certs import principals
from shardbus.certs.deployment_setup import ADMIN_VARIABLES
from shardbus.cli.secret_commands import open_store
from shardbus.client import ShardbusClient
from shardbus.config import Settings
from shardbus.demo_access import (
    DemoAccess,
    check_environment,
    check_stack,
    describe_holder_access,
    plaintext_access,
    probe_topic,
    tls_access,
)
from shardbus.demo_watch import LifecycleWatcher, describe
from shardbus.errors import ConfigError, Denied, ServiceUnavailable
from shardbus.kafka import ensure_topics
from shardbus.services import SERVICES, ServiceGroup
from shardbus.sharing.fragmentation import Policy

#: Warm pool of the microVM demo: the five holders that db/password takes.
_MICROVM_POOL = 5

#: Time the per-operation holders have to be torn down after their lease, in
#: seconds. The provisioner stops them one after another and waits up to 5 s
#: for each to exit, and a loaded 2-core machine or a microVM is slower.
_TEARDOWN_TIMEOUT_S = 180.0

#: The demo's apps and their grants; intruder has none for what it requests.
_APPS = {"billing": ["db/*", "payments/*"], "intruder": ["public/*"]}


def _step(steps: Iterator[int], text: str) -> None:
    print(f"\n[{next(steps)}] {text}", flush=True)


def _fingerprint(data: bytes | bytearray) -> str:
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}…"


def make_settings(state_dir: Path, *, tls: bool = True, environ: dict[str, str] | None = None) -> Settings:
    """Build a fresh deployment's settings: its own folder and topic prefix.

    In TLS mode they carry the admin's certificate, from the environment
    that ``scripts/stack env --tls`` sets. Raises ConfigError, naming the
    command to run, when a setting of the stack is missing.
    """
    env = dict(os.environ if environ is None else environ)
    check_environment(env, tls=tls)
    run_id = uuid.uuid4().hex[:8]
    env["SHARDBUS_TOPIC_PREFIX"] = f"demo{run_id}"
    env["SHARDBUS_HOME"] = str(state_dir / run_id)
    return Settings.from_env(env)


def _holder_pid(holder_id: str, record: HolderRecord | None) -> int | None:
    """Return the host process that runs a holder: the holder itself, or its QEMU."""
    if record is not None and record.pid:
        return record.pid
    return find_qemu_pid(holder_id)


def _print_mode(settings: Settings, tls: bool) -> None:
    if tls:
        print(f"running with mutual TLS and ACLs: Kafka at {settings.kafka_bootstrap} accepts only client "
              "certificates from the stack's CA, and each service, app and holder is its own principal", flush=True)
        return
    print(f"running in plaintext: Kafka at {settings.kafka_bootstrap}, Redis at {settings.redis_url}", flush=True)
    print("warning: --plaintext is a development option: Kafka and Redis run without TLS, authentication or "
          "ACLs, so any process on this host can read and write every topic and Redis key", file=sys.stderr, flush=True)


def _print_command(command: str, output: str) -> None:
    print(f"    $ {command}")
    for line in output.splitlines():
        print(f"      {line}")


def _set_up_access(settings: Settings, tls: bool, steps: Iterator[int]) -> DemoAccess:
    if not tls:
        return plaintext_access(settings, os.environ)
    _step(steps, "issuing certificates and applying Kafka ACLs and Redis users as the admin of the TLS stack")
    access = tls_access(settings, os.environ, report=_print_command)
    prefix = settings.topic_prefix
    services = ", ".join(principals.service_principal(prefix, role) for role in SERVICES)
    print(f"    services: {services}, each with its role's Redis user")
    print(f"    store: {principals.service_principal(prefix, 'controller')}; "
          f"apps: {', '.join(principals.app_principal(prefix, app) for app in _APPS)}")
    return access


def service_group(access: DemoAccess, log_dir: Path, backend: str) -> ServiceGroup:
    """Return the demo's services, each with its own identity, holders on `backend`."""
    provisioner_args = ["--backend", backend]
    if backend == "microvm":
        # Storing db/password takes five holders at once, and a VM that
        # boots on demand can take longer than the store's 30 s wait for
        # the provisioner.
        provisioner_args += ["--pool-size", str(_MICROVM_POOL)]
    # The provisioner is ready once its pool is full, and VMs boot slowly
    # under software emulation. TLS handshakes add to every start.
    ready_timeout_s = 90.0
    if backend == "microvm":
        ready_timeout_s = 300.0
    elif access.tls:
        ready_timeout_s = 180.0
    return ServiceGroup(
        env=access.service_base_env, log_dir=log_dir, service_env=access.service_env(),
        ready_timeout_s=ready_timeout_s, service_args={"provisioner": provisioner_args},
    )


async def run_demo(settings: Settings, backend: str = "process", *, tls: bool = True) -> None:
    """Run every step of the demo on a new deployment; `settings` are the admin's in TLS mode."""
    _print_mode(settings, tls)
    redis_url = os.environ["SHARDBUS_REDIS_ADMIN_URL"] if tls else settings.redis_url
    await check_stack(settings, redis_url, tls=tls)
    steps = itertools.count(1)
    topics = Topics(settings.topic_prefix)
    _step(steps, f"creating a deployment in {settings.home} (topic prefix {settings.topic_prefix})")
    deployment.init_deployment(settings.home)
    for app_id, grants in _APPS.items():
        deployment.add_app(settings.home, app_id, grants)
    print("    master key, reassembler key, audit key and policy.yaml written; apps billing and intruder registered")
    access = _set_up_access(settings, tls, steps)

    group = service_group(access, settings.home / "logs", backend)
    _step(steps, f"starting the provisioner ({backend} holders), the authorizer and the reassembler")
    started = time.monotonic()
    group.start()
    print(f"    all three ready after {time.monotonic() - started:.1f} s; logs in {group.log_dir}")
    # The store and the lifecycle watcher below read this process's
    # environment, so the process now acts as the controller.
    for name in ADMIN_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(access.controller_env())
    try:
        await _scenario(access, topics, backend, steps)
    finally:
        print("\nstopping the services (the provisioner tears down every holder it started)")
        group.stop()
    down = "scripts/stack down --tls" if tls else "scripts/stack down"
    print(f"done. Logs: {group.log_dir}; the stack keeps running ({down} stops it)")


async def _wait_for_pool(registry: HolderRegistry, count: int, timeout_s: float = 300.0) -> None:
    started = time.monotonic()
    while len(await registry.ids_in_state(HolderState.POOL)) < count:
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"the warm pool had fewer than {count} ready holders after {timeout_s:g} s")
        await asyncio.sleep(0.5)
    print(f"    {count} VMs ready in the warm pool after {time.monotonic() - started:.1f} s")


async def _scenario(access: DemoAccess, topics: Topics, backend: str, steps: Iterator[int]) -> None:
    settings = access.controller
    await ensure_topics(access.bootstrap, [topics.replies(app_id) for app_id in _APPS],
                        kafka_options=access.controller_options())
    password = secrets.token_bytes(24)
    api_key = secrets.token_bytes(40)
    redis = Redis.from_url(access.registry_redis_url)
    registry = HolderRegistry(redis, settings.topic_prefix)
    try:
        _step(steps, f"storing db/password ({_fingerprint(password)}) at 3-of-5 with pooled holders")
        async with open_store(settings) as store:
            stored = await store.put("db/password", password, Policy(fragments=5, threshold=3), "pooled")
        for index, holder_id in enumerate(stored.holders, start=1):
            pid = _holder_pid(holder_id, await registry.get(holder_id))
            print(f"    fragment {index} -> {holder_id} (pid {pid or '?'})")
        if access.tls:
            now = datetime.datetime.now(datetime.timezone.utc)
            for line in await describe_holder_access(access, stored.holders[0], backend, now=now):
                print(f"    {line}")

        billing = deployment.load_signing_key(settings.home / "apps" / "billing.key")
        intruder = deployment.load_signing_key(settings.home / "apps" / "intruder.key")
        async with ShardbusClient(access.bootstrap, "billing", billing, topics=topics,
                                  kafka_options=access.app_options("billing")) as client:
            _step(steps, "leasing db/password as billing")
            await _lease_and_check(client, "db/password", password)

            victims = stored.holders[:2]
            _step(steps, f"killing holders {', '.join(victims)} with SIGKILL, then leasing again (3 of 5 remain)")
            for holder_id in victims:
                pid = _holder_pid(holder_id, await registry.get(holder_id))
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    print(f"    killed {holder_id} (pid {pid})")
            await _lease_and_check(client, "db/password", password)

            _step(steps, "requesting db/password as intruder, which has no grant for it")
            async with ShardbusClient(access.bootstrap, "intruder", intruder, topics=topics,
                                      kafka_options=access.app_options("intruder")) as other:
                try:
                    async with other.lease("db/password"):
                        raise AssertionError("intruder got a lease")
                except Denied as exc:
                    print(f"    denied: {exc.reason} ({exc.detail})")
            await _show_reply_topic_closed(access, topics.replies("billing"))

            _step(steps, f"storing payments/api-key ({_fingerprint(api_key)}) at 2-of-3 with per-operation holders")
            if backend == "microvm":
                # The authorizer waits 10 s for per-operation holders by
                # default (SHARDBUS_PROVISION_TIMEOUT_S), less than a VM
                # needs to boot, so the pool must have them ready.
                await _wait_for_pool(registry, 3)
            async with open_store(settings) as store:
                await store.put("payments/api-key", api_key, Policy(fragments=3, threshold=2), "per_operation")
            print("    fragments sealed in the backup store only; no holder has them yet")
            async with LifecycleWatcher(access.bootstrap, topics, kafka_options=access.controller_options()) as watcher:
                await _lease_and_check(client, "payments/api-key", api_key)
                try:
                    events = await watcher.per_operation_cycle("payments/api-key", timeout_s=_TEARDOWN_TIMEOUT_S)
                except ServiceUnavailable as exc:
                    raise ServiceUnavailable(f"{exc} ({settings.home / 'logs'})") from None
            for event in events:
                print(f"    lifecycle: {describe(event)}")
    finally:
        await redis.aclose()


async def _show_reply_topic_closed(access: DemoAccess, topic: str) -> None:
    """Show that intruder's certificate cannot read billing's replies, which is what the ACLs add."""
    if not access.tls:
        print(f"    (plaintext: no ACL keeps intruder from reading {topic}; only the sealing of each lease "
              "to the key of billing's request protects it)")
        return
    try:
        await probe_topic(access.bootstrap, topic, access.app_options("intruder"))
    except TopicAuthorizationFailedError:
        print(f"    intruder's certificate cannot read {topic}: the broker returned TopicAuthorizationFailed")
        return
    raise AssertionError(f"the broker let intruder's certificate describe {topic}, which its ACLs do not allow")


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
    parser.add_argument("--plaintext", action="store_true",
                        help="run on the plaintext development stack, without TLS, authentication or ACLs "
                             "(default: mutual TLS and ACLs on the TLS stack)")
    args = parser.parse_args(argv)
    tls = not args.plaintext
    # The demo reports each failure itself. aiokafka would add a log line
    # for every failed connection attempt and for the authorization error
    # that the intruder step expects.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    state_dir = Path(os.environ.get("SHARDBUS_DEMO_DIR", Path.home() / ".local/state/shardbus/demo"))
    try:
        settings = make_settings(state_dir, tls=tls)
        asyncio.run(run_demo(settings, args.backend, tls=tls))
    except (ConfigError, ServiceUnavailable, Denied, AssertionError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
