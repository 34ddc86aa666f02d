"""Smoke test of the load generator: a few seconds at a low rate on the real stack.

It checks that the benchmark runs and prints its table, not how fast
shardbus is: figures belong in docs/benchmarks.md, never in assertions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_load_generator_runs(kafka_bootstrap: str, redis_url: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "load.py"),
        "--bootstrap", kafka_bootstrap, "--redis-url", redis_url, "--timeout", "20",
        "rates", "--rates", "5", "--duration", "2", "--idle", "1",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "summary" in result.stdout, output
    summary = result.stdout.split("summary", 1)[1].splitlines()
    row = next(line for line in summary if line.strip().startswith("3-of-5"))
    fields = row.split()
    # policy, records, rate, leases/s: at least one lease came back.
    assert float(fields[3]) > 0, output
    assert "cpu/rss: authorizer" in result.stdout, output
