"""Messages for operators: the audit trail and dead letters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from schemas.base import Message, message_type
from schemas.fields import (
    ACTION_PATTERN,
    INT64_MAX,
    NAME_PATTERN,
    Blob,
    FreeText,
    Integer,
    OptionalAppId,
    OptionalHolderId,
    OptionalOperationId,
    OptionalSecretName,
    OptionalSecretVersion,
    ServiceName,
    Text,
    TimeMs,
    TopicName,
)

#: Length of the SHA-256 digests in audit chains and dead letters, in bytes.
DIGEST_LENGTH = 32

Digest = Annotated[bytes, Blob(DIGEST_LENGTH, lengths=(DIGEST_LENGTH,), label="a SHA-256 digest")]
Counter = Annotated[int, Integer(0, INT64_MAX, label="a non-negative int")]


@message_type
@dataclass(frozen=True, repr=False)
class AuditRecord(Message):
    """One audited action (every service -> ``{p}.audit``).

    Its fields are ids, codes and a detail text, and must never contain
    secret material.

    ``action`` is a dotted name such as "request.accepted", "fetch.sent" or
    "lease.issued". Ids that do not apply are "" or 0. The records of one
    actor form a hash chain: ``sequence`` counts them and ``prev_hash`` is
    the hash of the previous record, 32 zero bytes for the first.
    """

    max_size = 64 * 1024

    at_ms: TimeMs
    actor: ServiceName
    action: Annotated[str, Text(64, ACTION_PATTERN, label='an action name such as "lease.issued"')]
    operation_id: OptionalOperationId
    app_id: OptionalAppId
    secret_name: OptionalSecretName
    secret_version: OptionalSecretVersion
    holder_id: OptionalHolderId
    outcome: Annotated[str, Text(64, NAME_PATTERN, optional=True, label="an outcome word")]
    reason: Annotated[str, Text(64, NAME_PATTERN, optional=True, label="a reason code")]
    detail: FreeText
    sequence: Counter
    prev_hash: Digest
    # NOTE: the chain has no signature scheme yet, so an empty signature is
    # accepted. The 64-byte length is an Ed25519 signature's.
    signature: Annotated[bytes, Blob(64, lengths=(0, 64), label="an Ed25519 signature or nothing")]


@message_type
@dataclass(frozen=True, repr=False)
class DeadLetter(Message):
    """A record a consumer could not decode (any consumer -> ``{p}.deadletter``).

    It carries the payload's size and SHA-256 but never the payload, because
    untrusted bytes may contain anything. ``reason`` is the DecodeError
    message, which names the field that was wrong.
    """

    max_size = 64 * 1024

    source_topic: TopicName
    partition: Annotated[int, Integer(0, 2**31 - 1, label="a partition number")]
    offset: Counter
    reason: FreeText
    payload_size: Counter
    payload_sha256: Digest
    at_ms: TimeMs
