"""Unambiguous encoding of the ids bound into HKDF info, AEAD associated data and MACs.

Each field is a 4-byte big-endian length followed by its bytes: a str as
UTF-8, bytes as they are, and an int as 8 bytes big-endian unsigned. Because
every field carries its length, no two different field lists encode to the
same bytes ("a", "bc" and "ab", "c" differ), so one id can never pass for
another. The first field of every encoding is a label such as
"shardbus/v1/fragment" that names the purpose and the format version.
"""

from __future__ import annotations

MAX_INT = 2**64 - 1


def encode_field(value: str | bytes | int) -> bytes:
    """Encode one field with its 4-byte length prefix."""
    if isinstance(value, bool):
        raise TypeError("a field must be str, bytes or int, got bool")
    if isinstance(value, str):
        raw = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    elif isinstance(value, int):
        if not 0 <= value <= MAX_INT:
            raise ValueError(f"an int field must be in 0..2**64-1, got {value}")
        raw = value.to_bytes(8, "big")
    else:
        raise TypeError(f"a field must be str, bytes or int, got {type(value).__name__}")
    if len(raw) > 0xFFFFFFFF:
        raise ValueError(f"a field must be shorter than 4 GiB, got {len(raw)} bytes")
    return len(raw).to_bytes(4, "big") + raw


def encode_fields(*fields: str | bytes | int) -> bytes:
    """Encode a list of fields, each with its length prefix, in order."""
    return b"".join(encode_field(value) for value in fields)
