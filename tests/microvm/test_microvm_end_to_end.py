"""The whole stack with every holder in its own QEMU microVM.

The provisioner runs with ``--backend microvm``: a 2-of-3 secret is stored
on three VM holders, leased, leased again after one VM is killed, and every
VM must be gone once the services stop, with its topic, its processes and
every file it had on the host. The module is skipped only where QEMU cannot
run (and fails instead under CI=true); ``.ci/run`` installs QEMU and the
guest files with ``scripts/microvm-setup``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from provisioner.microvm_host import find_qemu_pid, find_relay_pids
from provisioner.microvm_image import default_cache_dir
from provisioner.registry import HolderRegistry, HolderState
from schemas.topics import Topics
from shardbus import deployment
from shardbus.cli.secret_commands import open_store
from shardbus.client import ShardbusClient
from shardbus.config import Settings
from shardbus.kafka import ensure_topics
from shardbus.services import ServiceGroup
from shardbus.sharing.fragmentation import Policy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Three VMs boot at once on a 2-core machine that other tests load too.
_READY_TIMEOUT_S = 600.0


class VMDeployment:
    def __init__(self, settings: Settings, group: ServiceGroup) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.group = group
        self.log_dir = settings.home / "logs"
        self.console_dir = self.log_dir / "holders"

    def client(self) -> ShardbusClient:
        key = deployment.load_signing_key(self.settings.home / "apps" / "billing.key")
        return ShardbusClient(self.settings.kafka_bootstrap, "billing", key, topics=self.topics, timeout_s=120.0)

    async def registry_state(self, holder_id: str) -> HolderState | None:
        redis = Redis.from_url(self.settings.redis_url)
        try:
            record = await HolderRegistry(redis, self.settings.topic_prefix).get(holder_id)
        finally:
            await redis.aclose()
        return None if record is None else record.state

    async def holder_details(self, holder_ids) -> dict[str, tuple[int, str]]:
        redis = Redis.from_url(self.settings.redis_url)
        try:
            registry = HolderRegistry(redis, self.settings.topic_prefix)
            records = {h: await registry.get(h) for h in holder_ids}
        finally:
            await redis.aclose()
        return {h: (r.pid, r.detail) for h, r in records.items() if r is not None}


@pytest.fixture(scope="module")
def vm_deployment(microvm_host, kafka_bootstrap: str, redis_url: str, tmp_path_factory) -> Iterator[VMDeployment]:
    prefix = f"vm{uuid.uuid4().hex[:8]}"
    home = tmp_path_factory.mktemp("vm-deployment")
    settings = Settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=prefix, home=home)
    deployment.init_deployment(home)
    deployment.add_app(home, "billing", ["db/*"])
    asyncio.run(ensure_topics(kafka_bootstrap, [Topics(prefix).replies("billing")]))
    env = dict(os.environ)
    env.update({
        "SHARDBUS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SHARDBUS_REDIS_URL": redis_url,
        "SHARDBUS_TOPIC_PREFIX": prefix,
        "SHARDBUS_HOME": str(home),
    })
    group = ServiceGroup(
        env=env, log_dir=home / "logs", ready_timeout_s=_READY_TIMEOUT_S,
        service_args={"provisioner": ["--backend", "microvm", "--pool-size", "3",
                                      "--ready-timeout", str(_READY_TIMEOUT_S)]},
    )
    try:
        # Inside the try, so that a service that fails to start does not
        # leave the provisioner and its VMs running.
        group.start()
        yield VMDeployment(settings, group)
    finally:
        group.stop()


async def _eventually(check, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:g} s")
        await asyncio.sleep(0.5)


async def _topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def _host_traces_of(holder_id: str, console_dir: Path) -> list[str]:
    """Return what is left on the host of the VM that ran `holder_id`: files and Unix sockets naming it.

    It searches the holders' log folder and the microVM cache (the folders
    the backend writes), the top of the temporary folder and /dev/shm,
    and the socket paths of /proc/net/unix.
    """
    found = []
    for folder in (console_dir, default_cache_dir()):
        for parent, folders, files in os.walk(folder):
            found += [os.path.join(parent, name) for name in folders + files if holder_id in name]
    for folder in (tempfile.gettempdir(), "/dev/shm"):
        if os.path.isdir(folder):
            found += [os.path.join(folder, name) for name in os.listdir(folder) if holder_id in name]
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as sockets:
        found += [f"socket {line.split()[-1]}" for line in sockets if holder_id in line]
    return found


async def test_lease_survives_killed_vm(vm_deployment: VMDeployment) -> None:
    settings = vm_deployment.settings
    secret = secrets.token_bytes(32)
    async with open_store(settings) as store:
        stored = await store.put("db/vm-password", secret, Policy(fragments=3, threshold=2), "pooled")
    holders = list(stored.holders)
    assert len(holders) == 3

    # Each holder is a QEMU process named after it, and the registry has no
    # host pid for it: the holder's own process lives inside the guest.
    qemu_pids = {holder_id: find_qemu_pid(holder_id) for holder_id in holders}
    for holder_id, pid in qemu_pids.items():
        assert pid is not None, f"no QEMU process runs holder {holder_id}"
    for holder_id, (pid, detail) in (await vm_deployment.holder_details(holders)).items():
        assert pid == 0, f"holder {holder_id} has host pid {pid} in the registry"
        assert "qemu pid" in detail

    async with vm_deployment.client() as client:
        async with client.lease("db/vm-password") as leased:
            assert bytes(leased) == secret

        # The running VMs' consoles are deleted at teardown, so they are
        # checked now, after the holders have handled the secret.
        consoles = list(vm_deployment.console_dir.glob("*.log"))
        assert {path.stem for path in consoles} >= set(holders)
        for console in consoles:
            content = console.read_bytes()
            assert secret not in content, f"{console} contains the secret"
            assert secret.hex().encode() not in content, f"{console} contains the secret in hex"

        victim = holders[0]
        os.kill(qemu_pids[victim], signal.SIGKILL)

        async def victim_failed() -> bool:
            return await vm_deployment.registry_state(victim) is HolderState.FAILED

        await _eventually(victim_failed, f"holder {victim} was not recorded failed")

        async with client.lease("db/vm-password") as leased:
            assert bytes(leased) == secret

    async def victim_topic_deleted() -> bool:
        return vm_deployment.topics.holder(victim) not in await _topic_names(settings.kafka_bootstrap)

    await _eventually(victim_topic_deleted, f"the topic of the killed holder {victim} was not deleted")
    assert find_qemu_pid(victim) is None
    assert find_relay_pids(victim) == []
    assert _host_traces_of(victim, vm_deployment.console_dir) == []

    # Stopping the services tears down every VM, the pool's included.
    redis = Redis.from_url(settings.redis_url)
    try:
        registry = HolderRegistry(redis, settings.topic_prefix)
        every_holder = set(holders)
        for state in HolderState:
            every_holder |= set(await registry.ids_in_state(state))
    finally:
        await redis.aclose()
    vm_deployment.group.stop()

    still_running = {h: find_qemu_pid(h) for h in every_holder if find_qemu_pid(h) is not None}
    assert still_running == {}
    relays = {h: find_relay_pids(h) for h in every_holder if find_relay_pids(h)}
    assert relays == {}
    topics = await _topic_names(settings.kafka_bootstrap)
    assert sorted(vm_deployment.topics.holder(h) for h in every_holder if vm_deployment.topics.holder(h) in topics) == []
    for holder_id in every_holder:
        assert _host_traces_of(holder_id, vm_deployment.console_dir) == []
    left = sorted(path.name for path in vm_deployment.console_dir.iterdir())
    assert left == [], f"files left in the holders' log folder after teardown: {left}"
    cache_left = sorted(path.name for path in default_cache_dir().iterdir()
                        if path.name not in ("kernel", "busybox") and not path.name.startswith("initramfs-"))
    assert cache_left == [], f"files left in the microVM cache after teardown: {cache_left}"

    # The killed VM's last console lines went to the provisioner's log, which
    # never contains the secret either.
    provisioner_log = (vm_deployment.log_dir / "provisioner.log").read_bytes()
    assert f"microVM {victim} exited before it was asked to stop".encode() in provisioner_log
    assert secret not in provisioner_log
    assert secret.hex().encode() not in provisioner_log
