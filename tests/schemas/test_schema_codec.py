"""The codec: round trips of every type and every way decode rejects input."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schema_strategies import messages, records

from schemas.base import MAX_MESSAGE_SIZE, Message, wire_fields
from schemas.codec import decode, encode, max_size_for
from schemas.fields import HEX32_PATTERN, MAX_BLOB_LENGTH, Array, Blob, Boolean, Choice, Integer, Kind, Nested, Text
from schemas.messages import (
    MESSAGE_TYPES,
    ErrorReply,
    FragmentResponse,
    HolderAck,
    HolderSlot,
    LeaseReply,
    OperationPlan,
    OperationRequest,
    ProvisionReply,
    Reason,
)
from shardbus.errors import DecodeError

OPERATION_ID = "0123456789abcdef0123456789abcdef"
SECRET_BYTES = b"\x01SECRET-BYTES\xff"


def make_request(**changes: object) -> OperationRequest:
    fields: dict[str, object] = {
        "operation_id": OPERATION_ID,
        "app_id": "billing",
        "secret_name": "db/password",
        "operation": "lease",
        "reply_public_key": bytes(range(32)),
        "reply_kem": "x25519",
        "issued_at_ms": 1_700_000_000_000,
        "signature": bytes(64),
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
        "holders": [HolderSlot("h1", 1), HolderSlot("h2", 2), HolderSlot("h3", 3)],
        "reply_public_key": bytes(32),
        "reply_kem": "x25519",
        "deadline_ms": 1_700_000_005_000,
        "lease_ttl_ms": 60_000,
        "sealed_context": SECRET_BYTES,
    }
    fields.update(changes)
    return OperationPlan(**fields)


def largest_value(kind: Kind, index: int = 0) -> object:
    """Return the largest valid value of a kind; ``index`` keeps array items distinct."""
    if isinstance(kind, Text):
        if kind.pattern is None:
            return "\U0010ffff" * kind.max_length  # 4 bytes each in UTF-8
        if kind.pattern == HEX32_PATTERN:
            return f"{index:032x}"
        return (f"a{index}" + "a" * kind.max_length)[: kind.max_length]
    if isinstance(kind, Integer):
        return max(kind.minimum, kind.maximum - index)
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, Blob):
        return b"\xff" * max(kind.lengths or (kind.max_length,))
    if isinstance(kind, Choice):
        return max((member for member in kind.enum), key=lambda member: len(member.value))
    if isinstance(kind, Array):
        return [largest_value(kind.item, item_index) for item_index in range(kind.max_items)]
    if isinstance(kind, Nested):
        return kind.record(**{name: largest_value(field, index) for name, field in wire_fields(kind.record)})
    raise TypeError(kind)


def largest(cls: type[Message]) -> Message:
    values = {name: largest_value(kind) for name, kind in wire_fields(cls)}
    # Where two fields exclude each other, keep the larger one.
    if cls is FragmentResponse or cls is ProvisionReply:
        values["error"] = ""
    return cls(**values)


def wire_of(message: Message) -> dict[str, object]:
    return message.to_wire()


def pack(document: object) -> bytes:
    return msgpack.packb(document, use_bin_type=True)


def decode_error(data: bytes, expected: object = None) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(data, expected)  # type: ignore[arg-type]
    return str(caught.value)


# Round trips


@given(messages())
def test_round_trip_every_type(message):
    data = encode(message)
    decoded = decode(data)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == data


@pytest.mark.parametrize("cls", sorted(MESSAGE_TYPES.values(), key=lambda cls: cls.type_name), ids=lambda c: c.type_name)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_with_expected_type(cls, data):
    message = data.draw(records(cls))
    assert decode(encode(message), cls) == message
    assert decode(encode(message), (cls, ErrorReply)) == message


def test_encoding_carries_version_and_type():
    document = msgpack.unpackb(encode(make_request()), raw=False)
    assert document["v"] == 1
    assert document["type"] == "OperationRequest"
    assert isinstance(document["reply_public_key"], bytes)


def test_encoding_sorts_keys():
    document = msgpack.unpackb(encode(make_plan()), raw=False)
    assert list(document) == sorted(document)
    assert list(document["holders"][0]) == ["holder_id", "index"]


def test_signing_bytes_ignore_received_key_order():
    request = make_request()
    shuffled = dict(reversed(list(wire_of(request).items())))
    data = pack(shuffled)
    assert data != encode(request)
    assert decode(data, OperationRequest).signing_bytes() == request.signing_bytes()


def test_decoded_enums_are_members():
    decoded = decode(encode(ErrorReply(OPERATION_ID, "billing", "not_granted", "no rule", [])))
    assert decoded.reason is Reason.NOT_GRANTED
    assert decoded.holders == ()


def test_largest_lease_fits():
    reply = LeaseReply(OPERATION_ID, "billing", 1, b"\x00" * MAX_BLOB_LENGTH)
    assert decode(encode(reply), LeaseReply) == reply


# Framing: size, msgpack, top level


def test_truncated_bytes_rejected():
    data = encode(make_plan())
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:length])


def test_empty_input_rejected():
    assert "not valid msgpack" in decode_error(b"")


def test_trailing_bytes_rejected():
    assert "trailing bytes" in decode_error(encode(make_request()) + b"\xc0")


def test_oversized_rejected_before_parsing():
    message = decode_error(b"\x00" * (MAX_MESSAGE_SIZE + 1))
    assert f"{MAX_MESSAGE_SIZE + 1} bytes exceeds the limit" in message


def test_oversized_for_expected_type():
    data = encode(LeaseReply(OPERATION_ID, "billing", 1, b"\x00" * 20_000))
    message = decode_error(data, OperationRequest)
    assert "exceeds the limit of 16384 bytes for OperationRequest" in message


def test_type_limit_applies_without_expected():
    # A request padded past its own 16 KiB limit but under the global limit.
    document = wire_of(make_request())
    document["reply_public_key"] = b"k" * 20_000
    message = decode_error(pack(document))
    assert "OperationRequest of" in message
    assert "exceeds its limit of 16384 bytes" in message


def test_oversized_bin_rejected_by_unpacker():
    document = wire_of(LeaseReply(OPERATION_ID, "billing", 1, b"x"))
    document["sealed_lease"] = b"\x00" * (MAX_BLOB_LENGTH + 1)
    assert "max_bin_len" in decode_error(pack(document))


def test_long_array_rejected_by_unpacker():
    document = wire_of(ErrorReply(OPERATION_ID, "billing", "not_granted", "", []))
    document["holders"] = ["h"] * 2000
    assert "max_array_len" in decode_error(pack(document))


def test_deep_nesting_rejected():
    assert "nesting" in decode_error(b"\x91" * 100_000)


def test_top_level_must_be_map():
    assert "expected a msgpack map, got an array of 1 item" in decode_error(pack([1]))
    assert "got the int 7" in decode_error(pack(7))


def test_non_str_map_key_rejected():
    assert "not valid msgpack" in decode_error(b"\x81\x01\x02")


def test_bytes_map_key_rejected():
    document: dict[object, object] = dict(wire_of(make_request()))
    document[b"\xffkey"] = 1
    assert "a key of type bytes" in decode_error(pack(document))


def test_invalid_utf8_rejected():
    message = decode_error(b"\x81\xa1v\xa2\xff\xfe")
    assert "not valid UTF-8" in message
    assert "ff" not in message.lower().replace("of", "")


def test_ext_type_rejected():
    assert "max_ext_len" in decode_error(pack({"v": msgpack.ExtType(1, b"x")}))


def test_timestamp_rejected():
    document = wire_of(make_request())
    document["issued_at_ms"] = msgpack.Timestamp(1, 0)
    message = decode_error(msgpack.packb(document, use_bin_type=True, datetime=False))
    assert "max_ext_len" in message


# Version and type


def test_wrong_version_rejected():
    document = wire_of(make_request())
    document["v"] = 2
    assert decode_error(pack(document)) == "message.v: expected format version 1, got the int 2"


def test_missing_version_rejected():
    document = wire_of(make_request())
    del document["v"]
    assert "message.v" in decode_error(pack(document))


def test_bool_version_rejected():
    document = wire_of(make_request())
    document["v"] = True
    assert "got the bool True" in decode_error(pack(document))


def test_unknown_type_rejected():
    document = wire_of(make_request())
    document["type"] = "OperationRequestV2"
    assert "expected a known message type, got the str 'OperationRequestV2'" in decode_error(pack(document))


def test_unknown_type_not_echoed_when_unsafe():
    document = wire_of(make_request())
    document["type"] = "evil\nline"
    message = decode_error(pack(document))
    assert "\n" not in message
    assert "a str of 9 characters" in message


def test_type_must_be_str():
    document = wire_of(make_request())
    document["type"] = b"OperationRequest"
    assert "got bytes of length 16" in decode_error(pack(document))


def test_unexpected_type_rejected():
    data = encode(make_request())
    assert decode_error(data, LeaseReply) == "message.type: expected LeaseReply, got OperationRequest"
    message = decode_error(data, (LeaseReply, ErrorReply))
    assert "expected LeaseReply or ErrorReply, got OperationRequest" in message


def test_expected_must_be_registered():
    with pytest.raises(TypeError):
        decode(encode(make_request()), HolderSlot)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decode(encode(make_request()), ())
    with pytest.raises(TypeError):
        decode("text")  # type: ignore[arg-type]


# Fields


def test_missing_field_rejected():
    document = wire_of(make_request())
    del document["app_id"]
    assert decode_error(pack(document)) == "OperationRequest.app_id: expected the field to be present, got a map without it"


def test_extra_field_rejected():
    document = wire_of(make_request())
    document["priority"] = 1
    assert "unknown field 'priority'" in decode_error(pack(document))


def test_extra_field_in_nested_record_rejected():
    document = wire_of(make_plan())
    document["holders"][0]["weight"] = 1  # type: ignore[index]
    assert "OperationPlan.holders[0]: expected only the fields of HolderSlot" in decode_error(pack(document))


def test_wrong_type_rejected():
    cases = {
        "issued_at_ms": ("1700000000000", "got the str '1700000000000'"),
        "app_id": (7, "got the int 7"),
        "reply_public_key": ("k" * 32, "got the str 'kkkk"),
        "signature": ([0] * 64, "got an array of 64 items"),
        "operation": (None, "got nil"),
    }
    for field, (value, expected) in cases.items():
        document = wire_of(make_request())
        document[field] = value
        message = decode_error(pack(document))
        assert message.startswith(f"OperationRequest.{field}: expected"), message
        assert expected in message


def test_float_for_int_rejected():
    document = wire_of(make_request())
    document["issued_at_ms"] = 1.5
    assert "got a float" in decode_error(pack(document))


def test_bool_for_int_rejected():
    document = wire_of(make_plan())
    document["threshold"] = True
    assert "OperationPlan.threshold: expected a threshold from 2 to 255, got the bool True" == decode_error(pack(document))


def test_int_for_bool_rejected():
    document = wire_of(HolderAck("h1", OPERATION_ID, True, ""))
    document["ok"] = 1
    assert "HolderAck.ok: expected a bool, got the int 1" == decode_error(pack(document))


def test_str_for_bytes_rejected():
    # msgpack str and bin are different types; a str must not pass as bytes.
    document = wire_of(make_request())
    document["signature"] = "x" * 64
    assert "OperationRequest.signature: expected an Ed25519 signature" in decode_error(pack(document))


def test_int_out_of_range_rejected():
    for value in (-1, 2**63, 2**64 - 1):
        document = wire_of(make_request())
        document["issued_at_ms"] = value
        assert f"got the int {value}" in decode_error(pack(document))


def test_bad_id_patterns_rejected():
    cases = {
        "operation_id": ["0123456789ABCDEF0123456789ABCDEF", "abc", "g" * 32, ""],
        "app_id": ["", "a b", "a" * 65, "app/1", "ä"],
        "secret_name": ["", "/etc/passwd", "a//b", "a/../b", "..", "a/.", "a/", "x" * 201, "a b"],
    }
    for field, values in cases.items():
        for value in values:
            document = wire_of(make_request())
            document[field] = value
            message = decode_error(pack(document))
            assert message.startswith(f"OperationRequest.{field}: expected"), (value, message)


def test_nested_field_path_named():
    document = wire_of(make_plan())
    document["holders"][1]["index"] = 0  # type: ignore[index]
    assert decode_error(pack(document)).startswith("OperationPlan.holders[1].index: expected a fragment index from 1 to 255")


def test_invariant_rejected_on_decode():
    document = wire_of(make_plan())
    document["threshold"] = 4
    assert "OperationPlan.threshold: expected at most the number of holders (3)" in decode_error(pack(document))


def test_unsigned_request_rejected_on_decode():
    document = wire_of(make_request())
    document["signature"] = b""
    assert "OperationRequest.signature: expected a 64-byte Ed25519 signature" in decode_error(pack(document))


def test_fragment_response_error_and_blob_rejected():
    document = wire_of(FragmentResponse(OPERATION_ID, "h1", 1, b"", "expired"))
    document["sealed_fragment"] = SECRET_BYTES
    message = decode_error(pack(document))
    assert "FragmentResponse.sealed_fragment" in message
    assert "bytes of length" in message


def test_errors_never_echo_bytes():
    document = wire_of(make_plan())
    document["sealed_context"] = "SECRET-BYTES-AS-TEXT-" * 3
    document["reply_public_key"] = SECRET_BYTES
    message = decode_error(pack(document))
    assert "SECRET" not in message


# Fuzzing: test_hostile_decoders.py runs the wire-codec target of
# decoder_targets.py, which draws random bytes, random maps and mutated
# valid messages.


# Encoding checks


def test_encode_rejects_unsigned_request():
    with pytest.raises(ValueError, match="sign signing_bytes"):
        encode(make_request(signature=b""))


def test_encode_rejects_oversized_message(monkeypatch):
    reply = ErrorReply(OPERATION_ID, "billing", "internal_error", "x" * 200, [])
    monkeypatch.setattr(ErrorReply, "max_size", 100)
    with pytest.raises(ValueError, match="above its limit of 100 bytes"):
        encode(reply)


def test_encode_rejects_non_messages():
    with pytest.raises(TypeError):
        encode(HolderSlot("h1", 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode({"v": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", sorted(MESSAGE_TYPES.values(), key=lambda cls: cls.type_name), ids=lambda c: c.type_name)
def test_largest_message_fits_its_limit(cls):
    message = largest(cls)
    data = encode(message)
    assert len(data) <= cls.max_size
    assert decode(data, cls) == message


def test_max_size_for():
    assert max_size_for(OperationRequest) == 16 * 1024
    assert max_size_for((OperationRequest, LeaseReply)) == MAX_MESSAGE_SIZE
    assert max_size_for() == MAX_MESSAGE_SIZE
