"""`shardbus run`: lease secrets and hand them to a child process for its lifetime."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from pathlib import Path

from schemas.topics import Topics
from shardbus import deployment
from shardbus.client import ShardbusClient
from shardbus.config import Settings
from shardbus.errors import ConfigError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="lease secrets and run a command with them in its environment",
        description=(
            "Lease each secret, start COMMAND with the secrets in the named environment "
            "variables, and release the leases when it exits. Example: "
            "shardbus run --app billing --secret DB_PASSWORD=db/password -- ./server"
        ),
    )
    run.add_argument("--app", required=True, help="the app id to request as")
    run.add_argument("--key", type=Path, metavar="PATH",
                     help="the app's signing key (default: $SHARDBUS_HOME/apps/<app>.key)")
    run.add_argument("--secret", action="append", required=True, metavar="ENV=NAME",
                     help="put secret NAME in environment variable ENV (repeatable)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    run.set_defaults(handler=_run)


def parse_bindings(values: list[str]) -> list[tuple[str, str]]:
    bindings = []
    for value in values:
        env_name, sep, secret_name = value.partition("=")
        if not sep or not _ENV_NAME.fullmatch(env_name) or not secret_name:
            raise ConfigError(f"--secret {value!r}: expected ENV=NAME, e.g. DB_PASSWORD=db/password")
        bindings.append((env_name, secret_name))
    return bindings


async def _run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigError("no command given; put it after --, e.g. -- ./server")
    bindings = parse_bindings(args.secret)
    settings = Settings.from_env()
    signing_key = deployment.load_signing_key(args.key or deployment.app_key_path(settings.home, args.app))

    async with ShardbusClient(
        settings.kafka_bootstrap, args.app, signing_key, topics=Topics(settings.topic_prefix)
    ) as client:
        leases = []
        try:
            for env_name, secret_name in bindings:
                leases.append((env_name, await client.request(secret_name)))
            env = dict(os.environ)
            for env_name, lease in leases:
                # NOTE: the child's environment is readable by its own user
                # through /proc/<pid>/environ for as long as the child runs.
                env[env_name] = lease.secret.decode("utf-8", errors="surrogateescape")
            try:
                child = await asyncio.create_subprocess_exec(*command, env=env)
            except OSError as exc:
                raise ConfigError(f"cannot start {command[0]!r}: {exc.strerror}") from None
            finally:
                env.clear()
            return await child.wait()
        finally:
            for _, lease in leases:
                await client.release(lease)
