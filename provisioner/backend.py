"""The interface between the provisioner and whatever runs a holder.

The provisioner decides when a holder starts and stops; a backend decides
how. The default backend runs each holder as an OS process
(``provisioner.process``); a microVM or Kubernetes backend implements the same
four operations, and may implement `adopt` so that its holders outlive a
provisioner restart.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HolderTls:
    """A holder's own TLS identity towards Kafka, all PEM."""

    ca_pem: bytes
    certificate_pem: bytes
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class HolderSpec:
    """The settings a backend needs to start one holder.

    ``kafka_bootstrap`` and ``topic_prefix`` are the only settings a holder
    reads, with ``tls`` when Kafka requires mutual TLS: the backend hands
    the holder those files and points SHARDBUS_KAFKA_TLS_* at them. A holder
    needs neither Redis nor the deployment folder.
    """

    holder_id: str
    kafka_bootstrap: str
    topic_prefix: str
    heartbeat_interval_s: float = 2.0
    kem: str = "x25519"
    tls: HolderTls | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BackendStatus:
    """A backend's view of one holder.

    ``pid`` is the process id when the backend can see it (0 when it
    cannot), which lets the provisioner match it against the holder's
    heartbeat. ``exit_code`` is None while the holder runs. ``public_key``
    is the HPKE public key the holder reported over a channel private to
    the backend, empty until it arrives or when the backend has no such
    channel.
    """

    holder_id: str
    alive: bool
    pid: int
    exit_code: int | None
    detail: str
    public_key: bytes = field(default=b"", repr=False)


class HolderBackend(abc.ABC):
    """Starts, stops and watches holders."""

    #: True when the backend learns each holder's public key over a private
    #: channel. Heartbeats travel on a shared topic that any producer can
    #: write to, so the provisioner then trusts only a heartbeat whose key
    #: matches the one the backend reported.
    reports_public_key: bool = False

    #: True when the backend can take over holders that an earlier
    #: provisioner started (see `adopt`).
    can_adopt: bool = False

    @abc.abstractmethod
    async def start(self, spec: HolderSpec) -> BackendStatus:
        """Start a holder and return its status as soon as it is launched.

        It returns before the holder is ready: readiness is the holder's
        first heartbeat, which the provisioner waits for. Raises
        ServiceUnavailable when the holder cannot be launched.
        """

    @abc.abstractmethod
    async def stop(self, holder_id: str, timeout_s: float = 5.0) -> None:
        """Stop a holder and release what the backend made for it.

        Asks the holder to stop (it wipes what it holds), waits up to
        `timeout_s`, then forces it. Stopping a holder that has exited, or
        one the backend does not know, is not an error.
        """

    def adopt(self, holder_id: str, pid: int, public_key: bytes, kem: str) -> BackendStatus | None:
        """Take over a running holder that an earlier provisioner started.

        Returns its status, or None when the holder no longer runs or the
        backend cannot adopt holders. `public_key` is the key the registry
        recorded for the holder.
        """
        return None

    @abc.abstractmethod
    def status(self, holder_id: str) -> BackendStatus | None:
        """Return the holder's current status, or None for an unknown id."""

    def is_alive(self, holder_id: str) -> bool:
        """Tell whether the holder is still running."""
        status = self.status(holder_id)
        return status is not None and status.alive

    @abc.abstractmethod
    def holder_ids(self) -> list[str]:
        """Return the ids of every holder started and not yet stopped."""

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop every holder this backend started."""
        for holder_id in self.holder_ids():
            await self.stop(holder_id, timeout_s)
