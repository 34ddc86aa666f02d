"""The stream services stop at start-up, with a clear message, when Redis is unreachable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardbus import deployment

# Nothing listens on port 1 of the loopback address, so Redis there refuses the connection.
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"

# Upper bound for the service to exit, which only ends a test whose service kept running.
EXIT_TIMEOUT_S = 60.0

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["streams.authorizer", "streams.reassembler"])
def test_unreachable_redis_stops_service(module, tmp_path, kafka_bootstrap, topic_prefix):
    home = tmp_path / "deployment"
    deployment.init_deployment(home)
    env = {
        **os.environ,
        "SHARDBUS_HOME": str(home),
        "SHARDBUS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SHARDBUS_TOPIC_PREFIX": topic_prefix,
        "SHARDBUS_REDIS_URL": UNREACHABLE_REDIS,
    }

    result = subprocess.run(
        [sys.executable, "-m", module], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=EXIT_TIMEOUT_S,
    )

    assert result.returncode == 1, result.stderr
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "check SHARDBUS_REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert " started" not in result.stderr
