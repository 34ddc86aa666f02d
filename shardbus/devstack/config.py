"""Settings of the development stack, read from the environment.

Every port, folder and timeout can be changed with an environment variable,
so a second stack (a test's, or a colleague's on a shared host) can run beside
the first one without touching it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shardbus.devstack.errors import StackError

DEFAULT_KAFKA_VERSION = "4.1.1"
# The Kafka 4.1 line is built against log4j 2.24.3, so the SLF4J binding
# added to its classpath comes from the same log4j release.
LOG4J_VERSION = "2.24.3"
# The published Kafka pom resolves slf4j-api 1.7, which ignores the SLF4J 2
# binding above, so the generated pom pins an SLF4J 2 API jar.
SLF4J_VERSION = "2.0.17"
MIN_JAVA_MAJOR = 17

SINGLE_HEAP = "512m"
CLUSTER_HEAP = "384m"
CLUSTER_SIZE = 3


@dataclass(frozen=True)
class KafkaNode:
    """One combined broker and controller process."""

    #: Name of its pid file and log file ("kafka", "kafka-cluster-2").
    name: str
    #: Folder under the stack's kafka/ folder for its configuration and data.
    folder: str
    node_id: int
    broker_port: int
    controller_port: int
    heap: str


@dataclass(frozen=True)
class StackConfig:
    """Folders, ports and timeouts of one stack."""

    state_dir: Path
    cache_dir: Path
    kafka_version: str
    single: KafkaNode
    cluster: tuple[KafkaNode, ...]
    redis_port: int
    kafka_timeout: float
    cluster_timeout: float
    redis_timeout: float
    stop_timeout: float

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.state_dir / "pids"

    @property
    def kafka_home(self) -> Path:
        """Cache folder of the configured Kafka version: its pom, Maven log and jars."""
        return self.cache_dir / f"kafka-{self.kafka_version}"

    def nodes(self, cluster: bool) -> tuple[KafkaNode, ...]:
        return self.cluster if cluster else (self.single,)

    def bootstrap(self, cluster: bool) -> str:
        return ",".join(f"127.0.0.1:{node.broker_port}" for node in self.nodes(cluster))

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def exports(self, cluster: bool) -> dict[str, str]:
        """Return the variables that tests and services read to find the stack."""
        return {
            "SHARDBUS_KAFKA_BOOTSTRAP": self.bootstrap(cluster),
            "SHARDBUS_REDIS_URL": self.redis_url,
        }


def load_config(environ: Mapping[str, str] | None = None) -> StackConfig:
    """Read the stack settings from `environ` (the process environment by default).

    Raises StackError naming the variable when a value is not valid.
    """
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or Path.home())

    state_dir = Path(env.get("SHARDBUS_STACK_DIR") or home / ".local/state/shardbus/stack")
    cache_root = Path(env.get("XDG_CACHE_HOME") or home / ".cache")

    kafka_port = _port(env, "SHARDBUS_KAFKA_PORT", 19092)
    controller_port = _port(env, "SHARDBUS_KAFKA_CONTROLLER_PORT", 19093)
    single = KafkaNode("kafka", "single", 1, kafka_port, controller_port, SINGLE_HEAP)

    cluster_ports = _port_list(env, "SHARDBUS_KAFKA_CLUSTER_PORTS", (19192, 19292, 19392))
    cluster = tuple(
        KafkaNode(f"kafka-cluster-{index}", f"cluster-{index}", index, port, port + 1, CLUSTER_HEAP)
        for index, port in enumerate(cluster_ports, start=1)
    )

    kafka_timeout = _seconds(env, "SHARDBUS_KAFKA_START_TIMEOUT", 60.0)
    config = StackConfig(
        state_dir=state_dir.expanduser().absolute(),
        cache_dir=(cache_root.expanduser() / "shardbus").absolute(),
        kafka_version=env.get("SHARDBUS_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION,
        single=single,
        cluster=cluster,
        redis_port=_port(env, "SHARDBUS_REDIS_PORT", 16379),
        kafka_timeout=kafka_timeout,
        # Three JVMs that start at once compete for the CPU, so the cluster waits longer.
        cluster_timeout=_seconds(env, "SHARDBUS_KAFKA_START_TIMEOUT", 120.0),
        redis_timeout=_seconds(env, "SHARDBUS_REDIS_START_TIMEOUT", 10.0),
        stop_timeout=_seconds(env, "SHARDBUS_STACK_STOP_TIMEOUT", 30.0),
    )
    _check_distinct_ports(config)
    return config


def port_variable(config: StackConfig, port: int) -> str:
    """Return the environment variable that sets `port`, for error messages."""
    if port == config.single.broker_port:
        return "SHARDBUS_KAFKA_PORT"
    if port == config.single.controller_port:
        return "SHARDBUS_KAFKA_CONTROLLER_PORT"
    if port == config.redis_port:
        return "SHARDBUS_REDIS_PORT"
    return "SHARDBUS_KAFKA_CLUSTER_PORTS"


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    return _parse_port(name, raw)


def _parse_port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name} must be a port number, got {raw!r}") from None
    # The cluster uses port + 1 for each controller, so 65535 cannot be a broker port.
    if not 1024 <= port <= 65534:
        raise StackError(f"{name} must be between 1024 and 65534, got {port}")
    return port


def _port_list(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name)
    if not raw:
        return default
    ports = tuple(_parse_port(name, part.strip()) for part in raw.split(","))
    if len(ports) != CLUSTER_SIZE:
        raise StackError(
            f"{name} must list {CLUSTER_SIZE} broker ports separated by commas, got {raw!r}"
        )
    return ports


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StackError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise StackError(f"{name} must be a positive number of seconds, got {value}")
    return value


def _check_distinct_ports(config: StackConfig) -> None:
    owners: dict[int, str] = {}
    named = [
        (config.single.broker_port, "SHARDBUS_KAFKA_PORT"),
        (config.single.controller_port, "SHARDBUS_KAFKA_CONTROLLER_PORT"),
        (config.redis_port, "SHARDBUS_REDIS_PORT"),
    ]
    for node in config.cluster:
        named.append((node.broker_port, "SHARDBUS_KAFKA_CLUSTER_PORTS"))
        named.append((node.controller_port, "SHARDBUS_KAFKA_CLUSTER_PORTS (port + 1)"))
    for port, variable in named:
        if port in owners:
            raise StackError(
                f"port {port} is set twice, by {owners[port]} and by {variable}; "
                "give each service its own port"
            )
        owners[port] = variable
