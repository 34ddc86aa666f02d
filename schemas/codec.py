"""Encode messages to msgpack and decode them back, strictly.

``decode`` is a trust boundary: its input comes from Kafka, where anyone who
can produce to a topic can write anything. It accepts only a well-formed
message of a known type and format version, and raises DecodeError for
everything else. In order, it checks:

1. the size, against the largest ``max_size`` of the expected types;
2. the msgpack encoding, with msgpack's own length limits on str, bin,
   arrays and maps, map keys restricted to str and bytes
   (``strict_map_key``), str decoded as UTF-8, ext types and trailing bytes
   rejected;
3. the top level is a map with "v" equal to ``FORMAT_VERSION`` and a "type"
   that is registered and among the expected types;
4. the type's own size limit;
5. every field: present, no field that the type does not define, the exact
   msgpack type (bool is not int, an int field is not a float), ranges,
   lengths and id patterns;
6. the rules between fields (a threshold no larger than the holder count, a
   public key as long as its KEM requires) and, for a request, that it is
   signed.

Unknown fields are rejected rather than ignored. A sender that adds a field
therefore needs every receiver to know it first, which is the price of never
acting on a field a receiver did not check.

A DecodeError message names the field, what was expected and what was found.
It never repeats a bytes value, and repeats a str only when it is short and
made of plain characters, so it is safe to log and to put in a DeadLetter.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import schemas.messages  # noqa: F401  (registers every message type)
from schemas.base import FORMAT_VERSION, MESSAGE_TYPES, Message, pack_canonical, wire_fields
from schemas.fields import MAX_BLOB_LENGTH, MAX_TEXT_LENGTH, Array, FieldError, Kind, Nested, describe
from shardbus.errors import DecodeError
from shardbus.strict_msgpack import unpack_strict

__all__ = ["decode", "encode", "max_size_for"]

# Limits handed to msgpack, so an oversized item fails inside the unpacker
# before Python allocates it. The field kinds apply tighter limits afterwards.
_MAX_STR_BYTES = 4 * MAX_TEXT_LENGTH  # A UTF-8 character takes up to 4 bytes.


def _all_kinds() -> list[Kind]:
    kinds: list[Kind] = []
    pending = [kind for cls in MESSAGE_TYPES.values() for _, kind in wire_fields(cls)]
    while pending:
        kind = pending.pop()
        kinds.append(kind)
        if isinstance(kind, Array):
            pending.append(kind.item)
        elif isinstance(kind, Nested):
            pending.extend(nested for _, nested in wire_fields(kind.record))
    return kinds


_MAX_ARRAY_ITEMS = max(kind.max_items for kind in _all_kinds() if isinstance(kind, Array))
# "v" and "type" come on top of the fields of the largest type.
_MAX_MAP_ENTRIES = 2 + max(len(wire_fields(cls)) for cls in MESSAGE_TYPES.values())


def encode(message: Message) -> bytes:
    """Encode a message as its canonical msgpack map.

    Raises TypeError for an object that is not a registered message, and
    ValueError for a message that ``decode`` would reject: one that is not
    ready to send (an unsigned request) or that exceeds its type's
    ``max_size``.
    """
    if not isinstance(message, Message) or MESSAGE_TYPES.get(message.type_name) is not type(message):
        raise TypeError(f"encode() expects a registered schemas message, got {type(message).__name__}")
    message.check_sendable()
    data = pack_canonical(message.to_wire())
    if len(data) > message.max_size:
        raise ValueError(
            f"{message.type_name} encodes to {len(data)} bytes, above its limit of "
            f"{message.max_size} bytes; send a smaller payload"
        )
    return data


@overload
def decode(data: bytes, expected: type[MessageT]) -> MessageT: ...
@overload
def decode(data: bytes, expected: tuple[type[Message], ...] | None = None) -> Message: ...


def decode(data: bytes, expected: type[Message] | tuple[type[Message], ...] | None = None) -> Message:
    """Decode one message from untrusted bytes.

    ``expected`` is the message type, or tuple of types, that the caller
    accepts; None accepts every registered type. Raises DecodeError for any
    invalid input, and TypeError when ``data`` is not bytes or ``expected``
    names a type that is not a registered message.
    """
    accepted = _accepted_types(expected)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode() expects bytes, got {type(data).__name__}")

    size = data.nbytes if isinstance(data, memoryview) else len(data)
    limit = max(cls.max_size for cls in accepted)
    if size > limit:
        raise DecodeError(f"message of {size} bytes exceeds the limit of {limit} bytes for {_names(accepted)}")

    top = _unpack(data)
    if type(top) is not dict:
        raise DecodeError(f"message: expected a msgpack map, got {describe(top)}")
    cls = _message_class(top, accepted)
    if size > cls.max_size:
        raise DecodeError(f"{cls.type_name} of {size} bytes exceeds its limit of {cls.max_size} bytes")

    fields = {key: value for key, value in top.items() if key not in ("v", "type")}
    try:
        message = cls.from_mapping(fields, cls.type_name, strict=True)
        message.check_sendable()
    except FieldError as error:
        # The error's path starts with the type name, as in "OperationPlan.threshold".
        raise DecodeError(str(error)) from None
    return message


def max_size_for(expected: type[Message] | tuple[type[Message], ...] | None = None) -> int:
    """Return the largest encoded size ``decode`` accepts for ``expected``, in bytes.

    A consumer can set its fetch limits (Kafka ``max.partition.fetch.bytes``)
    from it.
    """
    return max(cls.max_size for cls in _accepted_types(expected))


def _accepted_types(expected: type[Message] | tuple[type[Message], ...] | None) -> tuple[type[Message], ...]:
    if expected is None:
        return tuple(MESSAGE_TYPES.values())
    accepted = expected if isinstance(expected, tuple) else (expected,)
    if not accepted:
        raise TypeError("expected must name at least one message type")
    for cls in accepted:
        if not isinstance(cls, type) or MESSAGE_TYPES.get(getattr(cls, "type_name", None)) is not cls:
            raise TypeError(f"expected must contain registered message types, got {cls!r}")
    return accepted


def _unpack(data: bytes | bytearray | memoryview) -> Any:
    return unpack_strict(
        data,
        "message",
        use_list=True,
        max_str_len=_MAX_STR_BYTES,
        max_bin_len=MAX_BLOB_LENGTH,
        max_array_len=_MAX_ARRAY_ITEMS,
        max_map_len=_MAX_MAP_ENTRIES,
    )


def _message_class(top: dict[Any, Any], accepted: tuple[type[Message], ...]) -> type[Message]:
    if "v" not in top:
        raise DecodeError("message.v: expected the format version, got a map without it")
    version = top["v"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise DecodeError(f"message.v: expected format version {FORMAT_VERSION}, got {describe(version)}")

    if "type" not in top:
        raise DecodeError("message.type: expected a message type name, got a map without it")
    name = top["type"]
    if type(name) is not str:
        raise DecodeError(f"message.type: expected a message type name, got {describe(name)}")
    cls = MESSAGE_TYPES.get(name)
    if cls is None:
        raise DecodeError(f"message.type: expected a known message type, got {describe(name)}")
    if cls not in accepted:
        raise DecodeError(f"message.type: expected {_names(accepted)}, got {cls.type_name}")
    return cls


def _names(accepted: tuple[type[Message], ...]) -> str:
    if len(accepted) == len(MESSAGE_TYPES):
        return "any message type"
    return " or ".join(cls.type_name for cls in accepted)
