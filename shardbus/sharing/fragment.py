"""The Fragment record and its msgpack encoding.

A fragment is what one holder keeps of one version of one secret. The
encoding is a msgpack map with exactly the fields of `Fragment`, in field
order, so `to_bytes` is canonical: commitments are computed over it, and
`from_bytes` rejects any input that does not re-encode to the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import msgpack

from shardbus.errors import DecodeError
from shardbus.strict_msgpack import unpack_strict
from shardbus.sharing import ida, shamir

#: Version of the fragment encoding; bump it when a field changes.
FORMAT_VERSION = 1

#: Plain Shamir: the payload is a share of the secret itself.
SCHEME_SHAMIR = "shamir"
#: Krawczyk's computational secret sharing: the payload is a Shamir share of
#: a data key followed by an IDA piece of the encrypted secret.
SCHEME_KRAWCZYK = "krawczyk"
SCHEMES = (SCHEME_SHAMIR, SCHEME_KRAWCZYK)

#: AES-256-GCM key, nonce and tag sizes used by the krawczyk scheme.
DATA_KEY_LENGTH = 32
NONCE_LENGTH = 12
TAG_LENGTH = 16

#: Maximum length of a secret id, in UTF-8 bytes.
MAX_SECRET_ID_BYTES = 256
#: Maximum secret version, because msgpack and the wire contract carry signed 64-bit ints.
MAX_SECRET_VERSION = 2**63 - 1
#: Maximum secret length, so that every length field fits a signed 64-bit int.
MAX_SECRET_LENGTH = 2**63 - 1

# A fragment map has 9 fields. The unpacker rejects a map or array of more
# than this many entries, and a smaller surplus is named as an unknown field.
_MAX_MAP_ENTRIES = 32


def dispersed_length(secret_length: int) -> int:
    """Return the length of the data the krawczyk scheme disperses: nonce || ciphertext."""
    return NONCE_LENGTH + secret_length + TAG_LENGTH


def payload_length(scheme: str, secret_length: int, threshold: int) -> int:
    """Return the payload size of every fragment of a secret."""
    if scheme == SCHEME_SHAMIR:
        return secret_length
    return DATA_KEY_LENGTH + ida.piece_length(dispersed_length(secret_length), threshold)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"fragment field '{name}' must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"fragment field '{name}' must be in {low}..{high}, got {value}")


def validate_ids(secret_id: str, secret_version: int) -> None:
    """Raise TypeError or ValueError unless the secret id and version are valid."""
    if not isinstance(secret_id, str):
        raise TypeError(f"fragment field 'secret_id' must be a str, got {type(secret_id).__name__}")
    try:
        id_bytes = len(secret_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("fragment field 'secret_id' must be valid Unicode text (no lone surrogates)") from None
    if not 1 <= id_bytes <= MAX_SECRET_ID_BYTES:
        raise ValueError(f"fragment field 'secret_id' must be 1..{MAX_SECRET_ID_BYTES} UTF-8 bytes, got {id_bytes}")
    _check_int("secret_version", secret_version, 0, MAX_SECRET_VERSION)


def _unpack(data: bytes) -> object:
    """Unpack msgpack, raising DecodeError with msgpack's reason for bad input."""
    # The limits reject an oversized id or map inside the unpacker, before
    # Python allocates it. The payload is bounded only by len(data).
    return unpack_strict(
        data,
        "fragment",
        use_list=False,
        max_str_len=MAX_SECRET_ID_BYTES,
        max_map_len=_MAX_MAP_ENTRIES,
        max_array_len=_MAX_MAP_ENTRIES,
    )


@dataclass(frozen=True)
class Fragment:
    """One holder's part of one version of a secret.

    `index` is the Shamir x-coordinate, 1..count. The payload is secret
    material, so it stays out of `repr`.
    """

    scheme: str
    secret_id: str
    secret_version: int
    index: int
    threshold: int
    count: int
    secret_length: int
    payload: bytes
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_int("format_version", self.format_version, FORMAT_VERSION, FORMAT_VERSION)
        if self.scheme not in SCHEMES:
            raise ValueError(f"fragment field 'scheme' must be one of {SCHEMES}, got {self.scheme!r}")
        validate_ids(self.secret_id, self.secret_version)
        _check_int("threshold", self.threshold, 2, shamir.MAX_SHARES)
        _check_int("count", self.count, self.threshold, shamir.MAX_SHARES)
        _check_int("index", self.index, 1, self.count)
        _check_int("secret_length", self.secret_length, 1, MAX_SECRET_LENGTH)
        if not isinstance(self.payload, bytes):
            raise TypeError(f"fragment field 'payload' must be bytes, got {type(self.payload).__name__}")
        expected = payload_length(self.scheme, self.secret_length, self.threshold)
        if len(self.payload) != expected:
            raise ValueError(
                f"fragment field 'payload' must be {expected} bytes for a {self.scheme} fragment "
                f"of a {self.secret_length}-byte secret at threshold {self.threshold}, "
                f"got {len(self.payload)}"
            )

    def __repr__(self) -> str:
        return (
            f"Fragment(scheme={self.scheme!r}, secret_id={self.secret_id!r}, "
            f"secret_version={self.secret_version}, index={self.index}, "
            f"threshold={self.threshold}, count={self.count}, "
            f"secret_length={self.secret_length}, payload=<{len(self.payload)} bytes>)"
        )

    def to_bytes(self) -> bytes:
        """Encode the fragment as a msgpack map, format version first."""
        document = {"format_version": self.format_version}
        for item in fields(self):
            if item.name != "format_version":
                document[item.name] = getattr(self, item.name)
        return msgpack.packb(document, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> Fragment:
        """Decode a fragment, raising DecodeError that names the field at fault.

        Raises TypeError when `data` is not bytes, bytearray or memoryview.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Fragment.from_bytes expects bytes, got {type(data).__name__}")
        data = bytes(data)
        document = _unpack(data)
        if not isinstance(document, dict):
            raise DecodeError(f"fragment must be a msgpack map, got {type(document).__name__}")

        version = document.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise DecodeError(
                f"fragment field 'format_version' must be {FORMAT_VERSION}, got {version!r}; "
                "the fragment was written by another shardbus release"
            )
        names = [item.name for item in fields(cls)]
        for name in names:
            if name not in document:
                raise DecodeError(f"fragment field '{name}' is missing")
        for key in document:
            if key not in names:
                raise DecodeError(f"fragment has unknown field {str(key)[:64]!r}")

        try:
            fragment = cls(**document)
        except (TypeError, ValueError) as error:
            raise DecodeError(str(error)) from None
        # Commitments are computed over the canonical encoding, so only that
        # encoding is accepted and a second spelling of the same fragment is not.
        if fragment.to_bytes() != data:
            raise DecodeError("fragment is not in canonical encoding (field order or integer width differ)")
        return fragment
