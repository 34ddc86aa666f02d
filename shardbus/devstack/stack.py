"""Bring the development stack up, take it down and report its status.

`up` is idempotent: a service whose recorded process is still alive and ours
is only checked, not restarted. Every wait is bounded, and every failure
raises StackError naming the service, its port and its log file, with the
last lines of that log.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from shardbus.devstack import kafka, processes, redis_server, tls
from shardbus.devstack.config import KafkaNode, StackConfig, port_variable
from shardbus.devstack.errors import StackError
from shardbus.devstack.fetch import check_java, kafka_libs
from shardbus.devstack.probes import ProbeError, kafka_metadata, redis_ping, redis_ping_unix

Log = Callable[[str], None]
_POLL_INTERVAL = 0.25


def log_to_stderr(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Service:
    """One process of the stack: a Kafka node or Redis."""

    name: str
    #: Every port the process binds; the first one is the one clients use.
    ports: tuple[int, ...]
    pid_file: Path
    log_file: Path
    markers: tuple[str, ...]
    node: KafkaNode | None = None
    #: The Unix socket of a service without a TCP port (the TLS stack's Redis).
    socket: Path | None = None

    @property
    def port(self) -> int:
        return self.ports[0] if self.ports else 0

    @property
    def address(self) -> str:
        """Where clients connect, for messages: 127.0.0.1:PORT or the socket path."""
        return f"127.0.0.1:{self.port}" if self.ports else str(self.socket)


def kafka_service(config: StackConfig, node: KafkaNode) -> Service:
    return Service(
        name=node.name,
        ports=(node.broker_port, node.controller_port),
        pid_file=kafka.pid_file(config, node),
        log_file=kafka.log_file(config, node),
        markers=kafka.markers(config, node),
        node=node,
    )


def redis_service(config: StackConfig) -> Service:
    return Service(
        name=redis_server.NAME,
        ports=(config.redis_port,) if config.redis_port else (),
        pid_file=redis_server.pid_file(config),
        log_file=redis_server.log_file(config),
        markers=redis_server.markers(config),
        socket=config.tls.redis_socket if config.tls is not None else None,
    )


def up(
    config: StackConfig,
    cluster: bool = False,
    environ: Mapping[str, str] | None = None,
    log: Log = log_to_stderr,
) -> dict[str, str]:
    """Start whatever part of the stack is not running and wait until all of it is ready.

    Returns the environment variables that point clients at the stack.
    """
    if config.tls is not None and cluster:
        raise StackError("the TLS stack has a single node; run 'up --tls' without --cluster")
    began = time.monotonic()
    nodes = config.nodes(cluster)
    kafka_services = [kafka_service(config, node) for node in nodes]
    redis = redis_service(config)

    with _state_lock(config):
        for folder in (config.kafka_dir, config.redis_dir, config.logs_dir, config.pids_dir):
            folder.mkdir(parents=True, exist_ok=True)

        missing = [s for s in [*kafka_services, redis] if processes.find_running(s.pid_file, s.markers) is None]
        kafka_missing = [s for s in missing if s.node is not None]
        java = check_java(environ) if kafka_missing else ""
        redis_binary = redis_server.find_or_install_redis_server(environ, log) if redis in missing else ""
        _check_ports_free(config, missing)

        if config.tls is not None and missing:
            tls.prepare(config)
        libs = Path()
        if kafka_missing:
            libs = kafka_libs(config, environ, log)
            kafka.write_files(config, cluster)
            for service in kafka_missing:
                kafka.format_storage(config, service.node, cluster, java, libs)

        launched: list[_Launched] = []
        try:
            if redis in missing:
                log(f"starting redis on {redis.address} (log: {redis.log_file})")
                command = redis_server.server_command(config, redis_binary)
                launched.append(_launch(redis, command, config.redis_dir))
            for service in kafka_missing:
                log(f"starting {service.name} on {service.address} (log: {service.log_file})")
                command = kafka.broker_command(config, service.node, java, libs)
                launched.append(_launch(service, command, kafka.node_dir(config, service.node)))

            _wait_ready(
                [redis], launched, _redis_check(config), config.redis_timeout, "SHARDBUS_REDIS_START_TIMEOUT"
            )
            expected_ids = frozenset(node.node_id for node in nodes)
            kafka_timeout = config.cluster_timeout if cluster else config.kafka_timeout
            _wait_ready(
                kafka_services,
                launched,
                _kafka_check(config, expected_ids),
                kafka_timeout,
                "SHARDBUS_KAFKA_START_TIMEOUT",
            )
        except BaseException:
            # Leave the stack as it was before this run, so the next `up` starts clean.
            processes.stop([item.record for item in launched if item.record], config.stop_timeout)
            for item in launched:
                item.service.pid_file.unlink(missing_ok=True)
            raise

    took = time.monotonic() - began
    started = ", ".join(s.name for s in missing) or "nothing (all running already)"
    log(f"ready in {took:.1f} s; started {started}")
    return config.exports(cluster)


def down(config: StackConfig, cluster_only: bool = False, log: Log = log_to_stderr) -> None:
    """Stop the stack's processes, only those whose pid file and command line match."""
    services = [kafka_service(config, node) for node in config.cluster]
    if not cluster_only:
        services = [kafka_service(config, config.single), *services, redis_service(config)]

    with _state_lock(config):
        to_stop = []
        for service in services:
            record = processes.read_record(service.pid_file)
            if record is None:
                continue
            if processes.is_ours(record, service.markers):
                to_stop.append((service, record))
            else:
                log(
                    f"{service.pid_file} names pid {record.pid}, which is no longer {service.name}; "
                    "removed the stale pid file without signalling anything"
                )
                service.pid_file.unlink(missing_ok=True)

        if not to_stop:
            log("nothing to stop")
            return
        log("stopping " + ", ".join(f"{s.name} (pid {r.pid})" for s, r in to_stop))
        killed = processes.stop([record for _, record in to_stop], config.stop_timeout)
        for service, _ in to_stop:
            service.pid_file.unlink(missing_ok=True)
        if killed:
            log(f"pids {killed} ignored SIGTERM for {config.stop_timeout:.0f} s and were killed")
        log("stopped")


