"""Tunables of the provisioner and the configuration of the topics it creates."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.base import MAX_MESSAGE_SIZE

#: Topic configuration of holder topics, because a StoreFragment can exceed
#: Kafka's default record size limit of 1 MiB.
HOLDER_TOPIC_CONFIG = {"max.message.bytes": str(MAX_MESSAGE_SIZE + 64 * 1024)}


@dataclass(frozen=True)
class ProvisionerConfig:
    """Tunables of the provisioner; times in seconds."""

    pool_size: int = 2
    #: Maximum number of holders in use (assigned, per-operation or starting
    #: outside the pool) once a request is served. A request beyond it fails.
    max_holders: int = 64
    heartbeat_interval_s: float = 2.0
    #: A holder whose last heartbeat is older than this is marked failed.
    heartbeat_timeout_s: float = 10.0
    #: Maximum wait for a new holder's first heartbeat.
    ready_timeout_s: float = 30.0
    stop_timeout_s: float = 5.0
    kem: str = "x25519"
    #: A per-operation holder still running this long after it was handed out
    #: is torn down, because its operation_completed event was missed.
    orphan_timeout_s: float = 120.0
    #: Tear down every holder, pooled ones included, when the service stops.
    #: By default the ready holders keep running for the next provisioner to
    #: adopt, so a restart loses no pooled fragment.
    teardown_on_stop: bool = False

    def __post_init__(self) -> None:
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be 0 or more, got {self.pool_size}")
        if self.max_holders < max(1, self.pool_size):
            raise ValueError(f"max_holders must be at least 1 and at least pool_size, got {self.max_holders}")
        for name in ("heartbeat_interval_s", "heartbeat_timeout_s", "ready_timeout_s", "stop_timeout_s",
                     "orphan_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"heartbeat_timeout_s ({self.heartbeat_timeout_s}) must be longer than "
                f"heartbeat_interval_s ({self.heartbeat_interval_s})"
            )
