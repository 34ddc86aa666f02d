"""Hypothesis strategies for hostile Kafka records: mutated valid messages and random bytes.

Each strategy draws records that a consumer expecting `expected` must
reject: a tombstone, random bytes, a valid message truncated, with a byte
flipped or trailing bytes, re-packed with another format version or a field
of the wrong msgpack type, a valid message of another type, or a record
over the size limit. Only records that ``codec.decode`` rejects are drawn,
so a test can expect one dead letter for each.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import strategies as st

from schemas import codec
from schemas.base import MESSAGE_TYPES, Message
from shardbus.errors import DecodeError

# The valid-message strategies live beside the schema tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "schemas"))
from schema_strategies import records  # noqa: E402

Payload = bytes | None


def is_rejected(payload: Payload, expected: tuple[type[Message], ...]) -> bool:
    """Tell whether a consumer expecting `expected` must reject `payload` (a tombstone is None)."""
    try:
        codec.decode(payload if payload is not None else b"", expected)
    except DecodeError:
        return True
    return False


def _unpacked(encoded: bytes) -> dict[str, Any]:
    return msgpack.unpackb(encoded, raw=False)


def _repacked(encoded: bytes, **changes: Any) -> bytes:
    return msgpack.packb({**_unpacked(encoded), **changes}, use_bin_type=True)


def _wrong_kind(value: Any) -> Any:
    """Return a value of another msgpack type than `value`."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.encode() or b"\x00"
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return {"item": value[:1]}
    return [value]


@st.composite
def _truncated(draw: Any, encoded: bytes) -> bytes:
    return encoded[: draw(st.integers(0, len(encoded) - 1))]


@st.composite
def _flipped(draw: Any, encoded: bytes) -> bytes:
    index = draw(st.integers(0, len(encoded) - 1))
    mask = draw(st.integers(1, 255))
    return encoded[:index] + bytes([encoded[index] ^ mask]) + encoded[index + 1:]


@st.composite
def _trailing(draw: Any, encoded: bytes) -> bytes:
    return encoded + draw(st.binary(min_size=1, max_size=16))


@st.composite
def _field_of_wrong_kind(draw: Any, encoded: bytes) -> bytes:
    document = _unpacked(encoded)
    name = draw(st.sampled_from(sorted(key for key in document if key not in ("v", "type"))))
    return _repacked(encoded, **{name: _wrong_kind(document[name])})


def hostile_payloads(expected: tuple[type[Message], ...]) -> st.SearchStrategy[Payload]:
    """Return a strategy of records that a consumer of `expected` must dead-letter."""
    valid = st.sampled_from(expected).flatmap(records).map(codec.encode)
    others = sorted((cls for cls in MESSAGE_TYPES.values() if cls not in expected), key=lambda cls: cls.type_name)
    limit = codec.max_size_for(expected)
    candidates = st.one_of(
        st.none(),
        st.binary(max_size=256),
        valid.flatmap(_truncated),
        valid.flatmap(_flipped),
        valid.flatmap(_trailing),
        valid.map(lambda encoded: _repacked(encoded, v=2)),
        valid.map(lambda encoded: _repacked(encoded, v="1")),
        valid.flatmap(_field_of_wrong_kind),
        st.sampled_from(others).flatmap(records).map(codec.encode),
        # One to 64 bytes over the largest size the consumer accepts.
        st.integers(1, 64).map(lambda extra: b"\x81" + b"\x00" * (limit + extra)),
    )
    return candidates.filter(lambda payload: is_rejected(payload, expected))
