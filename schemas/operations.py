"""Messages of the request path: request, plan, fetch, fragment, reply.

An application sends an ``OperationRequest``. The authorizer replies with an
``ErrorReply``, or sends an ``OperationPlan`` to the reassembler and one
``FetchCommand`` per holder. Holders send a ``FragmentResponse`` each, and the
reassembler replies with a ``LeaseReply`` or an ``ErrorReply``. When the
application is done with the lease it sends a ``ReleaseRequest``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated

from schemas.base import Message, WireRecord, message_type, pack_canonical
from schemas.fields import (
    MAX_BLOB_LENGTH,
    AppId,
    Array,
    Blob,
    Choice,
    DurationMs,
    FragmentIndex,
    FreeText,
    HolderId,
    HolderIdList,
    Integer,
    Nested,
    OperationId,
    SecretName,
    SecretVersion,
    TimeMs,
    FieldValueError,
)


class Operation(enum.StrEnum):
    """The operation an application requests on a secret.

    Only "lease" exists in format version 1. Adding an operation ("sign",
    "hmac", "decrypt") adds a member here, and older decoders reject it.
    """

    LEASE = "lease"


class Kem(enum.StrEnum):
    """The HPKE key encapsulation mechanism of a public key."""

    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"


#: Length of a raw public key of each KEM, in bytes. The hybrid key is the
#: ML-KEM-768 encapsulation key (1184 bytes) next to the X25519 key (32 bytes),
#: because cryptography 48 has no single encoding for MLKEM768X25519PublicKey.
PUBLIC_KEY_LENGTHS: dict[Kem, int] = {Kem.X25519: 32, Kem.MLKEM768_X25519: 1216}

PublicKey = Annotated[bytes, Blob(1216, lengths=(32, 1216), label="a raw HPKE public key")]
KemName = Annotated[Kem, Choice(Kem)]


def check_public_key(owner: str, key_field: str, key: bytes, kem: Kem) -> None:
    """Raise FieldValueError unless ``key`` has the length of a ``kem`` public key."""
    expected = PUBLIC_KEY_LENGTHS[kem]
    if len(key) != expected:
        raise FieldValueError(
            f"{owner}.{key_field}",
            f"{expected} bytes for a {kem.value!r} public key",
            f"bytes of length {len(key)}",
        )


class Reason(enum.StrEnum):
    """Stable reason codes of an ErrorReply; applications may branch on them."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_APP = "unknown_app"
    BAD_SIGNATURE = "bad_signature"
    STALE_REQUEST = "stale_request"
    REPLAYED_OPERATION = "replayed_operation"
    NOT_GRANTED = "not_granted"
    SECRET_NOT_FOUND = "secret_not_found"
    FRAGMENT_MISSING = "fragment_missing"
    FRAGMENT_CORRUPTED = "fragment_corrupted"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    INTERNAL_ERROR = "internal_error"


class FragmentError(enum.StrEnum):
    """Error code of a FragmentResponse without a fragment ("" on success)."""

    NOT_LOADED = "not_loaded"
    OPEN_FAILED = "open_failed"
    EXPIRED = "expired"


@message_type
@dataclass(frozen=True, repr=False)
class OperationRequest(Message):
    """A signed request from an application (app -> ``{p}.requests``).

    ``signature`` is the Ed25519 signature by the app's registered key over
    ``signing_bytes()``. A request can be constructed with an empty signature
    so that the app can compute ``signing_bytes()``, but encode and decode
    reject it until it is signed. ``reply_public_key`` is a fresh HPKE key of the
    ``reply_kem`` kind that the lease is sealed to.
    """

    max_size = 16 * 1024

    operation_id: OperationId
    app_id: AppId
    secret_name: SecretName
    operation: Annotated[Operation, Choice(Operation)]
    reply_public_key: PublicKey
    reply_kem: KemName
    issued_at_ms: TimeMs
    # Empty only while the request is being built, to compute signing_bytes().
    signature: Annotated[bytes, Blob(64, lengths=(0, 64), label="an Ed25519 signature")]

    def check_invariants(self) -> None:
        check_public_key("OperationRequest", "reply_public_key", self.reply_public_key, self.reply_kem)

    def check_sendable(self) -> None:
        if not self.signature:
            raise FieldValueError(
                "OperationRequest.signature",
                "a 64-byte Ed25519 signature (sign signing_bytes() before sending)",
                "empty bytes",
            )

    def signing_bytes(self) -> bytes:
        """Return the canonical msgpack encoding of every field but ``signature``.

        The map includes "v" and "type", so a signature cannot be replayed as
        another message type or format version. Keys are sorted, so the result
        does not depend on the order in which the fields were set or received.
        """
        wire = self.to_wire()
        del wire["signature"]
        return pack_canonical(wire)


#: Domain label in front of the canonical encoding that a ReleaseRequest's
#: signature covers. An OperationRequest signs its bare canonical encoding,
#: which starts with a msgpack map header (0x80 to 0x8f, 0xde or 0xdf) and
#: never with this label's first byte "s" (0x73). So a signature over one
#: kind of message never verifies as a signature over the other.
RELEASE_SIGNATURE_LABEL = b"shardbus/v1/release\x00"


