"""Hypothesis strategies that build valid instances of every wire type.

Values are drawn from each field's kind, then a per-type fix-up makes the
fields agree with each other (a public key as long as its KEM, a threshold
no larger than the holder count, and so on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from schemas.base import Message, WireRecord, wire_fields
from schemas.fields import (
    ACTION_PATTERN,
    HEX32_PATTERN,
    NAME_PATTERN,
    SECRET_NAME_PATTERN,
    TOPIC_PATTERN,
    Array,
    Blob,
    Boolean,
    Choice,
    Integer,
    Kind,
    Nested,
    Text,
)
from schemas.messages import (
    MESSAGE_TYPES,
    FetchCommand,
    FragmentResponse,
    HolderAck,
    HolderHeartbeat,
    HolderLifecycle,
    HolderSlot,
    LifecycleEvent,
    OperationPlan,
    OperationRequest,
    ProvisionedHolder,
    ProvisionReply,
    ProvisionRequest,
    ReleaseRequest,
)
from schemas.operations import PUBLIC_KEY_LENGTHS

# Blobs and arrays are kept small so that examples stay fast. The limits
# themselves are tested separately.
_MAX_DRAWN_BYTES = 96
_MAX_DRAWN_ITEMS = 4

names = st.from_regex(NAME_PATTERN, fullmatch=True)
hex_ids = st.from_regex(HEX32_PATTERN, fullmatch=True)
_segments = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(lambda s: s not in (".", ".."))
secret_names = st.lists(_segments, min_size=1, max_size=5).map("/".join).filter(lambda s: len(s) <= 200)
topic_names = st.from_regex(r"[A-Za-z0-9._-]{1,249}", fullmatch=True).filter(lambda s: s not in (".", ".."))

_PATTERN_STRATEGIES = {
    HEX32_PATTERN: hex_ids,
    NAME_PATTERN: names,
    SECRET_NAME_PATTERN: secret_names,
    TOPIC_PATTERN: topic_names,
    ACTION_PATTERN: st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,2}", fullmatch=True),
}


def for_kind(kind: Kind) -> st.SearchStrategy[Any]:
    """Return a strategy of valid values for one field kind."""
    if isinstance(kind, Text):
        if kind.pattern is None:
            return st.text(max_size=min(kind.max_length, 40))
        strategy = _PATTERN_STRATEGIES[kind.pattern]
        return st.just("") | strategy if kind.optional else strategy
    if isinstance(kind, Integer):
        return st.integers(kind.minimum, kind.maximum)
    if isinstance(kind, Boolean):
        return st.booleans()
    if isinstance(kind, Blob):
        if kind.lengths is not None:
            return st.sampled_from(kind.lengths).flatmap(lambda n: st.binary(min_size=n, max_size=n))
        return st.binary(min_size=kind.min_length, max_size=min(kind.max_length, _MAX_DRAWN_BYTES))
    if isinstance(kind, Choice):
        members = st.sampled_from(list(kind.enum))
        return st.just("") | members if kind.optional else members
    if isinstance(kind, Array):
        return st.lists(for_kind(kind.item), min_size=kind.min_items, max_size=max(kind.min_items, _MAX_DRAWN_ITEMS))
    if isinstance(kind, Nested):
        return records(kind.record)
    raise TypeError(f"no strategy for {kind!r}")


def _fix_public_key(key_field: str, kem_field: str) -> Callable[[Any, dict[str, Any]], None]:
    def fix(draw: Any, values: dict[str, Any]) -> None:
        length = PUBLIC_KEY_LENGTHS[values[kem_field]]
        values[key_field] = draw(st.binary(min_size=length, max_size=length))

    return fix


def _fix_signature(draw: Any, values: dict[str, Any]) -> None:
    values["signature"] = draw(st.binary(min_size=64, max_size=64))


def _fix_plan(draw: Any, values: dict[str, Any]) -> None:
    count = draw(st.integers(2, 6))
    holder_ids = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    indexes = draw(st.lists(st.integers(1, 255), min_size=count, max_size=count, unique=True))
    values["holders"] = [HolderSlot(holder_id, index) for holder_id, index in zip(holder_ids, indexes)]
    values["threshold"] = draw(st.integers(2, count))


def _fix_fragment_response(draw: Any, values: dict[str, Any]) -> None:
    if values["error"]:
        values["sealed_fragment"] = b""
    elif not values["sealed_fragment"]:
        values["sealed_fragment"] = draw(st.binary(min_size=1, max_size=_MAX_DRAWN_BYTES))


def _fix_holder_ack(draw: Any, values: dict[str, Any]) -> None:
    values["error"] = "" if values["ok"] else draw(st.text(min_size=1, max_size=40))


def _fix_provision_request(draw: Any, values: dict[str, Any]) -> None:
    if values["lifecycle"] is HolderLifecycle.PER_OPERATION and not values["operation_id"]:
        values["operation_id"] = draw(hex_ids)
    if draw(st.booleans()):
        values["secret_name"], values["secret_version"] = "", 0
    else:
        values["secret_name"] = draw(secret_names)
        values["secret_version"] = draw(st.integers(1, 2**32 - 1))


def _fix_provision_reply(draw: Any, values: dict[str, Any]) -> None:
    if draw(st.booleans()):
        values["error"] = draw(st.text(min_size=1, max_size=40))
        values["holders"] = []
        return
    values["error"] = ""
    holder_ids = draw(st.lists(names, min_size=1, max_size=_MAX_DRAWN_ITEMS, unique=True))
    values["holders"] = [
        draw(records(ProvisionedHolder, overrides={"holder_id": st.just(holder_id)})) for holder_id in holder_ids
    ]


_FIXES: dict[type[WireRecord], list[Callable[[Any, dict[str, Any]], None]]] = {
    OperationRequest: [_fix_public_key("reply_public_key", "reply_kem"), _fix_signature],
    ReleaseRequest: [_fix_signature],
    LifecycleEvent: [_fix_signature],
    OperationPlan: [_fix_public_key("reply_public_key", "reply_kem"), _fix_plan],
    FetchCommand: [_fix_public_key("reassembler_public_key", "reassembler_kem")],
    FragmentResponse: [_fix_fragment_response],
    HolderAck: [_fix_holder_ack],
    HolderHeartbeat: [_fix_public_key("public_key", "kem")],
    ProvisionedHolder: [_fix_public_key("public_key", "kem")],
    ProvisionRequest: [_fix_provision_request],
    ProvisionReply: [_fix_provision_reply],
}


@st.composite
def records(draw: Any, cls: type[WireRecord], overrides: dict[str, st.SearchStrategy[Any]] | None = None) -> Any:
    """Draw one valid instance of a wire type."""
    overrides = overrides or {}
    values = {name: draw(overrides.get(name, for_kind(kind))) for name, kind in wire_fields(cls)}
    for fix in _FIXES.get(cls, []):
        fix(draw, values)
    return cls(**values)


def messages() -> st.SearchStrategy[Message]:
    """Return a strategy drawing a valid message of any registered type."""
    return st.sampled_from(sorted(MESSAGE_TYPES.values(), key=lambda cls: cls.type_name)).flatmap(records)
