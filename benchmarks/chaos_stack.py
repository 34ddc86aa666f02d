"""A private Kafka cluster and Redis server that the fault injection may kill.

The shared development stack must keep running for everyone else, so the
fault scenarios that kill a broker or restart Redis run against a stack of
their own. It is `scripts/stack up --cluster` with a state folder and ports
of its own: SHARDBUS_STACK_DIR, SHARDBUS_KAFKA_CLUSTER_PORTS,
SHARDBUS_REDIS_PORT and the single node's ports, which must not clash either. Each node is a
combined broker and controller; topics get 3 replicas and need 2 in sync.

Processes are found through the stack's pid files and signalled only after
their command line is checked, as `scripts/stack down` does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import random
import subprocess
import tempfile
import time
from pathlib import Path

from shardbus.devstack import processes
from shardbus.devstack.config import StackConfig, load_config
from shardbus.devstack.stack import kafka_service, redis_service

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_SCRIPT = REPO_ROOT / "scripts" / "stack"

#: Maximum wait for a killed process to be gone, in seconds.
EXIT_TIMEOUT_S = 30.0

# The stack's ports, kept in its folder so that a later run can use the stack again.
_SETTINGS_FILE = "chaos-stack.json"


def free_port_pairs(count: int, *, rng: random.Random | None = None) -> list[int]:
    """Return `count` ports p such that p and p + 1 are both free now.

    A cluster node listens on its broker port and on the next one for its
    controller. The ports come from below the kernel's range of ephemeral
    ports, so that outgoing connections do not take them between this check
    and the start of the stack.
    """
    rng = rng or random.Random()
    low, high = 20000, min(_ephemeral_start(), 32768)
    found: list[int] = []
    while len(found) < count:
        port = rng.randrange(low, high - 1)
        if any(abs(port - other) < 2 for other in found):
            continue
        if not processes.port_in_use(port) and not processes.port_in_use(port + 1):
            found.append(port)
    return found


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default start of the range.


class PrivateStack:
    """A 3-node KRaft cluster and a Redis server with persistence, in a folder of their own.

    With `cluster` False the stack has one Kafka node instead, which suits
    every scenario but the broker failure.
    """

    def __init__(self, state_dir: Path | None = None, *, cluster: bool = True) -> None:
        """Use the stack in `state_dir` with the ports it was made with, or make a new one on free ports."""
        self.cluster = cluster
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="shardbus-chaos-stack-"))
        settings_file = self.state_dir / _SETTINGS_FILE
        if settings_file.exists():
            settings = json.loads(settings_file.read_text())
        else:
            single, controller_of_single, redis, *cluster = free_port_pairs(6)
            settings = {
                "SHARDBUS_STACK_DIR": str(self.state_dir),
                "SHARDBUS_KAFKA_PORT": str(single),
                "SHARDBUS_KAFKA_CONTROLLER_PORT": str(controller_of_single),
                "SHARDBUS_REDIS_PORT": str(redis),
                "SHARDBUS_KAFKA_CLUSTER_PORTS": ",".join(str(port) for port in cluster),
            }
            self.state_dir.mkdir(parents=True, exist_ok=True)
            settings_file.write_text(json.dumps(settings, indent=2))
        self.env = dict(os.environ)
        self.env.update(settings)
        self.config: StackConfig = load_config(self.env)

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap(self.cluster)

    @property
    def redis_url(self) -> str:
        return self.config.redis_url

    def up(self) -> None:
        """Start whatever part of the stack is not running, and wait until it is ready."""
        command = [str(STACK_SCRIPT), "up"] + (["--cluster"] if self.cluster else [])
        subprocess.run(command, env=self.env, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def down(self, *, remove: bool = True) -> None:
        """Stop every process of the stack, and delete its folder when `remove` is set."""
        subprocess.run([str(STACK_SCRIPT), "down"], env=self.env, check=False,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        if remove:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def broker_pid(self, node_id: int) -> int:
        """Return the pid of cluster node `node_id` (1 to 3); raise RuntimeError if it does not run."""
        if not self.cluster:
            raise RuntimeError("this private stack has a single Kafka node, so no broker can fail alone")
        service = kafka_service(self.config, self.config.cluster[node_id - 1])
        record = processes.find_running(service.pid_file, service.markers)
        if record is None:
            raise RuntimeError(f"{service.name} does not run; see {service.log_file}")
        return record.pid

    def kill_broker(self, node_id: int) -> int:
        """Kill one cluster node with SIGKILL, as a crash would; return its pid once it is gone."""
        pid = self.broker_pid(node_id)
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        return pid

    def restart_redis(self, signum: int = signal.SIGTERM) -> None:
        """Stop Redis with `signum` and start it again from its append-only file.

        SIGTERM makes Redis flush its append-only file before it exits, as a
        restart by an operator or a supervisor does. With the default
        ``appendfsync everysec``, SIGKILL could lose the last second of writes.
        """
        service = redis_service(self.config)
        record = processes.find_running(service.pid_file, service.markers)
        if record is None:
            raise RuntimeError(f"redis does not run; see {service.log_file}")
        os.kill(record.pid, signum)
        _wait_gone(record.pid)
        self.up()


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while processes.read_start_time(pid) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} still runs {EXIT_TIMEOUT_S:g} s after it was signalled")
        time.sleep(0.05)
