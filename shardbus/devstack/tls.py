"""Files of the TLS stack: certificates, the broker's key store and Redis users.

The plaintext stack runs before the project is installed, so only this
module needs a third-party package: it issues certificates with
``cryptography`` through ``shardbus.certs``, imported when `up --tls`
first needs them.

`prepare` makes, once:

- in the TLS folder, a CA and the identities ``broker`` (with the names
  127.0.0.1 and localhost) and ``admin``, both Kafka super users;
- the broker's PEM key store (its key, then its certificate) in the node's
  folder, mode 0600, because Kafka reads one file with both;
- Redis's ACL file, which disables the ``default`` user and defines
  ``admin`` by the SHA-256 of a random password kept in a 0600 file.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
from pathlib import Path

from shardbus.certs.principals import ADMIN, BROKER, BROKER_HOSTS, PRINCIPAL_MAPPING_RULE, super_users
from shardbus.devstack.config import KafkaNode, StackConfig, TlsSettings
from shardbus.devstack.errors import StackError


def keystore_file(config: StackConfig, node: KafkaNode) -> Path:
    return config.kafka_dir / node.folder / "broker-keystore.pem"


def prepare(config: StackConfig) -> None:
    """Create what the TLS stack's Kafka and Redis need and do not have yet."""
    tls = _settings(config)
    _ensure_certificates(tls)
    for node in config.nodes(cluster=False):
        path = keystore_file(config, node)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = (tls.tls_dir / f"{BROKER}.key").read_bytes()
        certificate = (tls.tls_dir / f"{BROKER}.pem").read_bytes()
        _write_private(path, key + certificate)
    _ensure_redis_users(tls)


def kafka_properties(config: StackConfig, node: KafkaNode) -> dict[str, object]:
    """Return the broker settings that turn on mutual TLS and ACLs on both listeners."""
    tls = _settings(config)
    return {
        "listeners": f"BROKER://127.0.0.1:{node.broker_port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"BROKER://127.0.0.1:{node.broker_port}",
        "inter.broker.listener.name": "BROKER",
        # A combined node's controller listener takes SSL like any other, and
        # its own broker connects to it with the broker's key store.
        "listener.security.protocol.map": "CONTROLLER:SSL,BROKER:SSL",
        "ssl.client.auth": "required",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": keystore_file(config, node),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": tls.tls_dir / "ca.pem",
        "ssl.principal.mapping.rules": PRINCIPAL_MAPPING_RULE,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": super_users(),
        # Every topic is created on purpose, by a principal allowed to.
        "auto.create.topics.enable": "false",
    }


def redis_arguments(config: StackConfig) -> list[str]:
    """Return the Redis options of a Unix socket and ACL users; the config's port 0 turns TCP off."""
    tls = _settings(config)
    return [
        "--unixsocket", str(tls.redis_socket),
        "--unixsocketperm", "700",
        "--aclfile", str(tls.redis_acl_file),
    ]


def client_context(config: StackConfig) -> ssl.SSLContext:
    """Return a TLS client context with the admin identity, for the readiness probe."""
    tls = _settings(config)
    context = ssl.create_default_context(cafile=str(tls.tls_dir / "ca.pem"))
    context.load_cert_chain(str(tls.tls_dir / f"{ADMIN}.pem"), str(tls.tls_dir / f"{ADMIN}.key"))
    return context


def redis_admin_password(config: StackConfig) -> str:
    return _settings(config).redis_password_file.read_text().strip()


def _settings(config: StackConfig) -> TlsSettings:
    if config.tls is None:
        raise ValueError("this stack configuration has no TLS settings; load it with load_config(tls=True)")
    return config.tls


def _ensure_certificates(tls: TlsSettings) -> None:
    try:
        from shardbus.certs.folder import TlsFolder
    except ImportError as exc:
        raise StackError(
            f"the TLS stack issues certificates with the cryptography package, which failed to import ({exc}); "
            "create the project's .venv first (scripts/test or scripts/demo does), which scripts/stack then uses"
        ) from None
    folder = TlsFolder(tls.tls_dir)
    authority, _ = folder.create_ca()
    folder.ensure_identity(authority, BROKER, hosts=BROKER_HOSTS)
    folder.ensure_identity(authority, ADMIN)


def _ensure_redis_users(tls: TlsSettings) -> None:
    tls.redis_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls.redis_dir, 0o700)
    if not tls.redis_password_file.exists():
        _write_private(tls.redis_password_file, secrets.token_hex(24).encode() + b"\n")
    if tls.redis_acl_file.exists():
        # Redis rewrites the file on ACL SAVE with the role users added by
        # `shardbus certs acl apply`, which must survive a restart.
        return
    password = tls.redis_password_file.read_text().strip()
    digest = hashlib.sha256(password.encode()).hexdigest()
    _write_private(tls.redis_acl_file, f"user default off\nuser {ADMIN} on #{digest} ~* &* +@all\n".encode())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
