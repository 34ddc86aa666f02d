"""Settings every shardbus service reads from its environment.

| Variable | Meaning | Default |
|---|---|---|
| SHARDBUS_KAFKA_BOOTSTRAP | Kafka bootstrap servers, host:port[,host:port] | 127.0.0.1:19092 |
| SHARDBUS_REDIS_URL | Redis URL | redis://127.0.0.1:16379/0 |
| SHARDBUS_TOPIC_PREFIX | prefix of every topic and Redis key | shardbus |
| SHARDBUS_HOME | deployment folder with keys and the policy file | ./deployment |

The deployment folder, made by `shardbus init`, holds ``master.key``,
``reassembler.key`` (private), ``reassembler.pub`` and ``policy.yaml``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from shardbus.errors import ConfigError

_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str
    redis_url: str
    topic_prefix: str
    home: Path

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
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
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
        )
