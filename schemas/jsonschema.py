"""Generate a JSON Schema (draft 2020-12) for every message type.

Run ``python -m schemas.jsonschema`` to rewrite ``schemas/json/<type>.json``
after changing a message. A test fails while the files are out of date.

The schemas describe a message's JSON rendering, for readers and for
implementations in other languages. The wire format itself is msgpack: a
field shown here as a base64 string is a msgpack bin on the wire. JSON Schema
cannot bound the decoded length of base64 text, so byte lengths are stated in
each field's description, and rules between fields (a threshold no larger
than the holder count, for example) are stated in the type's description.
The annotation ``x-max-msgpack-size`` gives the type's size limit on the wire.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

from schemas.base import FORMAT_VERSION, Message, WireRecord, wire_fields
from schemas.fields import Array, Blob, Boolean, Choice, Integer, Kind, Nested, Text
from schemas.messages import MESSAGE_TYPES

DRAFT = "https://json-schema.org/draft/2020-12/schema"

#: Folder of the generated files, next to this module.
OUTPUT_DIR = Path(__file__).resolve().parent / "json"


def schema_for(cls: type[Message]) -> dict[str, Any]:
    """Build the JSON Schema of one message type."""
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "title": cls.type_name,
        "description": _description(cls),
        "type": "object",
    }
    properties: dict[str, Any] = {
        "v": {"const": FORMAT_VERSION, "description": "format version"},
        "type": {"const": cls.type_name, "description": "message type"},
    }
    body = _object_schema(cls)
    properties.update(body["properties"])
    schema["properties"] = properties
    schema["required"] = ["v", "type", *body["required"]]
    schema["additionalProperties"] = False
    schema["x-max-msgpack-size"] = cls.max_size
    return schema


def render_all() -> dict[str, str]:
    """Return the text of every schema file, keyed by file name."""
    return {
        f"{name}.json": json.dumps(schema_for(cls), indent=2) + "\n"
        for name, cls in sorted(MESSAGE_TYPES.items())
    }


def write_all(directory: Path = OUTPUT_DIR) -> list[Path]:
    """Write every schema file into ``directory``, delete stale ones and return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render_all()
    for stale in directory.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    written = []
    for name, text in rendered.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _object_schema(cls: type[WireRecord]) -> dict[str, Any]:
    properties = {name: _kind_schema(kind) for name, kind in wire_fields(cls)}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _kind_schema(kind: Kind) -> dict[str, Any]:
    if isinstance(kind, Text):
        schema: dict[str, Any] = {"type": "string", "maxLength": kind.max_length, "description": kind.label}
        if kind.pattern is not None:
            pattern = f"^(?:{kind.pattern})$"
            if kind.optional:
                pattern = f"^(?:(?:{kind.pattern})|)$"
            schema["pattern"] = pattern
        return schema
    if isinstance(kind, Integer):
        return {"type": "integer", "minimum": kind.minimum, "maximum": kind.maximum, "description": kind.label}
    if isinstance(kind, Boolean):
        return {"type": "boolean"}
    if isinstance(kind, Blob):
        return {
            "type": "string",
            "contentEncoding": "base64",
            "description": f"{kind.label}, {kind.expected_length()} bytes (msgpack bin on the wire)",
        }
    if isinstance(kind, Choice):
        values = [member.value for member in kind.enum]
        if kind.optional:
            values.insert(0, "")
        return {"type": "string", "enum": values}
    if isinstance(kind, Array):
        return {
            "type": "array",
            "items": _kind_schema(kind.item),
            "minItems": kind.min_items,
            "maxItems": kind.max_items,
        }
    if isinstance(kind, Nested):
        schema = _object_schema(kind.record)
        schema["title"] = kind.record.__name__
        schema["description"] = _description(kind.record)
        return schema
    raise TypeError(f"no JSON Schema for field kind {type(kind).__name__}")


def _description(cls: type) -> str:
    # The whole docstring, with reST literals made plain for JSON readers.
    return (inspect.getdoc(cls) or "").replace("``", "")


def main() -> int:
    for path in write_all():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
