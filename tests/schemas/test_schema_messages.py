"""Message construction: field checks, normalization, invariants, reprs, signing bytes."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given
from schema_strategies import messages, records

from schemas.base import FORMAT_VERSION, MESSAGE_TYPES
from schemas.codec import decode, encode
from schemas.fields import FieldTypeError, FieldValueError
from schemas.messages import (
    AuditRecord,
    DeadLetter,
    DestroyFragment,
    ErrorReply,
    EventKind,
    FetchCommand,
    FragmentError,
    FragmentResponse,
    HolderAck,
    HolderHeartbeat,
    HolderSlot,
    Kem,
    LeaseReply,
    LifecycleEvent,
    LoadedFragment,
    Operation,
    OperationPlan,
    OperationRequest,
    ProvisionedHolder,
    ProvisionReply,
    ProvisionRequest,
    Reason,
    ReleaseRequest,
    StoreFragment,
)

OPERATION_ID = "0123456789abcdef0123456789abcdef"
REQUEST_ID = "fedcba9876543210fedcba9876543210"
BLOB = b"\x01SECRET-BYTES\xff"


def make_request(**changes: object) -> OperationRequest:
    fields: dict[str, object] = {
        "operation_id": OPERATION_ID,
        "app_id": "billing",
        "secret_name": "db/password",
        "operation": "lease",
        "reply_public_key": bytes(range(32)),
        "reply_kem": "x25519",
        "issued_at_ms": 1_700_000_000_000,
        "signature": b"\x07" * 64,
    }
    fields.update(changes)
    return OperationRequest(**fields)


def make_plan(**changes: object) -> OperationPlan:
    fields: dict[str, object] = {
        "operation_id": OPERATION_ID,
        "app_id": "billing",
        "secret_name": "db/password",
        "secret_version": 3,
        "operation": "lease",
        "threshold": 2,
        "holders": [{"holder_id": "h1", "index": 1}, HolderSlot("h2", 2)],
        "reply_public_key": bytes(1216),
        "reply_kem": "mlkem768-x25519",
        "deadline_ms": 1_700_000_005_000,
        "lease_ttl_ms": 60_000,
        "sealed_context": BLOB,
    }
    fields.update(changes)
    return OperationPlan(**fields)


def test_registry_lists_every_type():
    assert sorted(MESSAGE_TYPES) == sorted(
        cls.__name__
        for cls in (
            OperationRequest, OperationPlan, FetchCommand, StoreFragment, DestroyFragment, HolderAck,
            FragmentResponse, LeaseReply, ErrorReply, LifecycleEvent, HolderHeartbeat, ProvisionRequest,
            ProvisionReply, AuditRecord, DeadLetter, ReleaseRequest,
        )
    )
    for name, cls in MESSAGE_TYPES.items():
        assert cls.type_name == name
    assert FORMAT_VERSION == 1


def test_reason_codes_are_stable():
    assert [reason.value for reason in Reason] == [
        "invalid_request", "unknown_app", "bad_signature", "stale_request", "replayed_operation",
        "not_granted", "secret_not_found", "fragment_missing", "fragment_corrupted",
        "audit_unavailable", "internal_error",
    ]


def test_event_kinds_are_stable():
    assert [kind.value for kind in EventKind] == [
        "holder_provisioned", "holder_ready", "holder_failed", "holder_replaced", "holder_torn_down",
        "holder_returned", "holders_released", "holders_loaded", "operation_completed", "lease_released",
        "lease_expired",
    ]


# Normalization


def test_strings_become_enum_members():
    request = make_request()
    assert request.operation is Operation.LEASE
    assert request.reply_kem is Kem.X25519
    assert make_plan().reply_kem is Kem.MLKEM768_X25519


def test_lists_become_tuples_and_maps_become_records():
    plan = make_plan()
    assert plan.holders == (HolderSlot("h1", 1), HolderSlot("h2", 2))
    assert isinstance(plan.holders, tuple)


def test_bytearray_becomes_bytes():
    request = make_request(signature=bytearray(64))
    assert type(request.signature) is bytes


def test_messages_are_frozen_and_hashable():
    request = make_request()
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.app_id = "other"  # type: ignore[misc]
    assert hash(request) == hash(make_request())
    assert hash(make_plan()) == hash(make_plan())


def test_replace_rechecks_fields():
    request = make_request(signature=b"")
    signed = dataclasses.replace(request, signature=b"\x01" * 64)
    assert signed.signature == b"\x01" * 64
    with pytest.raises(FieldValueError):
        dataclasses.replace(request, signature=b"\x01" * 63)


# Field checks at construction


def test_caller_mistakes_raise_type_and_value_errors():
    with pytest.raises(TypeError, match="OperationRequest.issued_at_ms"):
        make_request(issued_at_ms=True)
    with pytest.raises(TypeError, match="OperationRequest.issued_at_ms"):
        make_request(issued_at_ms=1.0)
    with pytest.raises(TypeError, match="OperationRequest.signature"):
        make_request(signature="x" * 64)
    with pytest.raises(ValueError, match="OperationRequest.app_id"):
        make_request(app_id="billing app")
    with pytest.raises(ValueError, match="OperationRequest.operation"):
        make_request(operation="sign")
    with pytest.raises(ValueError, match="OperationRequest.signature"):
        make_request(signature=b"\x00" * 32)


def test_field_errors_are_both_kinds():
    with pytest.raises(FieldTypeError):
        make_request(app_id=7)
    with pytest.raises(FieldValueError):
        make_request(app_id="")


def test_secret_name_rules():
    for name in ["db/password", "a", "a.b/c_d/e-f", "x" * 200, ".hidden/..dots/a..b"]:
        assert make_request(secret_name=name).secret_name == name
    for name in ["", "/db", "db/", "db//x", "db/../x", "..", ".", "./x", "x" * 201, "db x", "db\n", "ü"]:
        with pytest.raises(ValueError, match="OperationRequest.secret_name"):
            make_request(secret_name=name)


def test_operation_id_rules():
    for bad in ["", OPERATION_ID.upper(), OPERATION_ID[:-1], OPERATION_ID + "0", "z" * 32]:
        with pytest.raises(ValueError, match="operation_id"):
            make_request(operation_id=bad)


def test_public_key_length_follows_kem():
    with pytest.raises(ValueError, match="1216 bytes for a 'mlkem768-x25519' public key"):
        make_request(reply_kem="mlkem768-x25519")
    with pytest.raises(ValueError, match="32 bytes for a 'x25519' public key"):
        make_plan(reply_kem="x25519")
    with pytest.raises(ValueError, match="HolderHeartbeat.public_key"):
        HolderHeartbeat("h1", 1, bytes(32), "mlkem768-x25519", 100, "ready", [])
    with pytest.raises(ValueError, match="ProvisionedHolder.public_key"):
        ProvisionedHolder("h1", bytes(1216), "x25519")
    with pytest.raises(ValueError, match="FetchCommand.reassembler_public_key"):
        FetchCommand(OPERATION_ID, "h1", "db/pw", 1, 1, BLOB, bytes(1216), "x25519", 5)


# Invariants between fields


def test_plan_threshold_and_holders():
    with pytest.raises(ValueError, match="at most the number of holders"):
        make_plan(threshold=3)
    with pytest.raises(ValueError, match="OperationPlan.threshold"):
        make_plan(threshold=1)
    with pytest.raises(ValueError, match="distinct holder ids"):
        make_plan(holders=[HolderSlot("h1", 1), HolderSlot("h1", 2)])
    with pytest.raises(ValueError, match="distinct fragment indexes"):
        make_plan(holders=[HolderSlot("h1", 1), HolderSlot("h2", 1)])
    with pytest.raises(ValueError, match="holders"):
        make_plan(holders=[HolderSlot("h1", 1)])
    with pytest.raises(ValueError, match="fragment index"):
        HolderSlot("h1", 0)


def test_fragment_response_has_fragment_or_error():
    assert FragmentResponse(OPERATION_ID, "h1", 1, BLOB, "").error == ""
    assert FragmentResponse(OPERATION_ID, "h1", 1, b"", "not_loaded").error is FragmentError.NOT_LOADED
    with pytest.raises(ValueError, match="sealed_fragment"):
        FragmentResponse(OPERATION_ID, "h1", 1, BLOB, "expired")
    with pytest.raises(ValueError, match="sealed_fragment"):
        FragmentResponse(OPERATION_ID, "h1", 1, b"", "")
    with pytest.raises(ValueError, match="FragmentResponse.error"):
        FragmentResponse(OPERATION_ID, "h1", 1, b"", "timeout")


def test_holder_ack_error_matches_ok():
    assert HolderAck("h1", REQUEST_ID, True, "").ok is True
    assert HolderAck("h1", REQUEST_ID, False, "disk full").error == "disk full"
    with pytest.raises(ValueError, match="HolderAck.error"):
        HolderAck("h1", REQUEST_ID, True, "disk full")
    with pytest.raises(ValueError, match="HolderAck.error"):
        HolderAck("h1", REQUEST_ID, False, "")
    with pytest.raises(TypeError, match="HolderAck.ok"):
        HolderAck("h1", REQUEST_ID, 1, "")  # type: ignore[arg-type]


def test_provision_request_rules():
    pooled = ProvisionRequest(REQUEST_ID, 3, "pooled", "", "", 0, "shardbus.provisioner.replies")
    assert pooled.operation_id == ""
    with pytest.raises(ValueError, match="per_operation"):
        ProvisionRequest(REQUEST_ID, 3, "per_operation", "", "db/pw", 1, "reply")
    with pytest.raises(ValueError, match="secret_version"):
        ProvisionRequest(REQUEST_ID, 3, "pooled", "", "db/pw", 0, "reply")
    with pytest.raises(ValueError, match="secret_version"):
        ProvisionRequest(REQUEST_ID, 3, "pooled", "", "", 2, "reply")
    with pytest.raises(ValueError, match="count"):
        ProvisionRequest(REQUEST_ID, 0, "pooled", "", "", 0, "reply")
    with pytest.raises(ValueError, match="count"):
        ProvisionRequest(REQUEST_ID, 256, "pooled", "", "", 0, "reply")
    with pytest.raises(ValueError, match="reply_topic"):
        ProvisionRequest(REQUEST_ID, 1, "pooled", "", "", 0, "..")


def test_provision_reply_rules():
    holder = ProvisionedHolder("h1", bytes(32), "x25519")
    assert ProvisionReply(REQUEST_ID, [holder], "").holders == (holder,)
    assert ProvisionReply(REQUEST_ID, [], "pool empty").error == "pool empty"
    with pytest.raises(ValueError, match="no holders because error is set"):
        ProvisionReply(REQUEST_ID, [holder], "pool empty")
    with pytest.raises(ValueError, match="at least one holder"):
        ProvisionReply(REQUEST_ID, [], "")
    with pytest.raises(ValueError, match="distinct holder ids"):
        ProvisionReply(REQUEST_ID, [holder, holder], "")


def test_optional_fields_accept_empty():
    event = LifecycleEvent("lease_released", 5, "", "", "", 0, "", [])
    assert event.event is EventKind.LEASE_RELEASED
    assert DestroyFragment("h1", "db/pw", 0, REQUEST_ID).secret_version == 0
    with pytest.raises(ValueError, match="StoreFragment.secret_version"):
        StoreFragment("h1", "db/pw", 0, 1, 1, BLOB, REQUEST_ID)


def test_audit_record_chain_fields():
    record = AuditRecord(
        5, "authorizer", "request.accepted", OPERATION_ID, "billing", "db/pw", 1, "", "ok", "", "", 0, bytes(32), b""
    )
    assert record.prev_hash == bytes(32)
    with pytest.raises(ValueError, match="AuditRecord.prev_hash"):
        dataclasses.replace(record, prev_hash=bytes(31))
    with pytest.raises(ValueError, match="AuditRecord.signature"):
        dataclasses.replace(record, signature=bytes(10))
    with pytest.raises(ValueError, match="AuditRecord.action"):
        dataclasses.replace(record, action="Request Accepted")


# Reprs


def test_repr_hides_bytes():
    plan = make_plan(sealed_context=BLOB)
    text = repr(plan)
    assert "SECRET" not in text
    assert "sealed_context=<14 bytes>" in text
    assert "reply_public_key=<1216 bytes>" in text
    assert "reply_kem='mlkem768-x25519'" in text
    assert "HolderSlot(holder_id='h1', index=1)" in text


def test_repr_shortens_long_values():
    reply = ErrorReply(OPERATION_ID, "billing", "internal_error", "d" * 2000, [f"h{i}" for i in range(20)])
    text = repr(reply)
    assert "<2000 chars>" in text
    assert "<12 more>" in text
    assert len(text) < 400


def byte_values(value: object) -> list[bytes]:
    """Collect every bytes value in a wire object, nested records included."""
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, tuple):
        return [found for item in value for found in byte_values(item)]
    if dataclasses.is_dataclass(value):
        return [found for field in dataclasses.fields(value) for found in byte_values(getattr(value, field.name))]
    return []


@given(messages())
def test_repr_never_shows_bytes_content(message):
    text = repr(message)
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if isinstance(value, bytes):
            assert f"{field.name}=<{len(value)} bytes>" in text
    for value in byte_values(message):
        if value:
            assert repr(value) not in text


def test_repr_of_nested_bytes():
    heartbeat = HolderHeartbeat("h1", 1, bytes(32), "x25519", 42, "ready", [LoadedFragment("db/pw", 1, 2)])
    reply = ProvisionReply(REQUEST_ID, [ProvisionedHolder("h1", b"\x05" * 32, "x25519")], "")
    assert "public_key=<32 bytes>" in repr(heartbeat)
    assert "ProvisionedHolder(holder_id='h1', public_key=<32 bytes>, kem='x25519')" in repr(reply)


# Signing bytes


def test_signing_bytes_excludes_signature():
    request = make_request()
    document = msgpack.unpackb(request.signing_bytes(), raw=False)
    assert "signature" not in document
    assert document["v"] == 1
    assert document["type"] == "OperationRequest"
    assert set(document) == {"v", "type"} | {field.name for field in dataclasses.fields(OperationRequest)} - {"signature"}
    assert make_request(signature=b"\x09" * 64).signing_bytes() == request.signing_bytes()
    assert make_request(signature=b"").signing_bytes() == request.signing_bytes()


def test_signing_bytes_are_canonical():
    request = make_request()
    document = msgpack.unpackb(request.signing_bytes(), raw=False)
    assert list(document) == sorted(document)
    # Reordering the keywords or the received map changes nothing.
    keywords = {field.name: getattr(request, field.name) for field in dataclasses.fields(OperationRequest)}
    reordered = OperationRequest(**dict(reversed(list(keywords.items()))))
    assert reordered.signing_bytes() == request.signing_bytes()


def test_signing_bytes_known_answer():
    # Written out by hand from the canonical rules, so a change to the
    # encoding (key order, int width, str or bin type) fails here.
    request = make_request()
    expected = (
        b"\x89"
        + b"\xa6app_id" + b"\xa7billing"
        + b"\xacissued_at_ms" + b"\xcf" + (1_700_000_000_000).to_bytes(8, "big")
        + b"\xa9operation" + b"\xa5lease"
        + b"\xacoperation_id" + b"\xd9\x20" + OPERATION_ID.encode()
        + b"\xa9reply_kem" + b"\xa6x25519"
        + b"\xb0reply_public_key" + b"\xc4\x20" + bytes(range(32))
        + b"\xabsecret_name" + b"\xabdb/password"
        + b"\xa4type" + b"\xb0OperationRequest"
        + b"\xa1v" + b"\x01"
    )
    assert request.signing_bytes() == expected


@given(records(OperationRequest), records(OperationRequest))
def test_signing_bytes_differ_when_fields_differ(first, second):
    unsigned_first = dataclasses.replace(first, signature=b"")
    unsigned_second = dataclasses.replace(second, signature=b"")
    assert (first.signing_bytes() == second.signing_bytes()) == (unsigned_first == unsigned_second)


def make_release(**changes: object) -> ReleaseRequest:
    fields: dict[str, object] = {
        "operation_id": OPERATION_ID,
        "app_id": "billing",
        "released_at_ms": 1_700_000_000_000,
        "signature": b"\x07" * 64,
    }
    fields.update(changes)
    return ReleaseRequest(**fields)


def test_release_signing_bytes_known_answer():
    expected = (
        b"shardbus/v1/release\x00"
        + b"\x85"
        + b"\xa6app_id" + b"\xa7billing"
        + b"\xacoperation_id" + b"\xd9\x20" + OPERATION_ID.encode()
        + b"\xaereleased_at_ms" + b"\xcf" + (1_700_000_000_000).to_bytes(8, "big")
        + b"\xa4type" + b"\xaeReleaseRequest"
        + b"\xa1v" + b"\x01"
    )
    assert make_release().signing_bytes() == expected
    assert make_release(signature=b"").signing_bytes() == expected


def test_release_signing_bytes_never_equal_request_ones():
    # A request's signing bytes start with a msgpack map header, a release's with its label.
    assert make_request().signing_bytes()[0] in range(0x80, 0x90)
    assert make_release().signing_bytes()[0] == ord("s")


@given(records(OperationRequest), records(ReleaseRequest))
def test_release_and_request_signing_domains_differ(request, release):
    assert request.signing_bytes() != release.signing_bytes()
    assert not release.signing_bytes().startswith(request.signing_bytes()[:1])


def test_unsigned_release_not_sendable():
    unsigned = make_release(signature=b"")
    with pytest.raises(FieldValueError, match="ReleaseRequest.signature"):
        encode(unsigned)
    assert decode(encode(make_release()), ReleaseRequest) == make_release()
