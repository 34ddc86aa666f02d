"""Whom the demo acts as: the stack's admin, the controller, each service and each app.

By default the demo runs on the mutual TLS stack (``scripts/stack up
--tls``). It sets its deployment up as the stack's admin (see
``shardbus.certs.deployment_setup``), starts each service with the
certificate and Redis user of its role, stores secrets as the controller
role and leases them with each app's own certificate. The admin's identity
is kept for what an operator does by hand: applying ACLs, looking holders
up in the registry to kill them, and listing a holder's ACLs.

With ``--plaintext`` every party shares the plaintext stack's open access.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, NoError, for_code
from cryptography import x509
from redis.asyncio import Redis
from redis.exceptions import RedisError

from provisioner.process import find_workdirs
from shardbus.certs import principals
from shardbus.certs.acl_admin import AclAdmin
from shardbus.certs.acls import Operation, Pattern, Permission
from shardbus.certs.deployment_setup import ADMIN_VARIABLES, set_up_deployment_tls
from shardbus.certs.folder import TlsFolder
from shardbus.config import KafkaTls, Settings
from shardbus.errors import ConfigError, ServiceUnavailable
from shardbus.kafka import client_options

#: The variables of one party's Kafka certificate.
KAFKA_TLS_VARIABLES = ("SHARDBUS_KAFKA_TLS_CA", "SHARDBUS_KAFKA_TLS_CERT", "SHARDBUS_KAFKA_TLS_KEY")

#: The variables the TLS demo reads from ``scripts/stack env --tls``: the
#: broker, the TLS folder whose CA it trusts, and the admin's certificate and
#: Redis URL.
TLS_STACK_VARIABLES = ("SHARDBUS_KAFKA_BOOTSTRAP", "SHARDBUS_TLS_DIR", *KAFKA_TLS_VARIABLES,
                       "SHARDBUS_REDIS_ADMIN_URL")
PLAINTEXT_STACK_VARIABLES = ("SHARDBUS_KAFKA_BOOTSTRAP", "SHARDBUS_REDIS_URL")

START_TLS = ('run scripts/demo, which starts the TLS stack, or start it and export its settings: '
             'scripts/stack up --tls && eval "$(scripts/stack env --tls)"')
START_PLAINTEXT = ('run scripts/demo --plaintext, which starts the plaintext stack, or start it and export '
                   'its settings: scripts/stack up && eval "$(scripts/stack env)"')

#: Bound on the start-up check of Kafka and Redis, in seconds. Both respond
#: in well under a second when they run, so the bound only ends a hung attempt.
_CHECK_TIMEOUT_S = 60.0


def check_environment(environ: Mapping[str, str], *, tls: bool) -> None:
    """Raise ConfigError, naming the command to run, when a stack setting that the demo needs is missing."""
    if tls:
        missing = [name for name in TLS_STACK_VARIABLES if not environ.get(name)]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set, and the demo runs over "
                f"mutual TLS as the TLS stack's admin: {START_TLS}; scripts/demo --plaintext runs without TLS"
            )
        for name in KAFKA_TLS_VARIABLES:
            if not Path(environ[name]).is_file():
                raise ConfigError(f"{name}={environ[name]} does not exist; the TLS stack creates it: {START_TLS}")
        return
    missing = [name for name in PLAINTEXT_STACK_VARIABLES if not environ.get(name)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: {START_PLAINTEXT}")
    present = [name for name in KAFKA_TLS_VARIABLES if environ.get(name)]
    if present:
        raise ConfigError(
            f"--plaintext was given, but {', '.join(present)} {'is' if len(present) == 1 else 'are'} set "
            f"(from scripts/stack env --tls?): unset {' '.join(KAFKA_TLS_VARIABLES)}, which "
            "scripts/demo --plaintext does, or leave out --plaintext to run over mutual TLS"
        )


@dataclass
class DemoAccess:
    """The environments and Kafka settings of every party of one demo deployment."""

    tls: bool
    #: The deployment's settings for the store: the controller role's in TLS mode.
    controller: Settings
    #: The variables every service starts with; they carry no identity.
    service_base_env: dict[str, str]
    #: Each service role's Kafka certificate and Redis URL; empty in plaintext.
    role_env: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The operator's Kafka settings, for listing a holder's ACLs.
    admin_options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The Redis URL that reads the holder registry: the admin's in TLS mode,
    #: because the controller's Redis user may not read registry keys.
    registry_redis_url: str = field(default="", repr=False)

    @property
    def bootstrap(self) -> str:
        return self.controller.kafka_bootstrap

    @property
    def prefix(self) -> str:
        return self.controller.topic_prefix

    def service_env(self) -> dict[str, dict[str, str]]:
        """Return the variables of each service's own identity, for `ServiceGroup.service_env`."""
        return {role: env for role, env in self.role_env.items() if role != "controller"}

    def controller_env(self) -> dict[str, str]:
        return {**self.service_base_env, **self.role_env.get("controller", {})}

    def controller_options(self) -> dict[str, Any]:
        return client_options(self.controller)

    def app_options(self, app_id: str) -> dict[str, Any]:
        """Return the Kafka settings of one app: its own certificate in TLS mode."""
        if not self.tls:
            return client_options(self.controller)
        files = TlsFolder(self.controller.tls_dir).files(principals.app_principal(self.prefix, app_id))
        return client_options(KafkaTls(files.ca, files.certificate, files.key))


