"""The provisioner's checks of its holder log folder, at start-up and when a holder starts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from provisioner.api import request_holders
from provisioner_harness import TEST_CONFIG, start_provisioner
from schemas.topics import Topics
from shardbus.errors import ServiceUnavailable

pytestmark = pytest.mark.integration

# Upper bound for the provisioner to exit, which only ends a test whose provisioner kept running.
EXIT_TIMEOUT_S = 60.0

REPO_ROOT = Path(__file__).resolve().parents[2]


def _unwritable_folder(tmp_path: Path) -> Path:
    # A folder below a regular file can be neither created nor written, even by root.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    return blocker / "holder-logs"


def test_unwritable_log_dir_stops_provisioner(tmp_path: Path, topic_prefix: str) -> None:
    log_dir = _unwritable_folder(tmp_path)
    env = {**os.environ, "SHARDBUS_HOME": str(tmp_path / "deployment"), "SHARDBUS_TOPIC_PREFIX": topic_prefix}

    result = subprocess.run(
        [sys.executable, "-m", "provisioner", "--log-dir", str(log_dir)], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=EXIT_TIMEOUT_S,
    )

    assert result.returncode == 1, result.stderr
    assert f"cannot create or write the holder log folder {log_dir}" in result.stderr
    assert "--log-dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_redis_stops_provisioner(tmp_path: Path, topic_prefix: str) -> None:
    env = {
        **os.environ,
        "SHARDBUS_HOME": str(tmp_path / "deployment"),
        "SHARDBUS_TOPIC_PREFIX": topic_prefix,
        "SHARDBUS_REDIS_URL": "redis://127.0.0.1:1/0",  # Nothing listens on port 1 of the loopback address.
    }

    result = subprocess.run(
        [sys.executable, "-m", "provisioner", "--log-dir", str(tmp_path / "holder-logs")], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=EXIT_TIMEOUT_S,
    )

    assert result.returncode == 1, result.stderr
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "check SHARDBUS_REDIS_URL" in result.stderr


async def test_failed_holder_start_replies_error(
    kafka_bootstrap: str, kafka_admin, redis: Redis, topic_prefix: str, tmp_path: Path
) -> None:
    # The folder breaks after start-up, so only the holder start finds out.
    config = dataclasses.replace(TEST_CONFIG, pool_size=0)
    running = await start_provisioner(kafka_bootstrap, redis, Topics(topic_prefix), _unwritable_folder(tmp_path),
                                      config)
    try:
        with pytest.raises(ServiceUnavailable) as raised:
            await request_holders(kafka_bootstrap, running.topics, 1, "pooled", timeout_s=60)

        message = str(raised.value)
        assert "the provisioner could not provide 1 holders" in message
        assert "start failed" in message
        assert not running.task.done()
    finally:
        await running.stop()
        await running.inbox.stop()
