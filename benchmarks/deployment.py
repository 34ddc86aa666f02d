"""A fresh shardbus deployment for one benchmark run, on the shared broker and Redis.

It does what the demo and the end-to-end tests do: new keys and policy in a
temporary folder, a topic prefix of its own, and the provisioner, authorizer
and reassembler started as processes by shardbus.services.ServiceGroup.
Stopping it stops the services (which tear down their holders) and deletes
the prefix's topics and Redis keys.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from benchmarks import procstats
from schemas.topics import Topics
from shardbus import deployment
from shardbus.cli.secret_commands import open_store
from shardbus.client import ShardbusClient
from shardbus.config import Settings
from shardbus.crypto.keys import MasterKey
from shardbus.kafka import delete_topics, ensure_topics
from shardbus.services import ServiceGroup
from shardbus.sharing.fragmentation import Policy
from shardbus.store.mapping import MappingTable, SecretRecord

APP_ID = "bench"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchDeployment:
    """One deployment: settings, services and the secrets stored for the run."""

    bootstrap: str
    redis_url: str
    prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="shardbus-bench-")))
    group: ServiceGroup | None = None

    @property
    def settings(self) -> Settings:
        return Settings(kafka_bootstrap=self.bootstrap, redis_url=self.redis_url, topic_prefix=self.prefix,
                        home=self.home)

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "SHARDBUS_KAFKA_BOOTSTRAP": self.bootstrap,
            "SHARDBUS_REDIS_URL": self.redis_url,
            "SHARDBUS_TOPIC_PREFIX": self.prefix,
            "SHARDBUS_HOME": str(self.home),
            "PYTHONPATH": str(REPO_ROOT),
        })
        return env

    async def start(self) -> None:
        """Write keys and policy, start the three services and wait until they are ready."""
        deployment.init_deployment(self.home)
        deployment.add_app(self.home, APP_ID, [f"{APP_ID}/*"])
        await ensure_topics(self.bootstrap, [self.topics.replies(APP_ID)])
        # The faust services keep a data folder in their working directory,
        # so they run inside the deployment folder rather than the caller's.
        self.group = ServiceGroup(env=self.service_env(), log_dir=self.home / "logs")
        cwd = os.getcwd()
        os.chdir(self.home)
        try:
            await asyncio.to_thread(self.group.start)
        finally:
            os.chdir(cwd)

    async def stop(self) -> None:
        if self.group is not None:
            await asyncio.to_thread(self.group.stop)
        await self._remove_prefix()
        shutil.rmtree(self.home, ignore_errors=True)

    def client(self, timeout_s: float) -> ShardbusClient:
        key = deployment.load_signing_key(self.home / "apps" / f"{APP_ID}.key")
        return ShardbusClient(self.bootstrap, APP_ID, key, topics=self.topics, timeout_s=timeout_s)

    async def put_secret(self, name: str, policy: Policy, size: int = 32) -> None:
        """Store a random secret of `size` bytes with pooled holders."""
        async with open_store(self.settings) as store:
            await store.put(name, secrets.token_bytes(size), policy, "pooled")

    async def add_filler_records(self, template_name: str, count: int, *, batch: int = 64) -> None:
        """Write `count` mapping records named ``bench/filler-N``, copies of `template_name`'s record.

        Each is sealed under the master key like a real record, so the
        table has `count` more entries of the real size. Their placements
        name the template's holders, which do not hold fragments for these
        names, so a request for a filler would fail at the holders; the
        benchmark requests only the real secrets.
        """
        redis = Redis.from_url(self.redis_url)
        try:
            table = MappingTable(redis, MasterKey.load(self.settings.master_key_path), self.prefix)
            template = await table.get(template_name)
            if template is None:
                raise ValueError(f"secret {template_name!r} is not stored; store it before adding fillers")
            for start in range(0, count, batch):
                names = [f"{APP_ID}/filler-{i:06d}" for i in range(start, min(count, start + batch))]
                await asyncio.gather(*(
                    table.put(SecretRecord(name=name, current=template.current, versions=template.versions))
                    for name in names
                ))
        finally:
            await redis.aclose()

    async def redis_memory(self) -> int:
        """Return Redis's used_memory in bytes (the whole server, shared with other users)."""
        redis = Redis.from_url(self.redis_url)
        try:
            return int((await redis.info("memory"))["used_memory"])
        finally:
            await redis.aclose()

    def pid(self, service: str) -> int:
        assert self.group is not None
        return self.group.processes[service].pid

    def holder_pids(self) -> list[int]:
        """Return the pids of the holder processes the provisioner started."""
        return procstats.children(self.pid("provisioner"))

    async def _remove_prefix(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics()
                     if t.startswith(self.prefix + ".") or t.startswith(self.prefix + "-")]
        finally:
            await admin.close()
        await delete_topics(self.bootstrap, names)
        client = redis_sync.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
        finally:
            client.close()
