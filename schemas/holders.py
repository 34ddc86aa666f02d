"""Messages that manage holders: storing and destroying fragments, heartbeats,
provisioning and lifecycle events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated

from schemas.base import Message, WireRecord, message_type, pack_canonical
from schemas.fields import (
    MAX_BLOB_LENGTH,
    UINT32_MAX,
    Array,
    Blob,
    Boolean,
    Choice,
    FieldValueError,
    FragmentIndex,
    FreeText,
    HolderId,
    HolderIdList,
    Integer,
    KeyVersion,
    Nested,
    OptionalHolderId,
    OptionalOperationId,
    OptionalSecretName,
    OptionalSecretVersion,
    RequestId,
    SecretName,
    SecretVersion,
    TimeMs,
    TopicName,
)
from schemas.operations import KemName, PublicKey, check_public_key

#: Maximum number of fragments listed in one heartbeat.
MAX_LOADED_FRAGMENTS = 1024


class HolderStatus(enum.StrEnum):
    """Whether a holder takes new work."""

    READY = "ready"
    DRAINING = "draining"


class HolderLifecycle(enum.StrEnum):
    """How long a provisioned holder lives: across operations, or for one."""

    POOLED = "pooled"
    PER_OPERATION = "per_operation"


class EventKind(enum.StrEnum):
    """The kind of a LifecycleEvent."""

    HOLDER_PROVISIONED = "holder_provisioned"
    HOLDER_READY = "holder_ready"
    HOLDER_FAILED = "holder_failed"
    HOLDER_REPLACED = "holder_replaced"
    HOLDER_TORN_DOWN = "holder_torn_down"
    HOLDER_RETURNED = "holder_returned"
    #: The controlling domain destroyed the fragments these holders had;
    #: the provisioner tears them down.
    HOLDERS_RELEASED = "holders_released"
    HOLDERS_LOADED = "holders_loaded"
    OPERATION_COMPLETED = "operation_completed"
    #: The authorizer verified the app's signed ReleaseRequest for the lease.
    LEASE_RELEASED = "lease_released"
    #: The lease reached its expiry without a release (sent by the reassembler).
    LEASE_EXPIRED = "lease_expired"


@message_type
@dataclass(frozen=True, repr=False)
class StoreFragment(Message):
    """Give a holder its sealed fragment (controlling domain -> ``{p}.holder.{holder_id}``).

    ``sealed_fragment`` is sealed with AES-256-GCM under the fragment key of
    ``key_version``. The holder replies with a HolderAck for ``request_id``.

    ``key_slot`` is the holder id that the fragment key was derived for,
    which the sealed fragment's associated data also names. It is "" for the
    receiving holder's own id (a pooled placement). It is "backup" for a copy
    from the backup store (per-operation holders and restored fragments). The
    holder keeps the slot with the blob and opens the fragment for it only.
    """

    holder_id: HolderId
    secret_name: SecretName
    secret_version: SecretVersion
    fragment_index: FragmentIndex
    key_version: KeyVersion
    sealed_fragment: Annotated[bytes, Blob(MAX_BLOB_LENGTH, min_length=1, label="a sealed fragment")]
    request_id: RequestId
    key_slot: OptionalHolderId = ""


@message_type
@dataclass(frozen=True, repr=False)
class DestroyFragment(Message):
    """Make a holder wipe the fragments of a secret (-> ``{p}.holder.{holder_id}``).

    ``secret_version`` 0 destroys every version the holder has.
    """

    max_size = 64 * 1024

    holder_id: HolderId
    secret_name: SecretName
    secret_version: OptionalSecretVersion
    request_id: RequestId


@message_type
@dataclass(frozen=True, repr=False)
class HolderAck(Message):
    """A holder's acknowledgement of StoreFragment or DestroyFragment (holder -> ``{p}.acks``).

    ``error`` is "" exactly when ``ok`` is true.
    """

    max_size = 64 * 1024

    holder_id: HolderId
    request_id: RequestId
    ok: Annotated[bool, Boolean()]
    error: FreeText

    def check_invariants(self) -> None:
        if self.ok and self.error:
            raise FieldValueError("HolderAck.error", '"" because ok is true', f"a str of {len(self.error)} characters")
        if not self.ok and not self.error:
            raise FieldValueError("HolderAck.error", "an error because ok is false", 'the str ""')


@dataclass(frozen=True, repr=False)
class LoadedFragment(WireRecord):
    """One fragment a holder has loaded, as listed in its heartbeat."""

    secret_name: SecretName
    secret_version: SecretVersion
    fragment_index: FragmentIndex


@message_type
@dataclass(frozen=True, repr=False)
class HolderHeartbeat(Message):
    """A holder's periodic sign of life (holder -> ``{p}.heartbeats``).

    The first heartbeat delivers the holder's HPKE public key to the
    provisioner. ``pid`` is the holder's process id on its host.
    """

    max_size = 512 * 1024

    holder_id: HolderId
    at_ms: TimeMs
    public_key: PublicKey
    kem: KemName
    pid: Annotated[int, Integer(1, UINT32_MAX, label="a process id")]
    status: Annotated[HolderStatus, Choice(HolderStatus)]
    loaded: Annotated[tuple[LoadedFragment, ...], Array(Nested(LoadedFragment), MAX_LOADED_FRAGMENTS)]

    def check_invariants(self) -> None:
        check_public_key("HolderHeartbeat", "public_key", self.public_key, self.kem)


@message_type
@dataclass(frozen=True, repr=False)
class ProvisionRequest(Message):
    """Ask the provisioner for holders (authorizer or CLI -> ``{p}.provisioner``).

    A per-operation request names its operation. ``secret_name`` and
    ``secret_version`` are both set, or both empty ("" and 0) for holders
    that are not yet meant for a secret. The provisioner sends its
    ProvisionReply to ``reply_topic``.
    """

    max_size = 64 * 1024

    request_id: RequestId
    count: Annotated[int, Integer(1, 255, label="a holder count")]
    lifecycle: Annotated[HolderLifecycle, Choice(HolderLifecycle)]
    operation_id: OptionalOperationId
    secret_name: OptionalSecretName
    secret_version: OptionalSecretVersion
    reply_topic: TopicName

    def check_invariants(self) -> None:
        if self.lifecycle is HolderLifecycle.PER_OPERATION and not self.operation_id:
            raise FieldValueError(
                "ProvisionRequest.operation_id", "an operation id because lifecycle is per_operation", 'the str ""'
            )
        if (self.secret_name == "") != (self.secret_version == 0):
            raise FieldValueError(
                "ProvisionRequest.secret_version",
                "0 exactly when secret_name is empty",
                f"the int {self.secret_version}",
            )


@dataclass(frozen=True, repr=False)
class ProvisionedHolder(WireRecord):
    """A holder handed out by the provisioner, with its HPKE public key."""

    holder_id: HolderId
    public_key: PublicKey
    kem: KemName

    def check_invariants(self) -> None:
        check_public_key("ProvisionedHolder", "public_key", self.public_key, self.kem)


@message_type
@dataclass(frozen=True, repr=False)
class ProvisionReply(Message):
    """The provisioner's answer to a ProvisionRequest, sent to its reply topic.

    On success ``error`` is "" and ``holders`` is not empty. On failure
    ``holders`` is empty.
    """

    max_size = 512 * 1024

    request_id: RequestId
    holders: Annotated[tuple[ProvisionedHolder, ...], Array(Nested(ProvisionedHolder), 255)]
    error: FreeText

    def check_invariants(self) -> None:
        if self.error and self.holders:
            raise FieldValueError("ProvisionReply.holders", "no holders because error is set", f"{len(self.holders)} holders")
        if not self.error and not self.holders:
            raise FieldValueError("ProvisionReply.holders", 'at least one holder when error is ""', "no holders")
        holder_ids = [holder.holder_id for holder in self.holders]
        if len(set(holder_ids)) != len(holder_ids):
            raise FieldValueError("ProvisionReply.holders", "distinct holder ids", "a repeated holder id")


#: Domain label in front of the canonical encoding that a LifecycleEvent's
#: signature covers. The audit key also signs audit records, behind the label
#: "shardbus audit record v1\x00". Neither label is a prefix of the other, so
#: a signature over one never verifies as a signature over the other.
LIFECYCLE_SIGNATURE_LABEL = b"shardbus/v1/lifecycle\x00"


@message_type
@dataclass(frozen=True, repr=False)
class LifecycleEvent(Message):
    """Something that happened to a holder, an operation or a lease (-> ``{p}.lifecycle``).

    Fields that do not apply to ``event`` are "" or 0.

    ``signature`` is the Ed25519 signature by the deployment's audit key over
    ``signing_bytes()``. Every sender (controller, authorizer, reassembler,
    provisioner) has that key already to sign its audit records, so the
    consumers that act on an event can check that a holder of the key sent
    it, not merely a principal allowed to write the topic (see
    shardbus.audit.events). An event can be constructed with an empty
    signature to compute ``signing_bytes()``; encode and decode reject it
    until it is signed.
    """

    max_size = 64 * 1024

    event: Annotated[EventKind, Choice(EventKind)]
    at_ms: TimeMs
    holder_id: OptionalHolderId
    operation_id: OptionalOperationId
    secret_name: OptionalSecretName
    secret_version: OptionalSecretVersion
    detail: FreeText
    holders: HolderIdList
    # Empty only while the event is being built, to compute signing_bytes().
    signature: Annotated[bytes, Blob(64, lengths=(0, 64), label="an Ed25519 signature")] = b""

    def check_sendable(self) -> None:
        if not self.signature:
            raise FieldValueError(
                "LifecycleEvent.signature",
                "a 64-byte Ed25519 signature (sign signing_bytes() with the audit key before sending)",
                "empty bytes",
            )

    def signing_bytes(self) -> bytes:
        """Return ``LIFECYCLE_SIGNATURE_LABEL`` and the canonical msgpack encoding of every field but ``signature``.

        The label keeps these signatures apart from the audit records, which
        the same key signs under another label.
        """
        wire = self.to_wire()
        del wire["signature"]
        return LIFECYCLE_SIGNATURE_LABEL + pack_canonical(wire)
