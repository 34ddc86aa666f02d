"""Set up a deployment on a mutual TLS stack with the operator's own commands.

The demo and the TLS tests prepare a deployment as its operator would, with
the `shardbus certs` commands run as child processes:

1. ``shardbus certs init`` and ``shardbus certs acl apply`` as the stack's
   admin, which issue a certificate per service role and app and grant each
   its Kafka ACLs and Redis user;
2. ``shardbus certs env service ROLE`` per role, whose exports each service
   is then started with.

Running the commands, not the functions behind them, keeps the demo and the
tests on the path the README gives operators.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from shardbus.certs import principals
from shardbus.errors import ConfigError, ServiceUnavailable

#: The variables that carry the admin's identity: its Kafka certificate and
#: its Redis URL with password. Only the admin's own commands get them.
ADMIN_VARIABLES = (
    "SHARDBUS_KAFKA_TLS_CA",
    "SHARDBUS_KAFKA_TLS_CERT",
    "SHARDBUS_KAFKA_TLS_KEY",
    "SHARDBUS_REDIS_ADMIN_URL",
)

#: The folder that contains the ``shardbus`` package, so that the commands
#: run the same code as the caller, installed or not.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]

#: The `shardbus` command's exit status for a Kafka or Redis it cannot reach.
_EXIT_UNREACHABLE = 3


def run_cli(
    env: Mapping[str, str], *args: str, stdin: bytes | None = None, timeout_s: float = 180.0,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m shardbus ARGS`` with exactly `env`; return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "shardbus", *args], env=dict(env), cwd=_SOURCE_ROOT, input=stdin,
        capture_output=True, timeout=timeout_s, check=False,
    )


def parse_exports(text: str) -> dict[str, str]:
    """Return the variables of ``export NAME=VALUE`` lines, as `certs env` and `scripts/stack env` print them."""
    exports = {}
    for line in text.splitlines():
        if not line.startswith("export "):
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        exports[name] = shlex.split(value)[0] if value else ""
    return exports


def run_certs_command(env: Mapping[str, str], *args: str) -> str:
    """Run ``shardbus certs ARGS`` and return its output.

    Raises ServiceUnavailable when the command cannot reach Kafka or Redis,
    and ConfigError for any other failure, with the command's error output.
    """
    result = run_cli(env, "certs", *args)
    if result.returncode != 0:
        command = shlex.join(["shardbus", "certs", *args])
        detail = result.stderr.decode(errors="replace").strip() or "(no error output)"
        message = f"'{command}' failed with exit status {result.returncode}: {detail}"
        if result.returncode == _EXIT_UNREACHABLE:
            raise ServiceUnavailable(message)
        raise ConfigError(message)
    return result.stdout.decode(errors="replace")


def set_up_deployment_tls(
    base_env: Mapping[str, str],
    admin_env: Mapping[str, str],
    *,
    report: Callable[[str, str], None] | None = None,
) -> dict[str, dict[str, str]]:
    """Issue a deployment's certificates, apply its ACLs and Redis users, and return each service role's variables.

    `base_env` names the deployment (SHARDBUS_KAFKA_BOOTSTRAP,
    SHARDBUS_TOPIC_PREFIX, SHARDBUS_HOME and SHARDBUS_TLS_DIR, the TLS
    folder whose CA the broker trusts) and carries no identity. `admin_env`
    adds the admin's (`ADMIN_VARIABLES`, as ``scripts/stack env --tls``
    prints them). Apps get their certificates only if the policy file
    registers them before this call. `report` receives each admin command
    and its output.

    The result maps each role of ``principals.SERVICE_ROLES`` to the
    variables of its identity: its Kafka certificate and its Redis URL.
    """
    for args in (("init",), ("acl", "apply")):
        output = run_certs_command(admin_env, *args)
        if report is not None:
            report(shlex.join(["shardbus", "certs", *args]), output)
    return {
        role: parse_exports(run_certs_command(base_env, "env", "service", role))
        for role in principals.SERVICE_ROLES
    }
