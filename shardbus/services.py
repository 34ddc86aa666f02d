"""Start and stop the shardbus services as child processes.

The demo and the end-to-end tests run the provisioner, the authorizer and
the reassembler exactly as a deployment would (`python -m ...`), each with
its own log file, and wait for each to report ready (see `readiness`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shardbus.errors import ServiceUnavailable
from shardbus.readiness import READY_FILE_ENV

#: The services in start order: holders must exist before requests flow.
SERVICES = {
    "provisioner": ["-m", "provisioner"],
    "authorizer": ["-m", "streams.authorizer"],
    "reassembler": ["-m", "streams.reassembler"],
}


@dataclass
class ServiceGroup:
    """The three services of one deployment, started with the same environment.

    `service_env` adds variables for one service only, such as the Kafka
    certificate and the Redis user of its role in a TLS deployment.
    """

    env: dict[str, str]
    log_dir: Path
    ready_timeout_s: float = 90.0
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The provisioner's SHARDBUS_HOLDERS_ON_STOP when `env` does not set it.
    #: The demo, the tests and the benchmarks run throwaway deployments, so
    #: their holders are torn down when the provisioner stops.
    holders_on_stop: str = "teardown"
    #: Extra command-line arguments per service name, such as
    #: ``{"provisioner": ["--backend", "microvm"]}``.
    service_args: dict[str, list[str]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, names: list[str] | None = None) -> None:
        """Start each named service (default: all) and wait until every one is ready."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names or list(SERVICES):
            self.start_one(name)
        for name in names or list(SERVICES):
            self.wait_ready(name)

    def start_one(self, name: str) -> subprocess.Popen:
        ready_file = self.log_dir / f"{name}.ready"
        ready_file.unlink(missing_ok=True)
        env = dict(self.env)
        env.update(self.service_env.get(name, {}))
        env[READY_FILE_ENV] = str(ready_file)
        env.setdefault("SHARDBUS_HOLDERS_ON_STOP", self.holders_on_stop)
        # One instance of each service per group, so a fixed id is unique, and
        # a service started again after kill() rejoins its group at once.
        env.setdefault("SHARDBUS_INSTANCE_ID", "1")
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen(
            [sys.executable, *SERVICES[name], *self.service_args.get(name, [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        return process

    def wait_ready(self, name: str) -> None:
        process = self.processes[name]
        ready_file = self.log_dir / f"{name}.ready"
        deadline = time.monotonic() + self.ready_timeout_s
        while not ready_file.exists():
            if process.poll() is not None:
                raise ServiceUnavailable(
                    f"the {name} exited with status {process.returncode} while starting; "
                    f"see {self.log_dir / (name + '.log')}:\n{self.log_tail(name)}"
                )
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"the {name} was not ready after {self.ready_timeout_s:g} s; "
                    f"see {self.log_dir / (name + '.log')}:\n{self.log_tail(name)}"
                )
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, name: str) -> None:
        """Kill a service's main process with SIGKILL, as a crash would.

        Only that process dies: holders the provisioner started live on.
        """
        process = self.processes[name]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        """Stop every service: SIGTERM, then SIGKILL after a bound."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        self.processes.clear()

    def __enter__(self) -> ServiceGroup:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