def plaintext_access(settings: Settings, environ: Mapping[str, str]) -> DemoAccess:
    """Return the demo's access on the plaintext stack, where every party shares `settings`."""
    env = {**environ, **_deployment_variables(settings)}
    env["SHARDBUS_REDIS_URL"] = settings.redis_url
    return DemoAccess(False, settings, env, admin_options=client_options(settings),
                      registry_redis_url=settings.redis_url)


def tls_access(
    admin: Settings, environ: Mapping[str, str], *, report: Callable[[str, str], None] | None = None,
) -> DemoAccess:
    """Set the deployment up as the admin of the TLS stack and return every party's access.

    `admin` is the deployment's settings with the admin's certificate, and
    `environ` the environment with the admin's variables (`ADMIN_VARIABLES`).
    The policy file must register the apps already, so they get
    certificates. `report` receives each admin command and its output.
    """
    # Nothing the services or the controller start with may carry the
    # admin's certificate or its Redis password.
    base_env = {name: value for name, value in environ.items()
                if name not in ADMIN_VARIABLES and name != "SHARDBUS_REDIS_URL"}
    base_env.update(_deployment_variables(admin))
    base_env["SHARDBUS_TLS_DIR"] = str(admin.tls_dir)
    admin_env = {**base_env, **{name: environ[name] for name in ADMIN_VARIABLES}}
    role_env = set_up_deployment_tls(base_env, admin_env, report=report)
    controller = Settings.from_env({**base_env, **role_env["controller"]})
    return DemoAccess(True, controller, base_env, role_env, admin_options=client_options(admin),
                      registry_redis_url=environ["SHARDBUS_REDIS_ADMIN_URL"])


def _deployment_variables(settings: Settings) -> dict[str, str]:
    return {
        "SHARDBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHARDBUS_TOPIC_PREFIX": settings.topic_prefix,
        "SHARDBUS_HOME": str(settings.home),
    }


async def check_stack(settings: Settings, redis_url: str, *, tls: bool) -> None:
    """Raise ServiceUnavailable, naming the command to run, when the stack's Kafka or Redis cannot be reached."""
    start = START_TLS if tls else START_PLAINTEXT
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=20000,
                                **client_options(settings))
    try:
        await asyncio.wait_for(admin.start(), _CHECK_TIMEOUT_S)
        await asyncio.wait_for(admin.list_topics(), _CHECK_TIMEOUT_S)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise ServiceUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc or type(exc).__name__}); "
            f"is the stack running? {start}"
        ) from None
    finally:
        await admin.close()
    redis = Redis.from_url(redis_url, socket_timeout=_CHECK_TIMEOUT_S)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        where = redis_url.rpartition("@")[2]  # the URL without its password
        raise ServiceUnavailable(f"cannot reach Redis at {where} ({exc}); is the stack running? {start}") from None
    finally:
        await redis.aclose()


async def probe_topic(bootstrap: str, topic: str, kafka_options: dict[str, Any]) -> None:
    """Ask the broker for the partitions of `topic`, as a consumer does before it reads.

    Raises the broker's error for the topic, such as
    TopicAuthorizationFailedError for a principal with neither READ nor
    DESCRIBE on it; returns when the broker describes the topic.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000, **kafka_options)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        error = for_code(entry["error_code"])
        if error is not NoError:
            raise error(topic)


async def describe_holder_access(
    access: DemoAccess, holder_id: str, backend: str, *, now: datetime.datetime,
) -> list[str]:
    """Return lines on a holder's principal, its ACLs and, for a process holder, its certificate's expiry."""
    principal = principals.holder_principal(access.prefix, holder_id)

    def list_acls() -> list[Permission]:
        with AclAdmin(access.bootstrap, access.admin_options) as admin:
            return admin.list(principal)

    permissions = await asyncio.to_thread(list_acls)
    lines = [f"holder {holder_id} is principal {principal} with {len(permissions)} ACLs: "
             f"{summarize_permissions(permissions)}"]
    if backend == "microvm":
        lines.append("its certificate, issued by the provisioner, went into its VM over the control port "
                     "and never touched the host's disk")
        return lines
    for workdir in find_workdirs(holder_id):
        certificate_path = workdir / "holder.pem"
        if not certificate_path.is_file():
            continue
        certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
        expires = certificate.not_valid_after_utc
        hours = (expires - now).total_seconds() / 3600
        lines.append(f"its certificate, issued by the provisioner, expires in {hours:.1f} h "
                     f"({expires:%Y-%m-%d %H:%M} UTC)")
    return lines


def summarize_permissions(permissions: list[Permission]) -> str:
    """Return ACLs as "read a; write b, c", one clause per operation, prefixed names marked with *."""
    by_operation: dict[Operation, list[str]] = {}
    for permission in permissions:
        name = permission.name + ("*" if permission.pattern is Pattern.PREFIXED else "")
        by_operation.setdefault(permission.operation, []).append(name)
    ordered = sorted(by_operation.items(), key=lambda item: list(Operation).index(item[0]))
    return "; ".join(f"{operation.value} {', '.join(sorted(names))}" for operation, names in ordered)
