"""The stack command line: a private stack's life cycle and its error messages.

Every test here uses its own state folder and its own free ports, so it never
touches the stack that the rest of the suite runs against. The Kafka jars
come from the shared cache, which the suite's own `scripts/stack up` fills.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stack_env(state_dir: Path, **overrides: str) -> dict[str, str]:
    """Return an environment for a private stack in `state_dir` on free ports."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SHARDBUS_")
    }
    env.update(
        SHARDBUS_STACK_DIR=str(state_dir),
        SHARDBUS_KAFKA_PORT=str(free_port()),
        SHARDBUS_KAFKA_CONTROLLER_PORT=str(free_port()),
        SHARDBUS_REDIS_PORT=str(free_port()),
    )
    env.update(overrides)
    return env


def run_stack(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(STACK), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def run_module(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run the stack with this interpreter directly, for environments without bash on PATH."""
    env = dict(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "shardbus.devstack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd=ROOT,
    )


def read_pids(state_dir: Path) -> dict[str, int]:
    return {
        path.stem: int(path.read_text().split()[0])
        for path in sorted((state_dir / "pids").glob("*.pid"))
    }


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def private_stack(tmp_path):
    """A state folder and environment for a second stack; whatever it started is stopped afterwards."""
    env = stack_env(tmp_path / "stack")
    yield env
    run_stack(env, "down")


@pytest.mark.integration
@pytest.mark.slow
def test_stack_life_cycle(private_stack):
    env = private_stack
    state_dir = Path(env["SHARDBUS_STACK_DIR"])

    first = run_stack(env, "up")
    assert first.returncode == 0, first.stderr
    assert f"export SHARDBUS_KAFKA_BOOTSTRAP=127.0.0.1:{env['SHARDBUS_KAFKA_PORT']}" in first.stdout
    assert f"export SHARDBUS_REDIS_URL=redis://127.0.0.1:{env['SHARDBUS_REDIS_PORT']}/0" in first.stdout
    pids = read_pids(state_dir)
    assert sorted(pids) == ["kafka", "redis"]

    second = run_stack(env, "up")
    assert second.returncode == 0, second.stderr
    assert "started nothing" in second.stderr
    assert read_pids(state_dir) == pids

    status = run_stack(env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(" ready ") == 2, status.stdout

    assert (state_dir / "logs" / "kafka.log").stat().st_size > 0
    assert (state_dir / "redis" / "appendonlydir").is_dir()

    down = run_stack(env, "down")
    assert down.returncode == 0, down.stderr
    assert not any(process_alive(pid) for pid in pids.values())
    assert read_pids(state_dir) == {}

    after = run_stack(env, "status")
    assert after.returncode == 1
    assert after.stdout.count(" stopped ") == 2, after.stdout


def test_env_prints_exports(tmp_path):
    env = stack_env(tmp_path, SHARDBUS_KAFKA_PORT="29092", SHARDBUS_REDIS_PORT="26379")

    result = run_stack(env, "env")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "export SHARDBUS_KAFKA_BOOTSTRAP=127.0.0.1:29092",
        "export SHARDBUS_REDIS_URL=redis://127.0.0.1:26379/0",
    ]


def test_env_cluster_lists_three_brokers(tmp_path):
    env = stack_env(tmp_path, SHARDBUS_KAFKA_CLUSTER_PORTS="29192,29292,29392")

    result = run_stack(env, "env", "--cluster")

    assert result.returncode == 0, result.stderr
    expected = "export SHARDBUS_KAFKA_BOOTSTRAP=127.0.0.1:29192,127.0.0.1:29292,127.0.0.1:29392"
    assert expected in result.stdout.splitlines()


def test_up_port_taken_names_port(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = stack_env(tmp_path, SHARDBUS_KAFKA_PORT=str(port))

        result = run_stack(env, "up")

    assert result.returncode == 1
    assert f"port {port} (SHARDBUS_KAFKA_PORT) is already in use" in result.stderr
    assert read_pids(tmp_path) == {}


def test_up_without_java_says_what_to_install(tmp_path):
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    env = stack_env(tmp_path / "stack", PATH=str(empty_path))
    env.pop("JAVA_HOME", None)

    result = run_module(env, "up")

    assert result.returncode == 1
    assert "java was not found on PATH" in result.stderr
    assert "openjdk-17-jre-headless" in result.stderr


def test_up_with_java_8_is_rejected(tmp_path):
    java_home = tmp_path / "jdk8"
    (java_home / "bin").mkdir(parents=True)
    fake_java = java_home / "bin" / "java"
    fake_java.write_text('#!/bin/sh\necho \'openjdk version "1.8.0_402"\' >&2\n')
    fake_java.chmod(0o755)
    env = stack_env(tmp_path / "stack", JAVA_HOME=str(java_home))

    result = run_module(env, "up")

    assert result.returncode == 1
    assert "is Java 8, but Kafka 4 needs Java 17 or newer" in result.stderr


def test_up_without_maven_says_what_to_install(tmp_path):
    # Java is found through JAVA_HOME and PATH holds only redis-server, so
    # the empty jar cache cannot be filled.
    java = Path(os.path.realpath(shutil.which("java")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(shutil.which("redis-server"))
    env = stack_env(
        tmp_path / "stack",
        PATH=str(bin_dir),
        JAVA_HOME=str(java.parent.parent),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )

    result = run_module(env, "up")

    assert result.returncode == 1
    assert "mvn was not found on PATH" in result.stderr
    assert "apt-get install maven" in result.stderr


def test_invalid_port_variable_is_rejected(tmp_path):
    env = stack_env(tmp_path, SHARDBUS_REDIS_PORT="redis")

    result = run_stack(env, "status")

    assert result.returncode == 1
    assert "SHARDBUS_REDIS_PORT must be a port number, got 'redis'" in result.stderr


def test_down_leaves_foreign_process_alone(tmp_path):
    # A pid file whose pid now belongs to another program (here `sleep`)
    # must be dropped without signalling that program.
    env = stack_env(tmp_path)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        start_time = Path(f"/proc/{stranger.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        pid_file = tmp_path / "pids" / "kafka.pid"
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{stranger.pid}\n{start_time}\n")

        result = run_stack(env, "down")

        assert result.returncode == 0, result.stderr
        assert "removed the stale pid file without signalling anything" in result.stderr
        assert stranger.poll() is None
        assert not pid_file.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_stack_imports_only_standard_library(tmp_path):
    # `python -S` leaves site-packages off sys.path, so any third-party import
    # in the stack manager fails here, as it would before `pip install`.
    env = stack_env(tmp_path, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-S", "-m", "shardbus.devstack", "env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "SHARDBUS_KAFKA_BOOTSTRAP" in result.stdout
