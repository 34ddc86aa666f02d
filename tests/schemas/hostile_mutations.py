"""Hypothesis strategies that turn valid encodings into hostile ones.

Every encoding gets random bytes, and valid encodings truncated, with a
byte flipped or with bytes appended. Msgpack maps also get random maps, and
valid maps with one field removed, added, or given a value of another type.
decoder_targets.py and the end-to-end burst in tests/e2e/hostile_payloads.py
draw from these.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import strategies as st

#: Any value msgpack can carry, nested a few levels deep.
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10) | st.binary(max_size=4), children, max_size=4),
    max_leaves=12,
)

#: Maps of text keys to any msgpack value, packed.
random_maps = st.dictionaries(st.text(max_size=10), msgpack_values, max_size=6).map(
    lambda document: msgpack.packb(document, use_bin_type=True)
)


def unpacked(encoded: bytes) -> dict[str, Any]:
    """Return the msgpack map of a valid encoding."""
    return msgpack.unpackb(encoded, raw=False, strict_map_key=False)


def repacked(encoded: bytes, **changes: Any) -> bytes:
    """Return `encoded` packed again with some fields changed."""
    return msgpack.packb({**unpacked(encoded), **changes}, use_bin_type=True)


def wrong_kind(value: Any) -> Any:
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
def truncated(draw: Any, encoded: bytes) -> bytes:
    return encoded[: draw(st.integers(0, len(encoded) - 1))]


@st.composite
def flipped(draw: Any, encoded: bytes) -> bytes:
    index = draw(st.integers(0, len(encoded) - 1))
    mask = draw(st.integers(1, 255))
    return encoded[:index] + bytes([encoded[index] ^ mask]) + encoded[index + 1:]


@st.composite
def with_trailing(draw: Any, encoded: bytes) -> bytes:
    return encoded + draw(st.binary(min_size=1, max_size=16))


@st.composite
def field_of_wrong_kind(draw: Any, encoded: bytes, *, keep: tuple[str, ...] = ("v", "type")) -> bytes:
    """Return `encoded` with one field, other than those in `keep`, given a value of another type."""
    document = unpacked(encoded)
    names = sorted(str(key) for key in document if key not in keep)
    if not names:
        return encoded
    name = draw(st.sampled_from(names))
    return repacked(encoded, **{name: wrong_kind(document[name])})


@st.composite
def field_replaced(draw: Any, encoded: bytes) -> bytes:
    """Return `encoded` with one field replaced by any msgpack value."""
    document = unpacked(encoded)
    name = draw(st.sampled_from(sorted(document, key=str)))
    document[name] = draw(msgpack_values)
    return msgpack.packb(document, use_bin_type=True)


@st.composite
def field_removed(draw: Any, encoded: bytes) -> bytes:
    document = unpacked(encoded)
    del document[draw(st.sampled_from(sorted(document, key=str)))]
    return msgpack.packb(document, use_bin_type=True)


@st.composite
def field_added(draw: Any, encoded: bytes) -> bytes:
    document = unpacked(encoded)
    document[draw(st.text(max_size=10))] = draw(msgpack_values)
    return msgpack.packb(document, use_bin_type=True)


def byte_mutations(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Return random bytes and valid encodings truncated, with a byte flipped or with bytes appended."""
    return st.one_of(
        st.binary(max_size=512),
        valid.flatmap(truncated),
        valid.flatmap(flipped),
        valid.flatmap(with_trailing),
    )


def map_mutations(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Return byte mutations, random maps, and valid msgpack maps with one field changed."""
    return st.one_of(
        byte_mutations(valid),
        random_maps,
        valid.flatmap(field_of_wrong_kind),
        valid.flatmap(field_replaced),
        valid.flatmap(field_removed),
        valid.flatmap(field_added),
    )
