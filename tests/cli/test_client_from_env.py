"""ShardbusClient.from_env reads the same settings as the CLI."""

from __future__ import annotations

import pytest

from shardbus import deployment
from shardbus.client import ShardbusClient
from shardbus.errors import ConfigError


def test_client_from_env_uses_prefix_and_key(tmp_path, monkeypatch):
    deployment.init_deployment(tmp_path)
    deployment.add_app(tmp_path, "billing", ["db/*"])
    monkeypatch.setenv("SHARDBUS_HOME", str(tmp_path))
    monkeypatch.setenv("SHARDBUS_TOPIC_PREFIX", "acme")
    monkeypatch.setenv("SHARDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    client = ShardbusClient.from_env("billing")
    assert client._topics.replies("billing") == "acme.replies.billing"
    assert client._bootstrap == "127.0.0.1:1"


def test_client_from_env_missing_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDBUS_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="cannot read signing key"):
        ShardbusClient.from_env("nobody")