@message_type
@dataclass(frozen=True, repr=False)
class ReleaseRequest(Message):
    """A signed end of a lease by the application it was issued to (app -> ``{p}.requests``).

    ``signature`` is the Ed25519 signature by the app's registered key over
    ``signing_bytes()``. As with OperationRequest, a release can be
    constructed with an empty signature to compute ``signing_bytes()``, and
    encode and decode reject it until it is signed. ``released_at_ms`` is
    when the app wiped its copy of the secret.
    """

    max_size = 1024

    operation_id: OperationId
    app_id: AppId
    released_at_ms: TimeMs
    # Empty only while the release is being built, to compute signing_bytes().
    signature: Annotated[bytes, Blob(64, lengths=(0, 64), label="an Ed25519 signature")]

    def check_sendable(self) -> None:
        if not self.signature:
            raise FieldValueError(
                "ReleaseRequest.signature",
                "a 64-byte Ed25519 signature (sign signing_bytes() before sending)",
                "empty bytes",
            )

    def signing_bytes(self) -> bytes:
        """Return ``RELEASE_SIGNATURE_LABEL`` and the canonical msgpack encoding of every field but ``signature``.

        The map includes "v" and "type" as OperationRequest's does, and the
        label keeps the two signature domains apart even for a verifier that
        does not check the type.
        """
        wire = self.to_wire()
        del wire["signature"]
        return RELEASE_SIGNATURE_LABEL + pack_canonical(wire)


@dataclass(frozen=True, repr=False)
class HolderSlot(WireRecord):
    """One holder of an operation and the index of the fragment it holds."""

    holder_id: HolderId
    index: FragmentIndex


@message_type
@dataclass(frozen=True, repr=False)
class OperationPlan(Message):
    """The plan of an operation, for the reassembler (authorizer -> ``{p}.plans``).

    ``sealed_context`` is sealed with HPKE to the reassembler and contains the
    commitments, the verify key and the secret digest. Its format belongs to
    the crypto layer, so it is opaque here.
    """

    max_size = 64 * 1024

    operation_id: OperationId
    app_id: AppId
    secret_name: SecretName
    secret_version: SecretVersion
    operation: Annotated[Operation, Choice(Operation)]
    # A threshold of 1 would hand the whole secret to every holder.
    threshold: Annotated[int, Integer(2, 255, label="a threshold")]
    holders: Annotated[tuple[HolderSlot, ...], Array(Nested(HolderSlot), 255, min_items=2)]
    reply_public_key: PublicKey
    reply_kem: KemName
    deadline_ms: TimeMs
    lease_ttl_ms: DurationMs
    sealed_context: Annotated[bytes, Blob(32 * 1024, min_length=1, label="a sealed context")]

    def check_invariants(self) -> None:
        check_public_key("OperationPlan", "reply_public_key", self.reply_public_key, self.reply_kem)
        if self.threshold > len(self.holders):
            raise FieldValueError(
                "OperationPlan.threshold",
                f"at most the number of holders ({len(self.holders)})",
                f"the int {self.threshold}",
            )
        holder_ids = [slot.holder_id for slot in self.holders]
        if len(set(holder_ids)) != len(holder_ids):
            raise FieldValueError("OperationPlan.holders", "distinct holder ids", "a repeated holder id")
        indexes = [slot.index for slot in self.holders]
        if len(set(indexes)) != len(indexes):
            raise FieldValueError("OperationPlan.holders", "distinct fragment indexes", "a repeated index")


@message_type
@dataclass(frozen=True, repr=False)
class FetchCommand(Message):
    """Ask one holder for its fragment (authorizer -> ``{p}.holder.{holder_id}``).

    ``sealed_fragment_key`` is the fragment key sealed with HPKE to the
    holder's key. The holder seals its fragment to ``reassembler_public_key``.
    """

    max_size = 16 * 1024

    operation_id: OperationId
    holder_id: HolderId
    secret_name: SecretName
    secret_version: SecretVersion
    fragment_index: FragmentIndex
    sealed_fragment_key: Annotated[bytes, Blob(4096, min_length=1, label="a sealed fragment key")]
    reassembler_public_key: PublicKey
    reassembler_kem: KemName
    deadline_ms: TimeMs

    def check_invariants(self) -> None:
        check_public_key(
            "FetchCommand", "reassembler_public_key", self.reassembler_public_key, self.reassembler_kem
        )


@message_type
@dataclass(frozen=True, repr=False)
class FragmentResponse(Message):
    """A fragment sealed to the reassembler, or why there is none (holder -> ``{p}.fragments``).

    Exactly one of ``sealed_fragment`` and ``error`` is set: on success
    ``error`` is "", on failure ``sealed_fragment`` is empty.
    """

    operation_id: OperationId
    holder_id: HolderId
    fragment_index: FragmentIndex
    sealed_fragment: Annotated[bytes, Blob(MAX_BLOB_LENGTH, label="a sealed fragment")]
    error: Annotated[str, Choice(FragmentError, optional=True)]

    def check_invariants(self) -> None:
        if self.error and self.sealed_fragment:
            raise FieldValueError(
                "FragmentResponse.sealed_fragment",
                f"empty bytes because error is {self.error!s}",
                f"bytes of length {len(self.sealed_fragment)}",
            )
        if not self.error and not self.sealed_fragment:
            raise FieldValueError("FragmentResponse.sealed_fragment", 'a sealed fragment when error is ""', "empty bytes")


@message_type
@dataclass(frozen=True, repr=False)
class LeaseReply(Message):
    """The secret, sealed to the request's reply key (reassembler -> ``{p}.replies.{app_id}``)."""

    operation_id: OperationId
    app_id: AppId
    expires_at_ms: TimeMs
    sealed_lease: Annotated[bytes, Blob(MAX_BLOB_LENGTH, min_length=1, label="a sealed lease")]


@message_type
@dataclass(frozen=True, repr=False)
class ErrorReply(Message):
    """The failure of an operation (authorizer or reassembler -> ``{p}.replies.{app_id}``).

    ``detail`` is for people and must never contain secret material. ``holders``
    names the holders at fault, if any.
    """

    max_size = 64 * 1024

    operation_id: OperationId
    app_id: AppId
    reason: Annotated[Reason, Choice(Reason)]
    detail: FreeText
    holders: HolderIdList
