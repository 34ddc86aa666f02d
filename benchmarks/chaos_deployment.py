"""A throwaway shardbus deployment whose processes the fault injection kills.

It makes new keys and a policy in a temporary folder, uses a topic prefix of
its own, starts the provisioner, the authorizer and the reassembler as
processes (shardbus.services.ServiceGroup) and stores pooled secrets. Stopping
it stops the services (the provisioner then tears its holders down) and
deletes the prefix's topics and Redis keys.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import redis as redis_sync
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from provisioner.registry import HolderRegistry, HolderState
from schemas.topics import Topics
from shardbus import deployment
from shardbus.cli.secret_commands import open_store
from shardbus.config import Settings
from shardbus.crypto.keys import MasterKey
from shardbus.crypto.signing import SigningKey
from shardbus.kafka import delete_topics, ensure_topics
from shardbus.services import ServiceGroup
from shardbus.sharing.fragmentation import Policy
from shardbus.store.mapping import MappingTable, Placement

APP_ID = "chaos"
REPO_ROOT = Path(__file__).resolve().parent.parent
_LIVE_STATES = (HolderState.POOL, HolderState.ASSIGNED, HolderState.PER_OPERATION, HolderState.WARMING)


class ChaosDeployment:
    """Keys, policy, services and secrets of one fault-injection run."""

    def __init__(self, bootstrap: str, redis_url: str, *, env: dict[str, str] | None = None) -> None:
        self.prefix = f"chaos{uuid.uuid4().hex[:8]}"
        self.home = Path(tempfile.mkdtemp(prefix="shardbus-chaos-"))
        self.settings = Settings(kafka_bootstrap=bootstrap, redis_url=redis_url, topic_prefix=self.prefix,
                                 home=self.home)
        self.topics = Topics(self.prefix)
        service_env = dict(os.environ)
        service_env.update(env or {})
        service_env.update({
            "SHARDBUS_KAFKA_BOOTSTRAP": bootstrap,
            "SHARDBUS_REDIS_URL": redis_url,
            "SHARDBUS_TOPIC_PREFIX": self.prefix,
            "SHARDBUS_HOME": str(self.home),
            "PYTHONPATH": str(REPO_ROOT),
        })
        self.group = ServiceGroup(env=service_env, log_dir=self.home / "logs", ready_timeout_s=120)
        self.secrets: dict[str, bytes] = {}

    @property
    def signing_key(self) -> SigningKey:
        return deployment.load_signing_key(self.home / "apps" / f"{APP_ID}.key")

    async def start(self) -> None:
        """Write keys and policy, then start the three services and wait until they are ready."""
        deployment.init_deployment(self.home)
        deployment.add_app(self.home, APP_ID, [f"{APP_ID}/*"])
        await ensure_topics(self.settings.kafka_bootstrap, [self.topics.replies(APP_ID)])
        await asyncio.to_thread(self._start_in_home)

    def _start_in_home(self) -> None:
        # The faust services keep a data folder in their working directory.
        cwd = os.getcwd()
        os.chdir(self.home)
        try:
            self.group.start()
        finally:
            os.chdir(cwd)

    async def put(self, name: str, *, fragments: int = 3, threshold: int = 2, size: int = 32) -> None:
        """Store a random pooled secret under `name` (which must start with ``chaos/``)."""
        secret = secrets.token_bytes(size)
        async with open_store(self.settings) as store:
            await store.put(name, secret, Policy(fragments=fragments, threshold=threshold), "pooled")
        self.secrets[name] = secret

    async def placements(self, name: str) -> list[Placement]:
        redis = Redis.from_url(self.settings.redis_url)
        try:
            table = MappingTable(redis, MasterKey.load(self.settings.master_key_path), self.prefix)
            record = await table.get(name)
        finally:
            await redis.aclose()
        if record is None:
            raise ValueError(f"secret {name!r} is not stored")
        return list(record.current_version().placements)

    async def holder_pids(self) -> dict[str, int]:
        """Return the pid of every holder the registry records as live."""
        redis = Redis.from_url(self.settings.redis_url)
        try:
            registry = HolderRegistry(redis, self.prefix)
            pids = {}
            for state in _LIVE_STATES:
                for holder_id in await registry.ids_in_state(state):
                    record = await registry.get(holder_id)
                    if record is not None and record.pid:
                        pids[holder_id] = record.pid
            return pids
        finally:
            await redis.aclose()

    async def kill_holder(self, holder_id: str) -> None:
        pid = (await self.holder_pids())[holder_id]
        os.kill(pid, signal.SIGKILL)

    def kill(self, service: str) -> None:
        """Kill a service with SIGKILL, as a crash would."""
        self.group.kill(service)

    async def restart(self, service: str) -> None:
        """Start a killed service again and wait until it is ready."""
        cwd = os.getcwd()
        os.chdir(self.home)
        try:
            self.group.start_one(service)
        finally:
            os.chdir(cwd)
        await asyncio.to_thread(self.group.wait_ready, service)

    async def stop(self) -> None:
        """Stop the services, kill any holder left behind, and delete the prefix's topics and keys."""
        leftover = await self.holder_pids()
        await asyncio.to_thread(self.group.stop)
        for holder_id, pid in leftover.items():
            _kill_holder_process(pid, holder_id)
        await self._remove_prefix()
        shutil.rmtree(self.home, ignore_errors=True)

    async def _remove_prefix(self) -> None:
        bootstrap = self.settings.kafka_bootstrap
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics()
                     if t.startswith(self.prefix + ".") or t.startswith(self.prefix + "-")]
        finally:
            await admin.close()
        await delete_topics(bootstrap, names)
        client = redis_sync.Redis.from_url(self.settings.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
        finally:
            client.close()


def _kill_holder_process(pid: int, holder_id: str) -> None:
    # Only a process whose command line names this holder is signalled.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            if holder_id.encode() not in file.read():
                return
        os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass
