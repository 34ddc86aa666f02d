"""Payloads that travel inside HPKE envelopes, and the HPKE `info` labels.

These are part of the wire contract too: an application in another language
must open its lease. Each label binds an envelope to the operation and the
parties it was made for, so an envelope replayed into another operation, or
sent to another holder or app, fails to open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from shardbus.errors import DecodeError

SEALED_FORMAT_VERSION = 1
MAX_SEALED_PAYLOAD = 4 * 1024 * 1024
#: Size of a plan context's verify key and secret digest (HMAC-SHA256).
PLAN_KEY_LENGTH = 32


def lease_info(operation_id: str, app_id: str) -> bytes:
    """HPKE info for a lease sealed to an application's reply key."""
    return _label("lease", operation_id, app_id)


def plan_info(operation_id: str) -> bytes:
    """HPKE info for an operation plan's context sealed to the reassembler."""
    return _label("plan", operation_id)


def fragment_key_info(operation_id: str, holder_id: str, index: int) -> bytes:
    """HPKE info for a fragment key sealed to one holder for one fetch."""
    return _label("fragment-key", operation_id, holder_id, str(index))


def fragment_transit_info(operation_id: str, holder_id: str, index: int) -> bytes:
    """HPKE info for a fragment a holder seals to the reassembler."""
    return _label("fragment-transit", operation_id, holder_id, str(index))


def _label(kind: str, *parts: str) -> bytes:
    # Length-prefixed fields, so no choice of ids can make two labels equal.
    out = bytearray(b"shardbus/v1/" + kind.encode())
    for part in parts:
        data = part.encode()
        out += len(data).to_bytes(2, "big") + data
    return bytes(out)


@dataclass(frozen=True)
class LeasePayload:
    """What an application finds inside a LeaseReply's envelope."""

    operation_id: str
    secret: bytes = field(repr=False)
    expires_at_ms: int

    def to_bytes(self) -> bytes:
        return _pack({
            "v": SEALED_FORMAT_VERSION,
            "operation_id": self.operation_id,
            "secret": self.secret,
            "expires_at_ms": self.expires_at_ms,
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> LeasePayload:
        doc = _unpack(data, "lease", {"operation_id": str, "secret": bytes, "expires_at_ms": int})
        return cls(doc["operation_id"], doc["secret"], doc["expires_at_ms"])


@dataclass(frozen=True)
class PlanContext:
    """What the reassembler needs to verify fragments: sealed inside a plan."""

    verify_key: bytes = field(repr=False)
    commitments: dict[int, bytes] = field(repr=False)
    digest: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return _pack({
            "v": SEALED_FORMAT_VERSION,
            "verify_key": self.verify_key,
            "commitments": [[i, c] for i, c in sorted(self.commitments.items())],
            "digest": self.digest,
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> PlanContext:
        doc = _unpack(data, "plan context", {"verify_key": bytes, "commitments": list, "digest": bytes})
        commitments = {}
        for entry in doc["commitments"]:
            if (
                not isinstance(entry, list) or len(entry) != 2
                or type(entry[0]) is not int or not isinstance(entry[1], bytes)
            ):
                raise DecodeError("plan context: commitments must be [index, bytes] pairs")
            commitments[entry[0]] = entry[1]
        # combine_fragments raises ValueError for a key or digest of another
        # size, so a bad context stops here as a DecodeError instead.
        for name in ("verify_key", "digest"):
            if len(doc[name]) != PLAN_KEY_LENGTH:
                raise DecodeError(f"plan context: field {name!r} must be {PLAN_KEY_LENGTH} bytes, got {len(doc[name])}")
        return cls(doc["verify_key"], commitments, doc["digest"])


def _pack(document: dict[str, Any]) -> bytes:
    return msgpack.packb(document, use_bin_type=True)


def _unpack(data: bytes, what: str, fields: dict[str, type]) -> dict[str, Any]:
    if len(data) > MAX_SEALED_PAYLOAD:
        raise DecodeError(f"{what}: {len(data)} bytes is over the {MAX_SEALED_PAYLOAD}-byte limit")
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError(f"{what}: not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise DecodeError(f"{what}: expected a map, got {type(doc).__name__}")
    if doc.get("v") != SEALED_FORMAT_VERSION:
        raise DecodeError(f"{what}: format version {doc.get('v')!r} is not supported, expected {SEALED_FORMAT_VERSION}")
    for name, kind in fields.items():
        if name not in doc:
            raise DecodeError(f"{what}: missing field {name!r}")
        value = doc[name]
        if (kind is int and type(value) is not int) or not isinstance(value, kind):
            raise DecodeError(f"{what}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return doc
