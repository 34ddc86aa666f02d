"""The demo's default mode: every step over mutual TLS and ACLs, on the private TLS stack."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# A bound on one whole demo run on a loaded machine, not an expected time.
DEMO_TIMEOUT_S = 900


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SHARDBUS_")}
    env["SHARDBUS_DEMO_DIR"] = str(tmp_path / "demo")
    return env


def _check_tls_output(stdout: str, bootstrap: str) -> None:
    assert f"running with mutual TLS and ACLs: Kafka at {bootstrap}" in stdout
    assert "$ shardbus certs init" in stdout
    assert "$ shardbus certs acl apply" in stdout
    assert stdout.count("matches what was stored: True") == 3
    assert "denied: not_granted" in stdout
    assert re.search(r"intruder's certificate cannot read demo\w+\.replies\.billing: "
                     r"the broker returned TopicAuthorizationFailed", stdout)
    assert re.search(r"holder holder-\w+ is principal demo\w+\.holder\.holder-\w+ with 5 ACLs: "
                     r"read demo\w+\.holder\.holder-\w+; write ", stdout)
    assert re.search(r"its certificate, issued by the provisioner, expires in \d+\.\d h", stdout)
    assert "holder_torn_down" in stdout


def test_demo_runs_over_mutual_tls(tls_stack, tmp_path):
    env = {**_clean_env(tmp_path), **tls_stack.exports}

    result = subprocess.run([sys.executable, "-m", "shardbus.demo"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=DEMO_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    _check_tls_output(result.stdout, tls_stack.bootstrap)
    assert "warning:" not in result.stderr
    assert "done." in result.stdout


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                    reason="scripts/demo runs in .venv, which scripts/test and scripts/demo create")
def test_demo_script_finds_tls_stack(tls_stack, tmp_path):
    # Only the stack's folder and ports are given: scripts/demo runs
    # `scripts/stack up --tls`, which finds the running stack and prints its settings.
    env = {**_clean_env(tmp_path), **tls_stack.stack_env}

    result = subprocess.run([str(ROOT / "scripts" / "demo")], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=DEMO_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    _check_tls_output(result.stdout, tls_stack.bootstrap)
    stack_dir = tls_stack.stack_env["SHARDBUS_TLS_STACK_DIR"]
    assert f"stop it with SHARDBUS_TLS_STACK_DIR={stack_dir} scripts/stack down --tls" in result.stderr
