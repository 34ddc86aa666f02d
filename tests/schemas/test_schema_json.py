"""The generated JSON Schemas: up to date, valid draft 2020-12, and agreeing with the codec."""

from __future__ import annotations

import base64
import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from schema_strategies import messages

from schemas.base import Message, wire_fields
from schemas.fields import Text
from schemas.jsonschema import DRAFT, OUTPUT_DIR, render_all, schema_for, write_all
from schemas.messages import MESSAGE_TYPES, OperationRequest


def to_json(value: object) -> object:
    """Render a wire value as JSON: bytes as base64, the rest unchanged."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


def validator_for(cls: type[Message]):
    return jsonschema.Draft202012Validator(schema_for(cls))


def test_committed_files_are_up_to_date():
    rendered = render_all()
    committed = {path.name: path.read_text(encoding="utf-8") for path in OUTPUT_DIR.glob("*.json")}
    assert sorted(committed) == sorted(rendered), "run: python -m schemas.jsonschema"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale; run: python -m schemas.jsonschema"


def test_one_file_per_message_type():
    assert sorted(render_all()) == sorted(f"{name}.json" for name in MESSAGE_TYPES)


def test_write_all_removes_stale_files(tmp_path):
    (tmp_path / "Removed.json").write_text("{}", encoding="utf-8")
    written = write_all(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in written)
    assert (tmp_path / "OperationRequest.json").read_text(encoding="utf-8") == render_all()["OperationRequest.json"]


@pytest.mark.parametrize("cls", sorted(MESSAGE_TYPES.values(), key=lambda cls: cls.type_name), ids=lambda c: c.type_name)
def test_schema_is_valid_draft_2020_12(cls):
    schema = schema_for(cls)
    assert schema["$schema"] == DRAFT
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["type"] == {"const": cls.type_name, "description": "message type"}
    assert schema["properties"]["v"]["const"] == 1
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"v", "type"} | {name for name, _ in wire_fields(cls)}


def test_bytes_fields_are_base64_strings():
    signature = schema_for(OperationRequest)["properties"]["signature"]
    assert signature["type"] == "string"
    assert signature["contentEncoding"] == "base64"
    assert "msgpack bin" in signature["description"]


def test_patterns_are_ecma_compatible():
    # Python-only syntax would silently mean something else, or nothing,
    # to a JSON Schema validator in another language.
    python_only = re.compile(r"\\[AZz]|\(\?P|\(\?<[!=]|\(\?[aiLmsux]")
    for cls in MESSAGE_TYPES.values():
        for name, kind in wire_fields(cls):
            if isinstance(kind, Text) and kind.pattern is not None:
                assert not python_only.search(kind.pattern), f"{cls.type_name}.{name}"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_valid_messages_match_their_schema(message):
    document = to_json(message.to_wire())
    validator_for(type(message)).validate(document)


def test_schema_rejects_what_the_codec_rejects():
    request = OperationRequest(
        operation_id="0123456789abcdef0123456789abcdef",
        app_id="billing",
        secret_name="db/password",
        operation="lease",
        reply_public_key=bytes(32),
        reply_kem="x25519",
        issued_at_ms=1,
        signature=bytes(64),
    )
    validator = validator_for(OperationRequest)
    cases = {
        "secret_name": ["/etc/passwd", "a/../b", "a//b", "", "a b"],
        "app_id": ["", "a b", "a" * 65],
        "operation_id": ["ABC", "0123456789ABCDEF0123456789ABCDEF"],
        "operation": ["sign"],
        "reply_kem": ["rsa"],
        "issued_at_ms": [-1, 1.5, "1", True],
        "extra": [1],
    }
    for field, values in cases.items():
        for value in values:
            document = to_json(request.to_wire())
            document[field] = value  # type: ignore[index]
            assert not validator.is_valid(document), (field, value)


def test_json_files_parse():
    for path in OUTPUT_DIR.glob("*.json"):
        schema = json.loads(path.read_text(encoding="utf-8"))
        assert schema["title"] == path.stem
