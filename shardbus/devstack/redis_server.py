"""Installation, command line and file locations of the stack's Redis server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping

from shardbus.devstack import apt, tls
from shardbus.devstack.config import StackConfig
from shardbus.devstack.errors import StackError

NAME = "redis"
#: The Debian package that provides redis-server.
PACKAGE = "redis-server"


def find_or_install_redis_server(
    environ: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
    euid: int | None = None,
) -> str:
    """Return the redis-server on PATH, installing Debian's package first when it is missing.

    apt-get runs directly as root and through `sudo -n` otherwise. Raises
    StackError naming the command to run by hand when neither works or the
    install fails.
    """
    env = os.environ if environ is None else environ
    found = _which_redis_server(env)
    if found is not None:
        return found
    log(f"redis-server was not found on PATH; installing Debian's {PACKAGE} package")
    try:
        apt.install([PACKAGE], env, log, euid)
    except StackError as error:
        raise StackError(f"redis-server was not found on PATH, and installing it failed: {error}") from None
    found = _which_redis_server(env)
    if found is None:
        raise StackError(
            f"apt-get installed {PACKAGE}, but redis-server is still not on PATH ({env.get('PATH', '')}); "
            "add the folder that contains it (on Debian /usr/bin) to PATH"
        )
    log(f"installed {found}")
    return found


def _which_redis_server(env: Mapping[str, str]) -> str | None:
    return shutil.which("redis-server", path=env.get("PATH", os.defpath))


def log_file(config: StackConfig) -> Path:
    return config.logs_dir / f"{NAME}.log"


def pid_file(config: StackConfig) -> Path:
    return config.pids_dir / f"{NAME}.pid"


def markers(config: StackConfig) -> tuple[str, ...]:
    if config.tls is not None:
        # Without a TCP port Redis names its socket in the rewritten command line.
        return ("redis-server", str(config.tls.redis_socket))
    # Redis rewrites its command line to "redis-server 127.0.0.1:PORT" once it
    # listens, so the markers are the program name and the bare port, which
    # the command line contains both before and after that rewrite.
    return ("redis-server", str(config.redis_port))


def server_command(config: StackConfig, redis_server: str) -> list[str]:
    """Return the argv of a foreground Redis that keeps an append-only file in the state folder."""
    command = [
        redis_server,
        "--bind",
        "127.0.0.1",
        "--port",
        str(config.redis_port),
        "--dir",
        str(config.redis_dir),
        "--appendonly",
        "yes",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        # An empty logfile sends the log to standard output, which the
        # launcher appends to logs/redis.log.
        "--logfile",
        "",
    ]
    if config.tls is not None:
        command += tls.redis_arguments(config)
    return command
