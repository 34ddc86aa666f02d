"""Fixtures for the audit tests: a deployment folder, the CLI's environment, a raw producer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from schemas.topics import Topics
from shardbus.audit.chain import load_signing_key
from shardbus.cli.main import main
from shardbus.crypto.signing import SigningKey
from shardbus.deployment import init_deployment


@dataclass
class AuditDeployment:
    """A deployment folder made by `shardbus init`, and the CLI environment pointing at it."""

    home: Path
    topics: Topics
    bootstrap: str
    key: SigningKey

    async def cli(self, *argv: str) -> int:
        """Run `shardbus audit ...` in a thread (the CLI runs its own event loop) and return its exit status."""
        return await asyncio.to_thread(main, ["audit", *argv])


@pytest.fixture
def audit_deployment(tmp_path, monkeypatch, kafka_bootstrap, topic_prefix, kafka_admin) -> AuditDeployment:
    """A deployment for this test's topic prefix; its topics are deleted afterwards."""
    home = tmp_path / "deployment"
    init_deployment(home)
    monkeypatch.setenv("SHARDBUS_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SHARDBUS_TOPIC_PREFIX", topic_prefix)
    monkeypatch.setenv("SHARDBUS_HOME", str(home))
    return AuditDeployment(home, Topics(topic_prefix), kafka_bootstrap, load_signing_key(home / "audit.key"))


@pytest.fixture
async def raw_producer(kafka_bootstrap) -> AsyncIterator[AIOKafkaProducer]:
    """A plain aiokafka producer, as an attacker with write access to the topics would use."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()
