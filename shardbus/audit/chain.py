"""The hash chain and signature format of audit records.

Each partition of ``{p}.audit`` carries one chain, written by one AuditLog at a
time. In a chain:

- ``sequence`` is 0 for the first record and counts up by one.
- ``prev_hash`` is the SHA-256 of the previous record's Kafka value: the
  exact bytes on the topic, signature included. The first record has 32 zero
  bytes. Hashing the stored bytes, rather than a re-encoding, lets a verifier
  check the chain without trusting its own decoder to reproduce the writer's
  bytes.
- ``signature`` is Ed25519, by the deployment's audit key, over::

      b"shardbus audit record v1\\x00" || partition (4 bytes, big endian)
          || codec.encode(record with signature = b"")

  The encoding is the canonical msgpack map of ``schemas.codec``. The
  context string keeps these signatures apart from any other use of the key,
  and the partition number stops a signed record from being copied into
  another partition's chain.

A chain shows a dropped, altered, inserted or reordered record. It cannot
show that its newest records were removed, because nothing signs the head.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from schemas.base import pack_canonical
from schemas.audit import DIGEST_LENGTH, AuditRecord
from shardbus.crypto.signing import SigningKey, VerifyKey, sign, verify
from shardbus.errors import ConfigError, DecodeError

#: ``prev_hash`` of the first record of a chain.
GENESIS_HASH = bytes(DIGEST_LENGTH)

#: Prefix of the bytes that an audit signature covers.
SIGNATURE_CONTEXT = b"shardbus audit record v1\x00"

#: Largest partition number: Kafka numbers partitions with a signed 32-bit int.
MAX_PARTITION = 2**31 - 1


def record_hash(value: bytes) -> bytes:
    """Return the SHA-256 of a record's Kafka value, which the next record's ``prev_hash`` must equal."""
    return hashlib.sha256(bytes(value)).digest()


def signed_bytes(record: AuditRecord, partition: int) -> bytes:
    """Return the bytes that the signature of `record` on `partition` covers."""
    if not isinstance(record, AuditRecord):
        raise TypeError(f"record must be an AuditRecord, got {type(record).__name__}")
    if type(partition) is not int or not 0 <= partition <= MAX_PARTITION:
        raise ValueError(f"partition must be an int from 0 to {MAX_PARTITION}, got {partition!r}")
    # The same bytes as codec.encode(record with signature=b""), without
    # building and checking a second record.
    wire = record.to_wire()
    wire["signature"] = b""
    return SIGNATURE_CONTEXT + partition.to_bytes(4, "big") + pack_canonical(wire)


def sign_record(record: AuditRecord, partition: int, key: SigningKey) -> AuditRecord:
    """Return `record` with its signature for `partition` set."""
    return dataclasses.replace(record, signature=sign(key, signed_bytes(record, partition)))


def verify_record(record: AuditRecord, partition: int, key: VerifyKey) -> None:
    """Raise IntegrityError unless `record` carries a valid signature for `partition`.

    A record without a signature fails like a record with a wrong one.
    """
    verify(key, signed_bytes(record, partition), record.signature)


def load_signing_key(path: Path) -> SigningKey:
    """Read the audit signing key (PEM PKCS#8, ``audit.key`` in the deployment folder)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit key {path}: {exc.strerror}; run 'shardbus init' first") from None
    try:
        return SigningKey.from_pem(data)
    except ValueError as exc:
        raise ConfigError(f"audit key {path}: {exc}") from None


def load_verify_key(path: Path) -> VerifyKey:
    """Read the audit public key (PEM SubjectPublicKeyInfo, ``audit.pub`` in the deployment folder)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the audit public key {path}: {exc.strerror}; "
            "copy audit.pub from the deployment folder or give its path with --public-key"
        ) from None
    try:
        return VerifyKey.from_pem(data)
    except DecodeError as exc:
        raise ConfigError(f"audit public key {path}: {exc}") from None
