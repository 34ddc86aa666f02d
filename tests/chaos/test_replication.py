"""Topics get the configured replication, and a factor the cluster cannot give is rejected."""

from __future__ import annotations

import pytest

from shardbus.errors import ConfigError
from shardbus.kafka import REPLICATION_ENV, configured_replication, ensure_topics


def test_replication_unset_is_none() -> None:
    assert configured_replication({}) is None
    assert configured_replication({REPLICATION_ENV: " "}) is None


def test_replication_read_from_env() -> None:
    assert configured_replication({REPLICATION_ENV: "3"}) == 3


@pytest.mark.parametrize("raw", ["0", "-1", "three", "2.5"])
def test_replication_invalid_rejected(raw: str) -> None:
    with pytest.raises(ConfigError, match=REPLICATION_ENV):
        configured_replication({REPLICATION_ENV: raw})


async def _replicas(kafka_admin, topic: str) -> int:
    described = await kafka_admin.admin.describe_topics([topic])
    return len(described[0]["partitions"][0]["replicas"])


@pytest.mark.integration
async def test_default_replication_follows_brokers(kafka_bootstrap, kafka_admin, topic_prefix, monkeypatch) -> None:
    monkeypatch.delenv(REPLICATION_ENV, raising=False)
    topic = f"{topic_prefix}.replicated"

    await ensure_topics(kafka_bootstrap, [topic])

    assert await _replicas(kafka_admin, topic) == kafka_admin.default_replication


@pytest.mark.integration
async def test_replication_beyond_brokers_rejected(kafka_bootstrap, kafka_admin, topic_prefix, monkeypatch) -> None:
    monkeypatch.setenv(REPLICATION_ENV, "9")

    with pytest.raises(ConfigError, match="at most the number of brokers"):
        await ensure_topics(kafka_bootstrap, [f"{topic_prefix}.too-many"])
