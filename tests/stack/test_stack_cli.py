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


def run_module(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the stack with this interpreter directly, for environments without bash on PATH."""
    env = dict(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "shardbus.devstack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
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


# A stand-in for java that reports version 17. Run as the storage tool
# ("format") or as the broker ("broker"), it succeeds, exits with status 3
# ("exit") or never returns ("hang"), as the test requests. It opens no port, so
# a hanging broker never passes the readiness check.
FAKE_JAVA = """#!{python}
import sys, time

arguments = sys.argv[1:]
if arguments == ["-version"]:
    print('openjdk version "17.0.99" 2025-01-21', file=sys.stderr)
    sys.exit(0)
role = "format" if "kafka.tools.StorageTool" in arguments else "broker"
behaviour = {behaviours!r}.get(role, "succeed")
if behaviour == "exit":
    print(f"fake {{role}} failed on purpose", flush=True)
    sys.exit(3)
if behaviour == "hang":
    print(f"fake {{role}} hangs on purpose", flush=True)
    while True:
        time.sleep(60)
"""

FAKE_KAFKA_VERSION = "0.0.0-fake"


def fake_java_env(tmp_path: Path, **behaviours: str) -> dict[str, str]:
    """Return a private stack environment whose Kafka runs the fake java above.

    The jar cache is an empty folder marked complete, so no Maven runs.
    """
    java_home = tmp_path / "jdk"
    (java_home / "bin").mkdir(parents=True)
    java = java_home / "bin" / "java"
    java.write_text(FAKE_JAVA.format(python=sys.executable, behaviours=behaviours))
    java.chmod(0o755)
    libs = tmp_path / "cache" / "shardbus" / f"kafka-{FAKE_KAFKA_VERSION}" / "libs"
    libs.mkdir(parents=True)
    (libs / ".complete").write_text("")
    return stack_env(
        tmp_path / "stack",
        JAVA_HOME=str(java_home),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        SHARDBUS_KAFKA_VERSION=FAKE_KAFKA_VERSION,
        # Redis is real here and may start slowly on a busy machine.
        SHARDBUS_REDIS_START_TIMEOUT="120",
    )


def processes_mentioning(text: str) -> list[int]:
    """Return the pids of live processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def assert_nothing_left(env: dict[str, str]) -> None:
    state_dir = Path(env["SHARDBUS_STACK_DIR"])
    assert read_pids(state_dir) == {}
    # Every Kafka command line names a file in the state folder. Redis
    # rewrites its command line, so its port shows whether it still runs.
    assert processes_mentioning(str(state_dir)) == []
    for variable in ("SHARDBUS_KAFKA_PORT", "SHARDBUS_KAFKA_CONTROLLER_PORT", "SHARDBUS_REDIS_PORT"):
        assert port_free(int(env[variable])), variable


@pytest.mark.integration
def test_up_broker_exit_names_port_and_log(tmp_path):
    env = fake_java_env(tmp_path, broker="exit")
    log = Path(env["SHARDBUS_STACK_DIR"]) / "logs" / "kafka.log"

    result = run_module(env, "up", timeout=300)

    assert result.returncode == 1, result.stderr
    assert "starting redis on" in result.stderr
    assert (
        f"stack: error: kafka exited with status 3 during start-up (127.0.0.1:{env['SHARDBUS_KAFKA_PORT']})"
        in result.stderr
    )
    assert f"Last lines of {log}:\nfake broker failed on purpose" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_left(env)


@pytest.mark.integration
def test_up_silent_broker_times_out(tmp_path):
    env = fake_java_env(tmp_path, broker="hang")
    env["SHARDBUS_KAFKA_START_TIMEOUT"] = "2"
    log = Path(env["SHARDBUS_STACK_DIR"]) / "logs" / "kafka.log"

    result = run_module(env, "up", timeout=300)

    assert result.returncode == 1, result.stderr
    assert "starting redis on" in result.stderr
    assert (
        f"stack: error: kafka timed out: no ready response on 127.0.0.1:{env['SHARDBUS_KAFKA_PORT']} within 2 s"
        in result.stderr
    )
    assert "raise SHARDBUS_KAFKA_START_TIMEOUT if it is only slow" in result.stderr
    assert f"Last lines of {log}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_left(env)


def test_up_format_timeout_names_node_and_log(tmp_path):
    env = fake_java_env(tmp_path, format="hang")
    env["SHARDBUS_KAFKA_FORMAT_TIMEOUT"] = "2"
    state_dir = Path(env["SHARDBUS_STACK_DIR"])

    result = run_module(env, "up", timeout=300)

    assert result.returncode == 1, result.stderr
    assert (
        f"stack: error: formatting the KRaft storage of kafka in {state_dir / 'kafka' / 'single' / 'data'} "
        "timed out after 2 s (raise SHARDBUS_KAFKA_FORMAT_TIMEOUT if it is only slow)"
    ) in result.stderr
    assert f"last lines of {state_dir / 'logs' / 'kafka.log'}:" in result.stderr
    assert "Traceback" not in result.stderr
    # Storage is formatted before anything starts.
    assert "starting" not in result.stderr
    assert_nothing_left(env)


def test_up_format_failure_shows_log(tmp_path):
    env = fake_java_env(tmp_path, format="exit")
    log = Path(env["SHARDBUS_STACK_DIR"]) / "logs" / "kafka.log"

    result = run_module(env, "up", timeout=300)

    assert result.returncode == 1, result.stderr
    assert "stack: error: formatting the KRaft storage of kafka in " in result.stderr
    assert f"failed (exit status 3); last lines of {log}:\nfake format failed on purpose" in result.stderr
    assert_nothing_left(env)


def test_up_without_installable_redis_names_command(tmp_path):
    # PATH holds only an apt-get that cannot find the package, so neither
    # redis-server nor sudo is found, whether the suite runs as root or not.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt_get = bin_dir / "apt-get"
    apt_get.write_text("#!/bin/sh\necho 'E: Unable to locate package redis-server'\nexit 100\n")
    apt_get.chmod(0o755)
    env = fake_java_env(tmp_path)
    env["PATH"] = str(bin_dir)

    result = run_module(env, "up", timeout=300)

    assert result.returncode == 1, result.stderr
    assert "stack: redis-server was not found on PATH; installing Debian's redis-server package" in result.stderr
    assert "stack: error: redis-server was not found on PATH, and installing it failed: " in result.stderr
    assert "apt-get install -y redis-server" in result.stderr
    assert "Traceback" not in result.stderr
    assert "starting" not in result.stderr
    assert_nothing_left(env)


@pytest.mark.integration
@pytest.mark.slow
def test_up_installs_missing_redis(private_stack, tmp_path):
    # The fake apt-get "installs" redis-server as a link to the real one and
    # prints to its standard output, which must not mix with the exports.
    real_redis = shutil.which("redis-server")
    java = Path(os.path.realpath(shutil.which("java")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt_get = bin_dir / "apt-get"
    apt_get.write_text(
        "#!/bin/sh\n"
        'echo "fake apt-get $*"\n'
        f'[ "$1" = install ] && /bin/ln -s {real_redis} {bin_dir / "redis-server"}\n'
        "exit 0\n"
    )
    apt_get.chmod(0o755)
    # A passwordless sudo, for when the suite does not run as root.
    sudo = bin_dir / "sudo"
    sudo.write_text('#!/bin/sh\n[ "$1" = -n ] && shift\n"$@"\n')
    sudo.chmod(0o755)
    env = dict(private_stack, PATH=str(bin_dir), JAVA_HOME=str(java.parent.parent))

    result = run_module(env, "up", timeout=300)

    assert result.returncode == 0, result.stderr
    assert "stack: redis-server was not found on PATH; installing Debian's redis-server package" in result.stderr
    assert "fake apt-get install -y -q --no-install-recommends redis-server" in result.stderr
    assert f"stack: installed {bin_dir / 'redis-server'}" in result.stderr
    assert [line.split("=")[0] for line in result.stdout.splitlines()] == [
        "export SHARDBUS_KAFKA_BOOTSTRAP",
        "export SHARDBUS_REDIS_URL",
    ]
    assert sorted(read_pids(Path(env["SHARDBUS_STACK_DIR"]))) == ["kafka", "redis"]
