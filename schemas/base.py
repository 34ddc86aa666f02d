"""Base classes of the wire types, the type registry and the canonical form.

A wire type is a frozen dataclass whose fields are annotated with a kind from
``schemas.fields``. Constructing one checks every field, so a message that
exists is a message the codec would accept. Nested values, such as the
entries of ``OperationPlan.holders``, are ``WireRecord`` subclasses. Top-level
messages are ``Message`` subclasses, registered under their class name. That
name is the ``type`` written on the wire.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import msgpack

from schemas.fields import FieldTypeError, FieldValueError, Kind

#: Format version written as "v" in every message. A decoder rejects any
#: other version, so a change that old decoders would misread needs a new one.
FORMAT_VERSION = 1

#: Size limit of a message whose type does not set a smaller one, in bytes:
#: a 1 MiB sealed secret or fragment plus 64 KiB for the other fields.
MAX_MESSAGE_SIZE = 2**20 + 64 * 1024

# Reprs cut strings and arrays at these lengths so a logged message stays short.
_REPR_MAX_TEXT = 80
_REPR_MAX_ITEMS = 8

_registry: dict[str, type[Message]] = {}

#: Every message type by its wire name, filled as ``schemas.messages`` loads.
MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType(_registry)

RecordT = TypeVar("RecordT", bound="WireRecord")
MessageT = TypeVar("MessageT", bound="type[Message]")


@functools.cache
def wire_fields(cls: type) -> tuple[tuple[str, Kind], ...]:
    """Return the (name, kind) pairs of a wire type, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    for field in dataclasses.fields(cls):
        metadata = getattr(hints[field.name], "__metadata__", ())
        kinds = [item for item in metadata if isinstance(item, Kind)]
        if len(kinds) != 1:
            raise TypeError(f"{cls.__name__}.{field.name} must be annotated with one field kind")
        fields.append((field.name, kinds[0]))
    return tuple(fields)


class WireRecord:
    """Base of every wire type: field checks, invariants and a safe repr.

    Subclasses are frozen dataclasses declared with ``repr=False`` so that
    this ``__repr__`` is used. It shows bytes only as ``<N bytes>``.
    """

    def __post_init__(self) -> None:
        cls = type(self)
        for name, kind in wire_fields(cls):
            value = kind.check(getattr(self, name), f"{cls.__name__}.{name}", strict=False)
            object.__setattr__(self, name, value)
        self.check_invariants()

    def check_invariants(self) -> None:
        """Raise FieldValueError when fields are valid one by one but not together."""

    def __repr__(self) -> str:
        parts = [f"{name}={_safe_repr(getattr(self, name))}" for name, _ in wire_fields(type(self))]
        return f"{type(self).__name__}({', '.join(parts)})"

    @classmethod
    def from_mapping(cls: type[RecordT], mapping: Mapping[Any, Any], path: str, strict: bool) -> RecordT:
        """Build an instance from a mapping of field names, rejecting unknown and missing fields.

        ``path`` names the mapping in errors, ``strict`` selects the codec's
        exact-type checks. Raises FieldTypeError or FieldValueError.
        """
        fields = wire_fields(cls)
        names = {name for name, _ in fields}
        for key in mapping:
            if not isinstance(key, str):
                raise FieldTypeError(path, "field names of type str", f"a key of type {type(key).__name__}")
            if key not in names:
                raise FieldValueError(path, f"only the fields of {cls.__name__}", f"the unknown field {_safe_key(key)}")
        values = {}
        for name, kind in fields:
            if name not in mapping:
                raise FieldValueError(f"{path}.{name}", "the field to be present", "a map without it")
            values[name] = kind.check(mapping[name], f"{path}.{name}", strict)
        return cls(**values)

    def to_wire(self) -> dict[str, Any]:
        """Return the fields as plain msgpack values, keys sorted."""
        return {name: _to_wire_value(getattr(self, name)) for name, _ in sorted(wire_fields(type(self)))}


class Message(WireRecord):
    """Base of the top-level messages, the ones sent on a topic."""

    #: The value of "type" on the wire, set by ``message_type``.
    type_name: ClassVar[str]
    #: Largest encoded size accepted for this type, in bytes.
    max_size: ClassVar[int] = MAX_MESSAGE_SIZE

    def check_sendable(self) -> None:
        """Raise FieldValueError when the message may exist but not go on the wire.

        ``encode`` and ``decode`` call it; construction does not. Only a
        request that is not yet signed uses it so far.
        """

    def to_wire(self) -> dict[str, Any]:
        """Return the whole message map, "v" and "type" included, keys sorted."""
        wire = super().to_wire()
        wire["type"] = self.type_name
        wire["v"] = FORMAT_VERSION
        return dict(sorted(wire.items()))


def message_type(cls: MessageT) -> MessageT:
    """Register a Message subclass under its class name."""
    name = cls.__name__
    if name in _registry:
        raise TypeError(f"message type {name} is registered twice")
    cls.type_name = name
    wire_fields(cls)  # Fail at import time if an annotation lacks its kind.
    _registry[name] = cls
    return cls


def pack_canonical(wire: Mapping[str, Any]) -> bytes:
    """Pack a map produced by ``to_wire`` into its one canonical msgpack encoding.

    Keys are sorted at every level, str is msgpack str and bytes is msgpack
    bin, and msgpack-python always picks the shortest int encoding, so equal
    messages give equal bytes. ``strict_types`` makes msgpack reject anything
    ``to_wire`` did not convert instead of guessing.
    """
    return msgpack.packb(wire, use_bin_type=True, strict_types=True)


def _to_wire_value(value: Any) -> Any:
    if isinstance(value, WireRecord):
        return value.to_wire()
    if isinstance(value, tuple):
        return [_to_wire_value(item) for item in value]
    if isinstance(value, enum.Enum):
        return str(value.value)
    return value


def _safe_repr(value: Any) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, enum.Enum):
        return repr(str(value.value))
    if isinstance(value, str) and len(value) > _REPR_MAX_TEXT:
        return repr(value[:_REPR_MAX_TEXT]) + f"...<{len(value)} chars>"
    if isinstance(value, tuple):
        items = [_safe_repr(item) for item in value[:_REPR_MAX_ITEMS]]
        if len(value) > _REPR_MAX_ITEMS:
            items.append(f"...<{len(value) - _REPR_MAX_ITEMS} more>")
        return "(" + ", ".join(items) + ")"
    return repr(value)


def _safe_key(key: str) -> str:
    # A key comes from untrusted input, so it is repeated only when it looks
    # like a field name.
    if key.isidentifier() and key.isascii() and len(key) <= 64:
        return repr(key)
    return f"of {len(key)} characters"
