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

from hypothesis import strategies as st

from schemas import codec
from schemas.base import MESSAGE_TYPES, Message
from shardbus.errors import DecodeError

# The valid-message strategies and their mutations live beside the schema tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "schemas"))
from hostile_mutations import field_of_wrong_kind, flipped, repacked, truncated, with_trailing  # noqa: E402
from schema_strategies import records  # noqa: E402

Payload = bytes | None


def is_rejected(payload: Payload, expected: tuple[type[Message], ...]) -> bool:
    """Tell whether a consumer expecting `expected` must reject `payload` (a tombstone is None)."""
    try:
        codec.decode(payload if payload is not None else b"", expected)
    except DecodeError:
        return True
    return False


def hostile_payloads(expected: tuple[type[Message], ...]) -> st.SearchStrategy[Payload]:
    """Return a strategy of records that a consumer of `expected` must dead-letter."""
    valid = st.sampled_from(expected).flatmap(records).map(codec.encode)
    others = sorted((cls for cls in MESSAGE_TYPES.values() if cls not in expected), key=lambda cls: cls.type_name)
    limit = codec.max_size_for(expected)
    candidates = st.one_of(
        st.none(),
        st.binary(max_size=256),
        valid.flatmap(truncated),
        valid.flatmap(flipped),
        valid.flatmap(with_trailing),
        valid.map(lambda encoded: repacked(encoded, v=2)),
        valid.map(lambda encoded: repacked(encoded, v="1")),
        valid.flatmap(field_of_wrong_kind),
        st.sampled_from(others).flatmap(records).map(codec.encode),
        # One to 64 bytes over the largest size the consumer accepts.
        st.integers(1, 64).map(lambda extra: b"\x81" + b"\x00" * (limit + extra)),
    )
    return candidates.filter(lambda payload: is_rejected(payload, expected))
