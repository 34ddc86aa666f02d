"""Settings of the development stack, read from the environment.

Every port, folder and timeout can be changed with an environment variable,
so a second stack (a test's, or a colleague's on a shared host) can run beside
the first one without touching it.

The TLS stack (`load_config(tls=True)`) is a single node with its own state
folder and ports, so it runs beside the plaintext stack. Its Kafka requires
mutual TLS and ACLs on both of its listeners, and its Redis has ACL users
and listens on a Unix socket only.
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
class TlsSettings:
    """The folders of the TLS stack's certificates and Redis socket."""

    #: The TLS folder (see shardbus.certs.folder): the CA, the broker's and
    #: the admin's identities, and those `shardbus certs` issues later.
    tls_dir: Path
    redis_dir: Path

    @property
    def redis_socket(self) -> Path:
        return self.redis_dir / "redis.sock"

    @property
    def redis_password_file(self) -> Path:
        """The Redis admin user's password (mode 0600)."""
        return self.redis_dir / "admin.password"

    @property
    def redis_acl_file(self) -> Path:
        return self.redis_dir / "users.acl"


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
    #: Seconds that formatting one node's KRaft storage may take.
    format_timeout: float = 120.0
    #: Set for the TLS stack, None for the plaintext one.
    tls: TlsSettings | None = None

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
        if self.tls is not None:
            return admin_redis_url(self.tls)
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def exports(self, cluster: bool) -> dict[str, str]:
        """Return the variables that tests and services read to find the stack.

        The TLS stack's variables name the operator's admin identity, a
        super user of Kafka and Redis, which `shardbus certs` needs to
        create the ACLs of every other party.
        """
        exports = {
            "SHARDBUS_KAFKA_BOOTSTRAP": self.bootstrap(cluster),
            "SHARDBUS_REDIS_URL": self.redis_url,
        }
        if self.tls is not None:
            exports.update({
                "SHARDBUS_TLS_DIR": str(self.tls.tls_dir),
                "SHARDBUS_KAFKA_TLS_CA": str(self.tls.tls_dir / "ca.pem"),
                "SHARDBUS_KAFKA_TLS_CERT": str(self.tls.tls_dir / "admin.pem"),
                "SHARDBUS_KAFKA_TLS_KEY": str(self.tls.tls_dir / "admin.key"),
                "SHARDBUS_REDIS_ADMIN_URL": self.redis_url,
            })
        return exports


def admin_redis_url(tls: TlsSettings) -> str:
    """Return the URL of the TLS stack's Redis admin user, with the password from its file.

    Raises StackError when the file does not exist yet, before the first `up --tls`.
    """
    try:
        password = tls.redis_password_file.read_text().strip()
    except FileNotFoundError:
        raise StackError(
            f"{tls.redis_password_file} does not exist yet; run 'scripts/stack up --tls' first"
        ) from None
    return f"unix://admin:{password}@{tls.redis_socket}?db=0"


def load_config(environ: Mapping[str, str] | None = None, *, tls: bool = False) -> StackConfig:
    """Read the stack settings from `environ` (the process environment by default).

    With `tls`, return the settings of the TLS stack, which reads
    SHARDBUS_TLS_STACK_DIR, SHARDBUS_TLS_KAFKA_PORT,
    SHARDBUS_TLS_KAFKA_CONTROLLER_PORT and SHARDBUS_TLS_DIR in place of the
    plaintext stack's folder and ports. Raises StackError naming the
    variable when a value is not valid.
    """
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or Path.home())

    if tls:
        state_dir = Path(env.get("SHARDBUS_TLS_STACK_DIR") or home / ".local/state/shardbus/stack-tls")
        kafka_port = _port(env, "SHARDBUS_TLS_KAFKA_PORT", 19592)
        controller_port = _port(env, "SHARDBUS_TLS_KAFKA_CONTROLLER_PORT", 19593)
    else:
        state_dir = Path(env.get("SHARDBUS_STACK_DIR") or home / ".local/state/shardbus/stack")
        kafka_port = _port(env, "SHARDBUS_KAFKA_PORT", 19092)
        controller_port = _port(env, "SHARDBUS_KAFKA_CONTROLLER_PORT", 19093)
    state_dir = state_dir.expanduser().absolute()
    cache_root = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    single = KafkaNode("kafka", "single", 1, kafka_port, controller_port, SINGLE_HEAP)
    tls_settings = None
    if tls:
        tls_dir = Path(env.get("SHARDBUS_TLS_DIR") or state_dir / "tls").expanduser().absolute()
        tls_settings = TlsSettings(tls_dir=tls_dir, redis_dir=state_dir / "redis")

    cluster_ports = _port_list(env, "SHARDBUS_KAFKA_CLUSTER_PORTS", (19192, 19292, 19392))
    cluster = tuple(
        KafkaNode(f"kafka-cluster-{index}", f"cluster-{index}", index, port, port + 1, CLUSTER_HEAP)
        for index, port in enumerate(cluster_ports, start=1)
    )

    kafka_timeout = _seconds(env, "SHARDBUS_KAFKA_START_TIMEOUT", 60.0)
    config = StackConfig(
        state_dir=state_dir,
        cache_dir=(cache_root.expanduser() / "shardbus").absolute(),
        kafka_version=env.get("SHARDBUS_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION,
        single=single,
        cluster=cluster,
        # The TLS stack's Redis listens on a Unix socket only (port 0).
        redis_port=0 if tls else _port(env, "SHARDBUS_REDIS_PORT", 16379),
        kafka_timeout=kafka_timeout,
        # Three JVMs that start at once compete for the CPU, so the cluster waits longer.
        cluster_timeout=_seconds(env, "SHARDBUS_KAFKA_START_TIMEOUT", 120.0),
        redis_timeout=_seconds(env, "SHARDBUS_REDIS_START_TIMEOUT", 10.0),
        stop_timeout=_seconds(env, "SHARDBUS_STACK_STOP_TIMEOUT", 30.0),
        format_timeout=_seconds(env, "SHARDBUS_KAFKA_FORMAT_TIMEOUT", 120.0),
        tls=tls_settings,
    )
    _check_distinct_ports(config)
    return config


def port_variable(config: StackConfig, port: int) -> str:
    """Return the environment variable that sets `port`, for error messages."""
    if config.tls is not None:
        if port == config.single.broker_port:
            return "SHARDBUS_TLS_KAFKA_PORT"
        if port == config.single.controller_port:
            return "SHARDBUS_TLS_KAFKA_CONTROLLER_PORT"
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
        (config.single.broker_port, port_variable(config, config.single.broker_port)),
        (config.single.controller_port, port_variable(config, config.single.controller_port)),
    ]
    if config.redis_port:
        named.append((config.redis_port, "SHARDBUS_REDIS_PORT"))
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
