"""A private TLS stack (Kafka with mutual TLS and ACLs, Redis with ACL users) for the security tests.

The stack is started once per session with ``scripts/stack up --tls`` in a
temporary folder on free ports, and stopped afterwards. It never touches
the shared plaintext stack. The tests skip, saying why, only when Java or
the cached Kafka jars are missing; any other start-up failure fails them.

Nothing here sets SHARDBUS_KAFKA_TLS_* in this process's environment, which
the plaintext tests of the same session share: every TLS client gets its
options explicitly.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import shlex
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas.topics import Topics
from shardbus.certs.acl_admin import AclAdmin
from shardbus.certs.authority import CertificateAuthority
from shardbus.certs.folder import TlsFolder
from shardbus.config import KafkaTls
from shardbus.kafka import client_options

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class TlsStack:
    """A running TLS stack and its TLS folder."""

    bootstrap: str
    folder: TlsFolder
    redis_admin_url: str
    exports: dict[str, str]
    #: The variables that select this stack's folder and ports, for a
    #: command such as ``scripts/stack up --tls`` that must find it.
    stack_env: dict[str, str]

    @property
    def authority(self) -> CertificateAuthority:
        return self.folder.load_ca()

    def options(self, principal: str) -> dict[str, Any]:
        """Return client options for `principal`, issuing its certificate first if needed."""
        self.folder.ensure_identity(self.authority, principal)
        files = self.folder.files(principal)
        return client_options(KafkaTls(files.ca, files.certificate, files.key))

    def admin_options(self) -> dict[str, Any]:
        return self.options("admin")

    def acl_admin(self) -> AclAdmin:
        return AclAdmin(self.bootstrap, self.admin_options())

    def grant(self, permissions) -> None:
        with self.acl_admin() as admin:
            admin.grant(permissions)

    def issue_expired(self, principal: str) -> dict[str, Any]:
        """Return client options for a certificate of `principal` that expired an hour ago."""
        issued_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=3)
        identity = self.authority.issue(principal, validity=datetime.timedelta(hours=2), clock=lambda: issued_at)
        files = self.folder.write_identity(identity)
        return client_options(KafkaTls(files.ca, files.certificate, files.key))


def _skip_reason(env: dict[str, str]) -> str | None:
    from shardbus.devstack.config import load_config
    from shardbus.devstack.errors import StackError
    from shardbus.devstack.fetch import check_java

    try:
        check_java(env)
    except StackError as exc:
        return f"the TLS stack cannot start: {exc}"
    libs = load_config(env, tls=True).kafka_home / "libs"
    if not libs.is_dir():
        return f"the TLS stack cannot start: no Kafka jars in {libs}; run scripts/stack up once to fetch them"
    return None


@pytest.fixture(scope="session")
def tls_stack(tmp_path_factory) -> Iterator[TlsStack]:
    state_dir = tmp_path_factory.mktemp("tls-stack")
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHARDBUS_")}
    env.update(
        SHARDBUS_TLS_STACK_DIR=str(state_dir),
        SHARDBUS_TLS_KAFKA_PORT=str(free_port()),
        SHARDBUS_TLS_KAFKA_CONTROLLER_PORT=str(free_port()),
        # A JVM starting on a loaded 2-core machine beside other test runs is slow.
        SHARDBUS_KAFKA_START_TIMEOUT="180",
    )
    reason = _skip_reason(env)
    if reason:
        pytest.skip(reason)

    up = subprocess.run([str(STACK), "up", "--tls"], env=env, capture_output=True, text=True, timeout=300,
                        stdin=subprocess.DEVNULL, check=False)
    try:
        assert up.returncode == 0, f"scripts/stack up --tls failed:\n{up.stderr}"
        exports = {}
        for line in up.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            exports[name] = shlex.split(value)[0]
        yield TlsStack(
            bootstrap=exports["SHARDBUS_KAFKA_BOOTSTRAP"],
            folder=TlsFolder(Path(exports["SHARDBUS_TLS_DIR"])),
            redis_admin_url=exports["SHARDBUS_REDIS_ADMIN_URL"],
            exports=exports,
            stack_env={name: value for name, value in env.items() if name.startswith("SHARDBUS_")},
        )
    finally:
        subprocess.run([str(STACK), "down", "--tls"], env=env, capture_output=True, timeout=120,
                       stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def tls_topics(tls_stack: TlsStack, topic_prefix: str) -> Iterator[Topics]:
    """A topic prefix of this test on the TLS stack; its topics and ACLs are deleted afterwards."""
    topics = Topics(topic_prefix)
    yield topics

    from shardbus.kafka import delete_topics

    async def cleanup() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=tls_stack.bootstrap, **tls_stack.admin_options())
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(topic_prefix)]
        finally:
            await admin.close()
        await delete_topics(tls_stack.bootstrap, names, kafka_options=tls_stack.admin_options())

    asyncio.run(cleanup())
    with tls_stack.acl_admin() as admin:
        for permission in {p.principal for p in admin.list() if p.principal.startswith(topic_prefix + ".")}:
            admin.revoke_principal(permission)
