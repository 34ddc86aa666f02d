"""The demo command: its plaintext mode end to end, and the commands it names when the stack is missing.

The default mode, mutual TLS, runs end to end in tests/security/test_demo_tls.py
on a private TLS stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardbus import demo_access
from shardbus.certs.folder import TlsFolder
from shardbus.certs.principals import SERVICE_ROLES
from shardbus.config import Settings
from shardbus.demo import service_group
from shardbus.demo_access import DemoAccess

ROOT = Path(__file__).resolve().parents[2]

TLS_VARIABLES = ("SHARDBUS_KAFKA_TLS_CA", "SHARDBUS_KAFKA_TLS_CERT", "SHARDBUS_KAFKA_TLS_KEY")


def _env_without_stack(**variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHARDBUS_")}
    env.update(variables)
    return env


def _run_demo(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shardbus.demo", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.integration
@pytest.mark.slow
def test_demo_plaintext_runs_whole_scenario(kafka_bootstrap, redis_url, tmp_path):
    env = _env_without_stack(SHARDBUS_KAFKA_BOOTSTRAP=kafka_bootstrap, SHARDBUS_REDIS_URL=redis_url,
                             SHARDBUS_DEMO_DIR=str(tmp_path))

    result = _run_demo(env, "--plaintext", timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"running in plaintext: Kafka at {kafka_bootstrap}" in result.stdout
    assert "warning: --plaintext is a development option" in result.stderr
    assert "without TLS, authentication or ACLs" in result.stderr
    assert result.stdout.count("matches what was stored: True") == 3
    assert "denied: not_granted" in result.stdout
    assert "no ACL keeps intruder from reading" in result.stdout
    assert "holder_torn_down" in result.stdout
    assert "mutual TLS" not in result.stdout


def test_demo_without_stack_names_tls_commands():
    result = _run_demo(_env_without_stack())

    assert result.returncode == 1
    assert "SHARDBUS_KAFKA_BOOTSTRAP" in result.stderr
    assert "run scripts/demo, which starts the TLS stack" in result.stderr
    assert 'scripts/stack up --tls && eval "$(scripts/stack env --tls)"' in result.stderr


def test_tls_demo_lists_missing_variables():
    env = _env_without_stack(SHARDBUS_KAFKA_BOOTSTRAP="127.0.0.1:19092",
                             SHARDBUS_REDIS_URL="redis://127.0.0.1:16379/0")

    result = _run_demo(env)

    assert result.returncode == 1
    for variable in ("SHARDBUS_TLS_DIR", *TLS_VARIABLES, "SHARDBUS_REDIS_ADMIN_URL"):
        assert variable in result.stderr
    assert "SHARDBUS_KAFKA_BOOTSTRAP" not in result.stderr.partition(" not set")[0]
    assert 'eval "$(scripts/stack env --tls)"' in result.stderr
    assert "scripts/demo --plaintext runs without TLS" in result.stderr


def test_demo_missing_tls_file_reported(tmp_path):
    env = _env_without_stack(
        SHARDBUS_KAFKA_BOOTSTRAP="127.0.0.1:19592", SHARDBUS_TLS_DIR=str(tmp_path),
        SHARDBUS_KAFKA_TLS_CA=str(tmp_path / "ca.pem"), SHARDBUS_KAFKA_TLS_CERT=str(tmp_path / "admin.pem"),
        SHARDBUS_KAFKA_TLS_KEY=str(tmp_path / "admin.key"), SHARDBUS_REDIS_ADMIN_URL="unix:///nonexistent.sock",
    )

    result = _run_demo(env)

    assert result.returncode == 1
    assert f"SHARDBUS_KAFKA_TLS_CA={tmp_path / 'ca.pem'} does not exist" in result.stderr
    assert "scripts/stack up --tls" in result.stderr


def test_demo_unreachable_broker_reported(tmp_path, unused_tcp_port):
    folder = TlsFolder(tmp_path / "tls")
    authority, _ = folder.create_ca()
    files, _ = folder.ensure_identity(authority, "admin")
    env = _env_without_stack(
        SHARDBUS_KAFKA_BOOTSTRAP=f"127.0.0.1:{unused_tcp_port}", SHARDBUS_TLS_DIR=str(folder.path),
        SHARDBUS_REDIS_ADMIN_URL=f"unix://admin:redis-password-1@{tmp_path / 'redis.sock'}?db=0",
        SHARDBUS_DEMO_DIR=str(tmp_path / "demo"), **files.environment(),
    )

    result = _run_demo(env)

    assert result.returncode == 1
    assert f"cannot reach Kafka at 127.0.0.1:{unused_tcp_port}" in result.stderr
    assert "is the stack running? run scripts/demo, which starts the TLS stack" in result.stderr
    assert "redis-password-1" not in result.stderr


def test_plaintext_demo_without_stack():
    result = _run_demo(_env_without_stack(), "--plaintext")

    assert result.returncode == 1
    assert "SHARDBUS_KAFKA_BOOTSTRAP, SHARDBUS_REDIS_URL are not set" in result.stderr
    assert 'scripts/stack up && eval "$(scripts/stack env)"' in result.stderr


def test_plaintext_demo_rejects_tls_settings(tmp_path):
    env = _env_without_stack(SHARDBUS_KAFKA_BOOTSTRAP="127.0.0.1:19092",
                             SHARDBUS_REDIS_URL="redis://127.0.0.1:16379/0",
                             SHARDBUS_KAFKA_TLS_CA=str(tmp_path / "ca.pem"))

    result = _run_demo(env, "--plaintext")

    assert result.returncode == 1
    assert "--plaintext was given, but SHARDBUS_KAFKA_TLS_CA is set" in result.stderr


def test_demo_accepts_microvm_backend():
    for mode in ([], ["--plaintext"]):
        result = _run_demo(_env_without_stack(), "--backend", "microvm", *mode)

        # Past argument parsing, the demo stops at the missing stack settings.
        assert result.returncode == 1, result.stderr
        assert "demo failed:" in result.stderr


def _tls_access(tmp_path: Path) -> DemoAccess:
    base_env = {"SHARDBUS_KAFKA_BOOTSTRAP": "127.0.0.1:19592", "SHARDBUS_TOPIC_PREFIX": "demo1",
                "SHARDBUS_HOME": str(tmp_path), "SHARDBUS_TLS_DIR": str(tmp_path / "tls")}
    role_env = {role: {"SHARDBUS_KAFKA_TLS_CERT": f"/tls/demo1.{role}.pem",
                       "SHARDBUS_REDIS_URL": f"unix://demo1.{role}:pw@/redis.sock"} for role in SERVICE_ROLES}
    return DemoAccess(True, Settings.from_env(base_env), base_env, role_env)


def test_service_group_wires_microvm_backend(tmp_path):
    group = service_group(_tls_access(tmp_path), tmp_path / "logs", "microvm")

    assert group.service_args["provisioner"] == ["--backend", "microvm", "--pool-size", "5"]


def test_service_group_uses_role_identities(tmp_path):
    group = service_group(_tls_access(tmp_path), tmp_path / "logs", "process")

    assert group.service_args["provisioner"] == ["--backend", "process"]
    assert set(group.service_env) == {"provisioner", "authorizer", "reassembler"}
    for role, env in group.service_env.items():
        assert env["SHARDBUS_KAFKA_TLS_CERT"] == f"/tls/demo1.{role}.pem"
        assert env["SHARDBUS_REDIS_URL"].startswith(f"unix://demo1.{role}:")
    assert "SHARDBUS_KAFKA_TLS_CERT" not in group.env


def test_tls_access_hides_admin_identity(tmp_path, monkeypatch):
    folder = TlsFolder(tmp_path / "tls")
    authority, _ = folder.create_ca()
    identities = {name: folder.ensure_identity(authority, name)[0] for name in ("admin", "demo1.controller")}
    calls = {}

    def set_up(base_env, admin_env, *, report=None):
        calls.update(base=dict(base_env), admin=dict(admin_env))
        # Every role gets the controller's files here; only the controller's are read.
        return {role: {**identities["demo1.controller"].environment(),
                       "SHARDBUS_REDIS_URL": f"unix://demo1.{role}:role-password@/redis.sock"}
                for role in SERVICE_ROLES}

    monkeypatch.setattr(demo_access, "set_up_deployment_tls", set_up)
    admin_url = "unix://admin:admin-password@/redis.sock"
    environ = {"SHARDBUS_KAFKA_BOOTSTRAP": "127.0.0.1:19592", "SHARDBUS_TLS_DIR": str(folder.path),
               "SHARDBUS_REDIS_ADMIN_URL": admin_url, "SHARDBUS_REDIS_URL": admin_url,
               **identities["admin"].environment()}
    admin = Settings.from_env({**environ, "SHARDBUS_TOPIC_PREFIX": "demo1", "SHARDBUS_HOME": str(tmp_path)})

    access = demo_access.tls_access(admin, environ)

    for env in (calls["base"], access.service_base_env, access.controller_env()):
        assert "SHARDBUS_REDIS_ADMIN_URL" not in env
        assert env.get("SHARDBUS_KAFKA_TLS_CERT") != str(identities["admin"].certificate)
        assert "admin-password" not in env.get("SHARDBUS_REDIS_URL", "")
    assert calls["admin"]["SHARDBUS_KAFKA_TLS_CERT"] == str(identities["admin"].certificate)
    assert calls["admin"]["SHARDBUS_REDIS_ADMIN_URL"] == admin_url
    assert calls["admin"]["SHARDBUS_TOPIC_PREFIX"] == "demo1"
    assert access.controller.kafka_tls.certificate == identities["demo1.controller"].certificate
    assert access.controller.redis_url == "unix://demo1.controller:role-password@/redis.sock"
    assert access.registry_redis_url == admin_url
