"""The demo command runs end to end against the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_demo_runs_whole_scenario(kafka_bootstrap, redis_url, tmp_path):
    env = dict(
        os.environ,
        SHARDBUS_KAFKA_BOOTSTRAP=kafka_bootstrap,
        SHARDBUS_REDIS_URL=redis_url,
        SHARDBUS_DEMO_DIR=str(tmp_path),
    )

    result = subprocess.run(
        [sys.executable, "-m", "shardbus.demo"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("matches what was stored: True") == 3, result.stdout
    assert "denied: not_granted" in result.stdout
    assert "holder_torn_down" in result.stdout


def test_demo_without_stack_says_how_to_start_it():
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHARDBUS_")}

    result = subprocess.run(
        [sys.executable, "-m", "shardbus.demo"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "SHARDBUS_KAFKA_BOOTSTRAP is not set" in result.stderr
    assert "scripts/stack up" in result.stderr
