"""Field kinds of the wire contract and the checks that enforce them.

Every message field is declared as ``Annotated[<python type>, <kind>]``. The
constructors, the codec and the JSON Schema generator all read the same kind,
so each rule (type, length, pattern, range) is written once.

A kind checks a value in one of two modes. The codec uses ``strict=True`` on
decoded msgpack: the exact Python type msgpack produces (``bool`` is not an
``int``, a ``tuple`` is not an array). Constructors use ``strict=False`` and
also accept the obvious Python spellings (a tuple for a list, ``bytearray``
for ``bytes``, a mapping for a nested record), which they normalize.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

if TYPE_CHECKING:
    from schemas.base import WireRecord

INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1

#: Maximum length of a free-text field (detail, error), in characters.
MAX_TEXT_LENGTH = 2048

#: Maximum length of a sealed blob: a 1 MiB secret or fragment plus room for the AEAD or
#: HPKE overhead and the metadata sealed with it.
MAX_BLOB_LENGTH = 2**20 + 32 * 1024

# Strings that are safe to repeat in an error message: short, and made only
# of characters that cannot forge a log line or hide control characters.
_SAFE_TO_ECHO = re.compile(r"[A-Za-z0-9._/:@+ -]{0,64}")


class FieldError(Exception):
    """A field value that breaks its rule.

    The codec turns it into a DecodeError. Callers that build a message meet
    one of the two concrete subclasses, which are also TypeError and
    ValueError.
    """

    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(f"{path}: expected {expected}, got {actual}")


class FieldTypeError(FieldError, TypeError):
    """A field value of the wrong type."""


class FieldValueError(FieldError, ValueError):
    """A field value of the right type but outside its allowed values."""


def describe(value: object) -> str:
    """Describe a value for an error message without repeating unsafe content.

    Bytes are never repeated, only their length. A string is repeated only
    when it is short and made of plain characters.
    """
    if isinstance(value, bool):
        return f"the bool {value}"
    if isinstance(value, int):
        return f"the int {value}"
    if value is None:
        return "nil"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"bytes of length {len(value)}"
    if isinstance(value, str):
        if _SAFE_TO_ECHO.fullmatch(value):
            return f"the str {str.__repr__(value)}"
        return f"a str of {len(value)} characters"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, (list, tuple)):
        return f"an array of {_count(len(value), 'item')}"
    if isinstance(value, Mapping):
        return f"a map of {_count(len(value), 'entry', 'entries')}"
    return f"a value of type {type(value).__name__}"


def _count(number: int, singular: str, plural: str | None = None) -> str:
    if number == 1:
        return f"1 {singular}"
    return f"{number} {plural or singular + 's'}"


@dataclass(frozen=True)
class Text:
    """A str, limited in length and, for ids, matched against a pattern.

    ``pattern`` is matched against the whole value. It must mean the same in
    Python and in ECMA-262, because the JSON Schema repeats it. ``optional``
    also accepts "", the value a field takes when it does not apply.
    """

    max_length: int
    pattern: str | None = None
    optional: bool = False
    label: str = "a str"

    def check(self, value: Any, path: str, strict: bool) -> str:
        if type(value) is not str and (strict or not isinstance(value, str)):
            raise FieldTypeError(path, self.label, describe(value))
        value = str(value)
        if value == "" and (self.optional or self.pattern is None):
            return value
        if len(value) > self.max_length:
            raise FieldValueError(
                path,
                f"{self.label} of at most {self.max_length} characters",
                f"a str of {len(value)} characters",
            )
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise FieldValueError(path, self.label, describe(value))
        return value


@dataclass(frozen=True)
class Integer:
    """An int in the closed range ``minimum..maximum``; a bool is rejected."""

    minimum: int
    maximum: int
    label: str = "an int"

    def check(self, value: Any, path: str, strict: bool) -> int:
        expected = f"{self.label} from {self.minimum} to {self.maximum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldTypeError(path, expected, describe(value))
        if strict and type(value) is not int:
            raise FieldTypeError(path, expected, describe(value))
        if not self.minimum <= value <= self.maximum:
            raise FieldValueError(path, expected, describe(int(value)))
        return int(value)


@dataclass(frozen=True)
class Boolean:
    """A msgpack true or false; 0 and 1 are rejected."""

    label: str = "a bool"

    def check(self, value: Any, path: str, strict: bool) -> bool:
        if type(value) is not bool:
            raise FieldTypeError(path, self.label, describe(value))
        return value


@dataclass(frozen=True)
class Blob:
    """Bytes (msgpack bin), either of one of the ``lengths`` or up to ``max_length``."""

    max_length: int
    min_length: int = 0
    lengths: tuple[int, ...] | None = None
    label: str = "bytes"

    def expected_length(self) -> str:
        if self.lengths is not None:
            return " or ".join(str(length) for length in self.lengths)
        if self.min_length == 0:
            return f"at most {self.max_length}"
        return f"{self.min_length} to {self.max_length}"

    def check(self, value: Any, path: str, strict: bool) -> bytes:
        if type(value) is not bytes:
            if strict or not isinstance(value, (bytearray, memoryview)):
                raise FieldTypeError(path, self.label, describe(value))
            value = bytes(value)
        length = len(value)
        if self.lengths is not None:
            valid = length in self.lengths
        else:
            valid = self.min_length <= length <= self.max_length
        if not valid:
            expected = f"{self.label} of length {self.expected_length()}"
            raise FieldValueError(path, expected, describe(value))
        return value


@dataclass(frozen=True)
class Choice:
    """A str that must be a value of ``enum``; decoded to the enum member.

    With ``optional`` the empty string is accepted too and stays a plain "".
    """

    enum: type[enum.StrEnum]
    optional: bool = False

    def expected(self) -> str:
        values = [member.value for member in self.enum]
        if self.optional:
            values.insert(0, "")
        return "one of " + ", ".join(repr(value) for value in values)

    def check(self, value: Any, path: str, strict: bool) -> str:
        if type(value) is not str and (strict or not isinstance(value, str)):
            raise FieldTypeError(path, self.expected(), describe(value))
        if value == "" and self.optional:
            return ""
        try:
            return self.enum(value)
        except ValueError:
            raise FieldValueError(path, self.expected(), describe(value)) from None


@dataclass(frozen=True)
class Array:
    """A msgpack array of up to ``max_items`` values of one kind; a tuple in Python."""

    item: Kind
    max_items: int
    min_items: int = 0

    def check(self, value: Any, path: str, strict: bool) -> tuple[Any, ...]:
        expected = f"an array of {self.min_items} to {self.max_items} items"
        if type(value) is not list and (strict or not isinstance(value, (list, tuple))):
            raise FieldTypeError(path, expected, describe(value))
        if not self.min_items <= len(value) <= self.max_items:
            raise FieldValueError(path, expected, describe(value))
        return tuple(
            self.item.check(item, f"{path}[{index}]", strict)
            for index, item in enumerate(value)
        )


@dataclass(frozen=True)
class Nested:
    """A msgpack map holding one record (a WireRecord subclass)."""

    record: type[WireRecord]

    def check(self, value: Any, path: str, strict: bool) -> WireRecord:
        if not strict and isinstance(value, self.record):
            return value
        if type(value) is not dict and (strict or not isinstance(value, Mapping)):
            expected = f"a map of {self.record.__name__} fields"
            raise FieldTypeError(path, expected, describe(value))
        return self.record.from_mapping(value, path, strict)


Kind = Text | Integer | Boolean | Blob | Choice | Array | Nested


# Patterns. They avoid Python-only syntax because the JSON Schema repeats them.
HEX32_PATTERN = r"[0-9a-f]{32}"
NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"
# A secret name is a relative path: segments of [A-Za-z0-9._-] joined by "/",
# with no empty, "." or ".." segment, so a store that maps names to paths
# cannot be led outside its folder.
_SEGMENT = r"(?!\.\.?(?:/|$))[A-Za-z0-9._-]+"
SECRET_NAME_PATTERN = rf"{_SEGMENT}(?:/{_SEGMENT})*"
# Kafka accepts [A-Za-z0-9._-] and up to 249 characters, except "." and "..".
TOPIC_PATTERN = r"(?!\.\.?$)[A-Za-z0-9._-]{1,249}"
# An audit action such as "request.accepted": lowercase words joined by dots.
ACTION_PATTERN = r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*"

_OPERATION_ID_LABEL = "an operation id (32 lowercase hex digits)"
_REQUEST_ID_LABEL = "a request id (32 lowercase hex digits)"
_APP_ID_LABEL = "an app id (1 to 64 of A-Z a-z 0-9 . _ -)"
_HOLDER_ID_LABEL = "a holder id (1 to 64 of A-Z a-z 0-9 . _ -)"
_SECRET_NAME_LABEL = (
    "a secret name (1 to 200 of A-Z a-z 0-9 . _ - /, "
    "no leading '/', no empty, '.' or '..' segment)"
)

OperationId = Annotated[str, Text(32, HEX32_PATTERN, label=_OPERATION_ID_LABEL)]
OptionalOperationId = Annotated[
    str, Text(32, HEX32_PATTERN, optional=True, label=_OPERATION_ID_LABEL + ' or ""')
]
RequestId = Annotated[str, Text(32, HEX32_PATTERN, label=_REQUEST_ID_LABEL)]
AppId = Annotated[str, Text(64, NAME_PATTERN, label=_APP_ID_LABEL)]
OptionalAppId = Annotated[
    str, Text(64, NAME_PATTERN, optional=True, label=_APP_ID_LABEL + ' or ""')
]
HolderId = Annotated[str, Text(64, NAME_PATTERN, label=_HOLDER_ID_LABEL)]
OptionalHolderId = Annotated[
    str, Text(64, NAME_PATTERN, optional=True, label=_HOLDER_ID_LABEL + ' or ""')
]
SecretName = Annotated[str, Text(200, SECRET_NAME_PATTERN, label=_SECRET_NAME_LABEL)]
OptionalSecretName = Annotated[
    str,
    Text(200, SECRET_NAME_PATTERN, optional=True, label=_SECRET_NAME_LABEL + ' or ""'),
]
ServiceName = Annotated[
    str, Text(64, NAME_PATTERN, label="a service name (1 to 64 of A-Z a-z 0-9 . _ -)")
]
TopicName = Annotated[
    str, Text(249, TOPIC_PATTERN, label="a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)")
]
FreeText = Annotated[str, Text(MAX_TEXT_LENGTH, label="a str")]

TimeMs = Annotated[
    int, Integer(0, INT64_MAX, label="a time in milliseconds since the Unix epoch")
]
DurationMs = Annotated[int, Integer(1, INT64_MAX, label="a duration in milliseconds")]
SecretVersion = Annotated[int, Integer(1, UINT32_MAX, label="a secret version")]
OptionalSecretVersion = Annotated[
    int, Integer(0, UINT32_MAX, label="a secret version (0 when not applicable)")
]
KeyVersion = Annotated[int, Integer(1, UINT32_MAX, label="a master key version")]
# Shamir shares over GF(2^8) are evaluated at x = 1..255, because x = 0 is
# the secret itself.
FragmentIndex = Annotated[int, Integer(1, 255, label="a fragment index")]
HolderIdList = Annotated[tuple[str, ...], Array(Text(64, NAME_PATTERN, label=_HOLDER_ID_LABEL), 255)]
