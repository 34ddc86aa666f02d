"""Settings every shardbus service reads from its environment.

| Variable | Meaning | Default |
|---|---|---|
| SHARDBUS_KAFKA_BOOTSTRAP | Kafka bootstrap servers, host:port[,host:port] | 127.0.0.1:19092 |
| SHARDBUS_REDIS_URL | Redis URL | redis://127.0.0.1:16379/0 |
| SHARDBUS_TOPIC_PREFIX | prefix of every topic and Redis key | shardbus |
| SHARDBUS_HOME | deployment folder with keys and the policy file | ./deployment |
| SHARDBUS_KAFKA_TLS_CA | CA certificate (PEM) that signed the broker's certificate | unset: plaintext |
| SHARDBUS_KAFKA_TLS_CERT | this party's client certificate (PEM) | unset |
| SHARDBUS_KAFKA_TLS_KEY | its private key (PEM, mode 0600) | unset |
| SHARDBUS_TLS_DIR | the TLS folder that `shardbus certs` manages | $SHARDBUS_HOME/tls |

The deployment folder, made by `shardbus init`, holds ``master.key``,
``reassembler.key`` (private), ``reassembler.pub``, ``audit.key`` (private,
for the services that write audit records), ``audit.pub`` and ``policy.yaml``.

Kafka connections use mutual TLS when SHARDBUS_KAFKA_TLS_CA is set, and then
the certificate and key are required too; `shardbus.kafka.client_options`
turns them into client settings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shardbus.errors import ConfigError

_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class KafkaTls:
    """The files of one party's mutual TLS identity towards Kafka."""

    ca: Path
    certificate: Path
    key: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaTls | None:
        """Read the SHARDBUS_KAFKA_TLS_* variables; return None when none is set."""
        env = os.environ if environ is None else environ
        names = ("SHARDBUS_KAFKA_TLS_CA", "SHARDBUS_KAFKA_TLS_CERT", "SHARDBUS_KAFKA_TLS_KEY")
        values = [env.get(name, "") for name in names]
        if not any(values):
            return None
        missing = [name for name, value in zip(names, values) if not value]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} not set: mutual TLS needs the CA, the certificate and the key; "
                "set all three ('shardbus certs env' prints them) or none for plaintext"
            )
        return cls(*(Path(value) for value in values))


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str
    redis_url: str
    topic_prefix: str
    home: Path
    #: None means plaintext Kafka connections, the development default.
    kafka_tls: KafkaTls | None = None
    #: None means ``home / "tls"``.
    tls_dir_override: Path | None = None

    @property
    def tls_dir(self) -> Path:
        return self.tls_dir_override or self.home / "tls"

    @property
    def master_key_path(self) -> Path:
        return self.home / "master.key"

    @property
    def reassembler_key_path(self) -> Path:
        return self.home / "reassembler.key"

    @property
    def reassembler_public_path(self) -> Path:
        return self.home / "reassembler.pub"

    @property
    def policy_path(self) -> Path:
        return self.home / "policy.yaml"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        prefix = env.get("SHARDBUS_TOPIC_PREFIX", "shardbus")
        if not _PREFIX.fullmatch(prefix):
            raise ConfigError(
                f"SHARDBUS_TOPIC_PREFIX={prefix!r} is invalid: use 1-64 of A-Z a-z 0-9 . _ -"
            )
        return cls(
            kafka_bootstrap=env.get("SHARDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
            redis_url=env.get("SHARDBUS_REDIS_URL", "redis://127.0.0.1:16379/0"),
            topic_prefix=prefix,
            home=Path(env.get("SHARDBUS_HOME", "deployment")),
            kafka_tls=KafkaTls.from_env(env),
            tls_dir_override=Path(env["SHARDBUS_TLS_DIR"]) if env.get("SHARDBUS_TLS_DIR") else None,
        )
