"""The request path end to end: the client SDK, both stream services as ``python -m``
subprocesses, and holders run by the holder runtime in this process.

The provisioner is left out: the holders are entered in the holder registry
directly, as the provisioner would after their first heartbeat.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from redis.asyncio import Redis

from holders.handlers import CommandHandler
from holders.runtime import HolderService
from schemas.messages import StoreFragment
from shardbus.client import ShardbusClient
from shardbus.crypto import aead
from shardbus.errors import Denied
from shardbus.services import ServiceGroup
from stream_support import (
    WAIT_S,
    Producer,
    create_topics,
    make_deployment,
    register_holders,
    store_secret,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = b"end-to-end secret"
HOLDERS = ["e-one", "e-two", "e-three"]


async def test_client_gets_lease(tmp_path, kafka_bootstrap, redis_url, topic_prefix, redis_prefix, kafka_admin):
    dep = make_deployment(
        tmp_path / "home", kafka_bootstrap=kafka_bootstrap, redis_url=redis_url,
        topic_prefix=topic_prefix, redis_prefix=redis_prefix, grants={"billing": ["db/*"]},
    )
    topics = dep.topics
    await create_topics(dep, *(topics.holder(h) for h in HOLDERS))
    redis = Redis.from_url(redis_url)
    stored = await store_secret(redis, dep, "db/password", SECRET, HOLDERS, threshold=2)
    # The heartbeats go to the provisioner, which this test does not run, so
    # the registry keeps the one entered here.
    await register_holders(redis, dep, stored)

    holders = [
        HolderService(CommandHandler(h, stored.holder_keys[h]), kafka_bootstrap, topics) for h in HOLDERS
    ]
    holder_tasks = [asyncio.create_task(holder.run()) for holder in holders]
    async with Producer(kafka_bootstrap) as producer:
        for fragment, holder_id in zip(stored.fragments.fragments, HOLDERS):
            key = dep.master_key.fragment_key("db/password", 1, fragment.index, holder_id)
            sealed = aead.seal_fragment(key, fragment.to_bytes(), secret_id="db/password", version=1,
                                        index=fragment.index, holder_id=holder_id, key_version=dep.master_key.version)
            await producer.send(topics.holder(holder_id), StoreFragment(
                holder_id=holder_id, secret_name="db/password", secret_version=1, fragment_index=fragment.index,
                key_version=dep.master_key.version, sealed_fragment=sealed, request_id=os.urandom(16).hex(),
            ))

    env = dict(os.environ)
    env.update(
        SHARDBUS_KAFKA_BOOTSTRAP=kafka_bootstrap, SHARDBUS_REDIS_URL=redis_url,
        SHARDBUS_TOPIC_PREFIX=topic_prefix, SHARDBUS_HOME=str(dep.settings.home),
        SHARDBUS_HOLDER_MAX_SILENCE_S="600",
    )
    # The services read the Redis prefix from SHARDBUS_TOPIC_PREFIX, so the
    # mapping record and registry entries are copied there.
    for key in [k async for k in redis.scan_iter(match=f"{dep.redis_prefix}:*")]:
        await redis.copy(key, topic_prefix + key.decode()[len(dep.redis_prefix):], replace=True)

    services = ServiceGroup(env=env, log_dir=tmp_path / "logs", ready_timeout_s=WAIT_S)
    try:
        await asyncio.to_thread(services.start, ["authorizer", "reassembler"])
        async with ShardbusClient(kafka_bootstrap, "billing", dep.signing_keys["billing"], topics=topics,
                                  timeout_s=WAIT_S) as client:
            lease = await client.request("db/password")
            try:
                assert bytes(lease.secret) == SECRET
            finally:
                lease.release()
            with pytest.raises(Denied) as denied:
                await client.request("db/unknown")
            assert denied.value.reason == "secret_not_found"
    finally:
        await asyncio.to_thread(services.stop)
        for holder in holders:
            holder.stop()
        await asyncio.gather(*holder_tasks, return_exceptions=True)
        async for key in redis.scan_iter(match=f"{topic_prefix}:*"):
            await redis.delete(key)
        await redis.aclose()
