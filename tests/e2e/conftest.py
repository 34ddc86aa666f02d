"""One whole deployment per test module: keys, policy, services, real broker and Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from provisioner.registry import HolderRegistry
from schemas.topics import Topics
from shardbus import deployment
from shardbus.cli.secret_commands import open_store
from shardbus.client import ShardbusClient
from shardbus.config import Settings
from shardbus.crypto.signing import SigningKey
from shardbus.kafka import delete_topics, ensure_topics
from shardbus.services import ServiceGroup
from shardbus.sharing.fragmentation import Policy
from shardbus.store.secrets import StoredVersion

APPS = {"billing": ["db/*", "payments/*"], "intruder": ["public/*"], "shortlived": ["db/expiring*"]}
#: Lease lifetimes in seconds of the apps that do not use the default.
LEASE_TTL_S = {"shortlived": 1}


@dataclass
class Deployment:
    settings: Settings
    topics: Topics
    group: ServiceGroup
    #: The services' TMPDIR, where the holders' working folders and faust's data folders go.
    tmpdir: Path

    @property
    def home(self) -> Path:
        return self.settings.home

    def signing_key(self, app_id: str) -> SigningKey:
        return deployment.load_signing_key(self.home / "apps" / f"{app_id}.key")

    def client(self, app_id: str = "billing", *, key: SigningKey | None = None, timeout_s: float = 20.0) -> ShardbusClient:
        return ShardbusClient(
            self.settings.kafka_bootstrap, app_id, key or self.signing_key(app_id),
            topics=self.topics, timeout_s=timeout_s,
        )

    async def put(self, name: str, secret: bytes, *, fragments: int = 5, threshold: int = 3,
                  lifecycle: str = "pooled") -> StoredVersion:
        async with open_store(self.settings) as store:
            return await store.put(name, secret, Policy(fragments=fragments, threshold=threshold), lifecycle)

    async def holder_pid(self, holder_id: str) -> int:
        redis = Redis.from_url(self.settings.redis_url)
        try:
            record = await HolderRegistry(redis, self.settings.topic_prefix).get(holder_id)
        finally:
            await redis.aclose()
        assert record is not None and record.pid, f"holder {holder_id} is not in the registry"
        return record.pid

    async def signal_holders(self, holder_ids, signum: int) -> list[int]:
        pids = [await self.holder_pid(h) for h in holder_ids]
        for pid in pids:
            os.kill(pid, signum)
        return pids


def _service_env(settings: Settings, tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SHARDBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHARDBUS_REDIS_URL": settings.redis_url,
        "SHARDBUS_TOPIC_PREFIX": settings.topic_prefix,
        "SHARDBUS_HOME": str(settings.home),
        "TMPDIR": str(tmpdir),
    })
    return env


@pytest.fixture(scope="module")
def shardbus_deployment(request, kafka_bootstrap: str, redis_url: str, tmp_path_factory) -> Iterator[Deployment]:
    """A deployment with its own topic prefix and running services, removed after the module's tests.

    The services get a TMPDIR of their own, so a test can find every
    temporary file of the run. A test module may set ``SERVICE_ARGS``,
    extra command-line arguments per service name, as
    ``ServiceGroup.service_args`` takes them.
    """
    prefix = f"e{uuid.uuid4().hex[:8]}"
    home = tmp_path_factory.mktemp("deployment")
    tmpdir = tmp_path_factory.mktemp("tmp")
    settings = Settings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=prefix, home=home)
    deployment.init_deployment(home)
    for app_id, grants in APPS.items():
        deployment.add_app(home, app_id, grants, lease_ttl_s=LEASE_TTL_S.get(app_id, 30))
    topics = Topics(prefix)
    asyncio.run(ensure_topics(kafka_bootstrap, [topics.replies(app) for app in APPS]))

    group = ServiceGroup(env=_service_env(settings, tmpdir), log_dir=home / "logs",
                         service_args=getattr(request.module, "SERVICE_ARGS", {}))
    try:
        group.start()
        yield Deployment(settings=settings, topics=topics, group=group, tmpdir=tmpdir)
    finally:
        group.stop()
        _remove_prefix(kafka_bootstrap, redis_url, prefix)


def _remove_prefix(bootstrap: str, redis_url: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    async def topics_with_prefix() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(prefix + ".") or t.startswith(prefix + "-")]
        finally:
            await admin.close()

    asyncio.run(delete_topics(bootstrap, asyncio.run(topics_with_prefix())))
    client = redis_sync.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def stopped_holders(shardbus_deployment: Deployment):
    """Pause holders with SIGSTOP for one test, and resume them afterwards."""
    paused: list[int] = []

    async def pause(holder_ids) -> None:
        paused.extend(await shardbus_deployment.signal_holders(holder_ids, signal.SIGSTOP))

    yield pause
    for pid in paused:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
