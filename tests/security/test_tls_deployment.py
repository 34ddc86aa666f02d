"""The whole stack over mutual TLS: every service, the CLI, the holders and an app as their own principals.

The deployment is set up the way an operator would, with the commands that
``shardbus.certs.deployment_setup`` runs: ``shardbus certs init`` and
``shardbus certs acl apply`` as the admin, then each service started with
``shardbus certs env service ROLE``, which names its certificate and its
Redis user. Nothing here is granted more than the ACL table gives its
role, so a service that needs more fails these tests.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import TopicAuthorizationFailedError
from cryptography import x509
from cryptography.x509.oid import NameOID

from provisioner.access import DEFAULT_VALIDITY
from provisioner.process import find_workdirs
from schemas import codec
from schemas.messages import LifecycleEvent
from schemas.topics import Topics
from shardbus import deployment
from shardbus.certs import acls, principals
from shardbus.certs.deployment_setup import ADMIN_VARIABLES, run_cli, set_up_deployment_tls
from shardbus.client import ShardbusClient
from shardbus.errors import DecodeError, Denied
from shardbus.kafka import delete_topics
from shardbus.services import ServiceGroup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPS = {"billing": ["db/*", "payments/*"], "payroll": ["hr/*"]}
ROLES = ("authorizer", "reassembler", "provisioner", "controller")


@dataclass
class TlsDeployment:
    stack: Any
    topics: Topics
    home: Path
    base_env: dict[str, str]
    role_env: dict[str, dict[str, str]]

    def cli(self, *args: str, role: str = "controller", stdin: bytes | None = None) -> subprocess.CompletedProcess:
        env = {**self.base_env, **self.role_env.get(role, {})}
        return run_cli(env, *args, stdin=stdin)

    def client(self, app_id: str) -> ShardbusClient:
        principal = principals.app_principal(self.topics.prefix, app_id)
        return ShardbusClient(
            self.stack.bootstrap, app_id, deployment.load_signing_key(self.home / "apps" / f"{app_id}.key"),
            topics=self.topics, timeout_s=60, kafka_options=self.stack.options(principal),
        )


@pytest.fixture(scope="module")
def tls_deployment(tls_stack, tmp_path_factory) -> Iterator[TlsDeployment]:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    home = tmp_path_factory.mktemp("tls-deployment")
    deployment.init_deployment(home)
    for app_id, grants in APPS.items():
        deployment.add_app(home, app_id, grants)
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("SHARDBUS_")}
    base_env.update(SHARDBUS_KAFKA_BOOTSTRAP=tls_stack.bootstrap, SHARDBUS_TOPIC_PREFIX=prefix,
                    SHARDBUS_HOME=str(home), SHARDBUS_TLS_DIR=str(tls_stack.folder.path))
    admin_env = {**base_env, **{name: tls_stack.exports[name] for name in ADMIN_VARIABLES}}
    role_env = set_up_deployment_tls(base_env, admin_env)

    group = ServiceGroup(env=base_env, log_dir=home / "logs", ready_timeout_s=240,
                         service_env={role: role_env[role] for role in ROLES if role != "controller"})
    try:
        group.start()
        yield TlsDeployment(tls_stack, Topics(prefix), home, base_env, role_env)
    finally:
        group.stop()
        _remove_deployment(tls_stack, prefix)


def _remove_deployment(tls_stack, prefix: str) -> None:
    async def topics_of_prefix() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=tls_stack.bootstrap, **tls_stack.admin_options())
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(prefix + ".") or t.startswith(prefix + "-")]
        finally:
            await admin.close()

    asyncio.run(delete_topics(tls_stack.bootstrap, asyncio.run(topics_of_prefix()),
                              kafka_options=tls_stack.admin_options()))
    with tls_stack.acl_admin() as admin:
        for principal in {p.principal for p in admin.list() if p.principal.startswith(prefix + ".")}:
            admin.revoke_principal(principal)
    client = redis_sync.Redis.from_url(tls_stack.redis_admin_url)
    try:
        for role in ROLES:
            client.execute_command("ACL", "DELUSER", f"{prefix}.{role}")
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def put_secret(tls_deployment: TlsDeployment, name: str, secret: bytes, *options: str) -> list[str]:
    """Store a secret as the controller; return its holders as `secret put` prints them."""
    result = tls_deployment.cli("secret", "put", name, *options, stdin=secret)
    assert result.returncode == 0, result.stderr.decode()
    for line in result.stdout.decode().splitlines():
        if line.startswith("holders: "):
            return line.removeprefix("holders: ").split(", ")
    return []


async def test_lease_over_mutual_tls(tls_deployment):
    secret = secrets.token_bytes(32)
    put_secret(tls_deployment, "db/password", secret, "--fragments", "3", "--threshold", "2")

    async with tls_deployment.client("billing") as client:
        async with client.lease("db/password") as leased:
            assert bytes(leased) == secret


async def test_release_announced_by_authorizer_over_tls(tls_deployment):
    topics, stack = tls_deployment.topics, tls_deployment.stack
    put_secret(tls_deployment, "db/released", b"r" * 16, "--fragments", "2", "--threshold", "2")

    async with LifecycleReader(stack.bootstrap, topics.lifecycle, stack.admin_options()) as events:
        async with tls_deployment.client("billing") as client:
            granted = await client.request("db/released")
            # The app may no longer write lifecycle, so its signed release goes to the authorizer.
            await client.release(granted)
        # An earlier test's release may be announced meanwhile, so events are read until this one's.
        count = 1
        while not (mine := [event for event in await events.wait_for("lease_released", count=count)
                            if event.operation_id == granted.operation_id]):
            count += 1

    assert len(mine) == 1
    assert len(mine[0].holders) == 2


async def test_app_without_grant_denied_over_tls(tls_deployment):
    put_secret(tls_deployment, "db/not-payroll", b"p" * 16, "--fragments", "2", "--threshold", "2")

    async with tls_deployment.client("payroll") as client:
        with pytest.raises(Denied) as denied:
            await client.request("db/not-payroll")
    assert denied.value.reason == "not_granted"


async def test_pooled_holders_have_holder_acls(tls_deployment):
    put_secret(tls_deployment, "db/pooled", b"q" * 16, "--fragments", "2", "--threshold", "2")
    listing = tls_deployment.cli("secret", "list")
    assert listing.returncode == 0, listing.stderr.decode()

    with tls_deployment.stack.acl_admin() as admin:
        holder_principals = {p.principal for p in admin.list()
                             if p.principal.startswith(f"{tls_deployment.topics.prefix}.holder.")}
        assert holder_principals, "no holder has ACLs"
        for principal in holder_principals:
            holder_id = principal.rsplit(".holder.", 1)[1]
            expected = sorted(acls.holder_permissions(tls_deployment.topics, holder_id))
            assert admin.list(principal) == expected


async def test_pooled_holder_certificates_short_lived(tls_deployment):
    holder_ids = put_secret(tls_deployment, "db/short-lived", b"s" * 16, "--fragments", "2", "--threshold", "2")
    now = datetime.datetime.now(datetime.timezone.utc)

    assert len(holder_ids) == 2
    for holder_id in holder_ids:
        [workdir] = find_workdirs(holder_id)
        certificate = x509.load_pem_x509_certificate((workdir / "holder.pem").read_bytes())
        common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert common_name == principals.holder_principal(tls_deployment.topics.prefix, holder_id)
        assert certificate.issuer == tls_deployment.stack.authority.certificate.subject
        # Issued by the provisioner before `now`, so it ends within its validity from now.
        assert now < certificate.not_valid_after_utc <= now + DEFAULT_VALIDITY


async def test_torn_down_holder_certificate_refused(tls_deployment):
    topics, stack = tls_deployment.topics, tls_deployment.stack
    secret = secrets.token_bytes(24)
    put_secret(tls_deployment, "payments/once", secret, "--fragments", "3", "--threshold", "2",
               "--lifecycle", "per_operation")

    async with LifecycleReader(stack.bootstrap, topics.lifecycle, stack.admin_options()) as events:
        async with tls_deployment.client("billing") as client:
            async with client.lease("payments/once") as leased:
                assert bytes(leased) == secret
        torn_down = await events.wait_for("holder_torn_down", count=3)

    holder_ids = {event.holder_id for event in torn_down}
    assert len(holder_ids) == 3
    with stack.acl_admin() as admin:
        for holder_id in holder_ids:
            assert admin.list(principals.holder_principal(topics.prefix, holder_id)) == []
    # A certificate with the torn-down holder's name, as good as its own until
    # it expires, may no longer write what a holder writes.
    for holder_id in holder_ids:
        options = stack.options(principals.holder_principal(topics.prefix, holder_id))
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, request_timeout_ms=20000, **options)
        await producer.start()
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await asyncio.wait_for(producer.send_and_wait(topics.heartbeats, b"forged", key=b"k"), 60)
        finally:
            await producer.stop()


class LifecycleReader:
    """Collects the lifecycle events published after it starts, as the admin."""

    def __init__(self, bootstrap: str, topic: str, options: dict[str, Any]) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **options)
        self._topic = topic
        self.events: list[LifecycleEvent] = []

    async def __aenter__(self) -> LifecycleReader:
        await self._consumer.start()
        await self._consumer.topics()
        partitions = [TopicPartition(self._topic, p)
                      for p in sorted(self._consumer.partitions_for_topic(self._topic) or {0})]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:
            await self._consumer.position(partition)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def wait_for(self, kind: str, *, count: int, timeout_s: float = 60.0) -> list[LifecycleEvent]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            matching = [event for event in self.events if event.event == kind]
            if len(matching) >= count:
                return matching
            assert asyncio.get_running_loop().time() < deadline, f"only {len(matching)} {kind} events arrived"
            batches = await self._consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    try:
                        message = codec.decode(record.value or b"")
                    except DecodeError:
                        continue
                    if isinstance(message, LifecycleEvent):
                        self.events.append(message)


async def test_audit_trail_verifies_over_tls(tls_deployment):
    put_secret(tls_deployment, "db/audited", b"a" * 16, "--fragments", "2", "--threshold", "2")

    result = tls_deployment.cli("audit", "verify")

    output = result.stdout.decode()
    assert result.returncode == 0, output + result.stderr.decode()
    assert "BREAK" not in output
    # The controller (partition 0) and the provisioner (partition 3) wrote with their own certificates.
    for partition in (0, 3):
        assert f"partition {partition}:" in output, output