def status(config: StackConfig, cluster: bool = False, out=sys.stdout) -> bool:
    """Print one line per service and return whether the selected stack is ready."""
    single = kafka_service(config, config.single)
    nodes = [kafka_service(config, node) for node in config.cluster]
    redis = redis_service(config)
    selected = [*(nodes if cluster else [single]), redis]

    listed = []
    for service in [single, *nodes, redis]:
        # The other Kafka mode gets a line only when it has a pid file, so the
        # report does not list three stopped cluster nodes by default.
        if service in selected or service.pid_file.exists():
            listed.append(service)

    all_ready = True
    expected_ids = frozenset(node.node_id for node in config.nodes(cluster))
    for service in listed:
        record = processes.find_running(service.pid_file, service.markers)
        if record is None:
            state, pid = "stopped", "-"
        else:
            pid = str(record.pid)
            if service.node is None:
                check = _redis_check(config)
            elif service in selected:
                check = _kafka_check(config, expected_ids)
            else:
                check = _kafka_check(config, frozenset({service.node.node_id}))
            ready, detail = check(service)
            state = "ready" if ready else f"not answering ({detail})"
        if service in selected and state != "ready":
            all_ready = False
        print(
            f"{service.name:<16} pid {pid:<8} {service.address:<16} {state}  log: {service.log_file}",
            file=out,
        )
    return all_ready


@dataclass
class _Launched:
    service: Service
    process: subprocess.Popen
    log_offset: int
    record: processes.ProcessRecord | None


def _launch(service: Service, command: list[str], cwd: Path) -> _Launched:
    offset = processes.file_size(service.log_file)
    process = processes.start_background(command, service.log_file, cwd)
    try:
        record = processes.write_record(service.pid_file, process.pid)
    except StackError:
        record = None
    return _Launched(service, process, offset, record)


def _check_ports_free(config: StackConfig, services: list[Service]) -> None:
    problems = []
    for service in services:
        for port in service.ports:
            if processes.port_in_use(port):
                variable = port_variable(config, port)
                problems.append(
                    f"port {port} ({variable}) is already in use by another process, so "
                    f"{service.name} cannot start; stop that process (`ss -ltnp 'sport = :{port}'` "
                    f"shows which) or choose a free port with {variable}"
                )
    if problems:
        raise StackError("\n".join(problems))


def _redis_check(config: StackConfig) -> Callable[[Service], tuple[bool, str]]:
    def check(service: Service) -> tuple[bool, str]:
        try:
            if service.socket is not None:
                password = tls.redis_admin_password(config)
                reply = redis_ping_unix(service.socket, tls.ADMIN, password, timeout=1.0)
            else:
                reply = redis_ping("127.0.0.1", service.port, timeout=1.0)
        except (OSError, ProbeError) as error:
            return False, str(error) or type(error).__name__
        return reply == "PONG", f"PING returned {reply!r}"

    return check


def _kafka_check(config: StackConfig, expected_ids: frozenset[int]) -> Callable[[Service], tuple[bool, str]]:
    def check(service: Service) -> tuple[bool, str]:
        try:
            context = tls.client_context(config) if config.tls is not None else None
            metadata = kafka_metadata("127.0.0.1", service.port, timeout=2.0, ssl_context=context)
        except (OSError, ProbeError) as error:
            return False, str(error) or type(error).__name__
        if not expected_ids <= metadata.broker_ids:
            registered = sorted(metadata.broker_ids)
            return False, f"brokers {registered} registered, waiting for {sorted(expected_ids)}"
        return True, "ready"

    return check


def _wait_ready(
    services: list[Service],
    launched: list[_Launched],
    check: Callable[[Service], tuple[bool, str]],
    timeout: float,
    timeout_variable: str,
) -> None:
    """Poll each service until `check` passes; raise if one exits or the timeout passes.

    `timeout_variable` names the setting of `timeout` for the error message.
    """
    ours = {item.service.name: item for item in launched}
    pending = list(services)
    details: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for service in list(pending):
            item = ours.get(service.name)
            if item is not None and item.process.poll() is not None:
                raise StackError(
                    f"{service.name} exited with status {item.process.returncode} during start-up "
                    f"({service.address}). Last lines of {service.log_file}:\n"
                    f"{processes.tail(service.log_file, 30, item.log_offset)}"
                )
            ready, details[service.name] = check(service)
            if ready:
                pending.remove(service)
        if not pending:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)

    service = pending[0]
    offset = ours[service.name].log_offset if service.name in ours else 0
    raise StackError(
        f"{service.name} timed out: no ready response on {service.address} within {timeout:g} s "
        f"(last check: {details.get(service.name)}; raise {timeout_variable} if it is only slow). "
        f"Last lines of {service.log_file}:\n"
        f"{processes.tail(service.log_file, 30, offset)}"
    )


@contextmanager
def _state_lock(config: StackConfig) -> Iterator[None]:
    # Two `up` runs at once (two terminals, or tests started in parallel)
    # would otherwise both find a service missing and both start it.
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with open(config.state_dir / "stack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
