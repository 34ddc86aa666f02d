"""Payloads inside HPKE envelopes: round trips, labels and rejections."""

from __future__ import annotations

import msgpack
import pytest

from schemas.sealed import (
    LeasePayload,
    PlanContext,
    fragment_key_info,
    fragment_transit_info,
    lease_info,
    plan_info,
)
from shardbus.errors import DecodeError

OP = "0" * 32


def test_lease_payload_round_trip():
    payload = LeasePayload(OP, b"hunter2", 1_700_000_000_000)
    assert LeasePayload.from_bytes(payload.to_bytes()) == payload
    assert "hunter2" not in repr(payload)


def test_plan_context_round_trip():
    context = PlanContext(b"k" * 32, {1: b"a" * 32, 2: b"b" * 32}, b"d" * 32)
    assert PlanContext.from_bytes(context.to_bytes()) == context
    assert "kkkk" not in repr(context)


def test_info_labels_are_distinct():
    labels = {
        lease_info(OP, "app"),
        plan_info(OP),
        fragment_key_info(OP, "h1", 1),
        fragment_transit_info(OP, "h1", 1),
        fragment_transit_info(OP, "h1", 11),
        fragment_transit_info(OP, "h11", 1),
    }
    assert len(labels) == 6


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "expected a map"),
        (msgpack.packb({"v": 2}), "format version"),
        (msgpack.packb({"v": 1, "operation_id": OP, "expires_at_ms": 1}), "missing field 'secret'"),
        (msgpack.packb({"v": 1, "operation_id": OP, "secret": "text", "expires_at_ms": 1}), "must be bytes"),
        (msgpack.packb({"v": 1, "operation_id": OP, "secret": b"x", "expires_at_ms": True}), "must be int"),
    ],
)
def test_lease_payload_rejects(data, fragment):
    with pytest.raises(DecodeError, match=fragment):
        LeasePayload.from_bytes(data)


def test_plan_context_rejects_bad_commitments():
    data = msgpack.packb({"v": 1, "verify_key": b"k", "commitments": [[1]], "digest": b"d"})
    with pytest.raises(DecodeError, match="pairs"):
        PlanContext.from_bytes(data)


@pytest.mark.parametrize("field", ["verify_key", "digest"])
def test_plan_context_rejects_wrong_key_sizes(field):
    document = {"v": 1, "verify_key": b"k" * 32, "commitments": [[1, b"c" * 32]], "digest": b"d" * 32}
    document[field] = document[field][:31]
    with pytest.raises(DecodeError, match=f"plan context: field '{field}' must be 32 bytes, got 31"):
        PlanContext.from_bytes(msgpack.packb(document))
