"""Ed25519 signing keys for applications, and the verify keys in the policy file.

This module signs and verifies bytes only. The canonical encoding of a
request, which is what gets signed, belongs to the wire contract (`schemas`).

Text forms: a verify key in the policy file is ``ed25519:<base64 of the
32-byte raw key>``. Keys can also be read and written as PEM
(SubjectPublicKeyInfo for verify keys, unencrypted PKCS#8 for signing keys).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Callable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shardbus.errors import DecodeError, IntegrityError

KEY_LENGTH = 32
SIGNATURE_LENGTH = 64
TEXT_PREFIX = "ed25519:"


class VerifyKey:
    """An Ed25519 public key."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes_raw()

    @classmethod
    def from_bytes(cls, data: bytes) -> VerifyKey:
        """Load a raw 32-byte public key."""
        data = bytes(data)
        if len(data) != KEY_LENGTH:
            raise DecodeError(f"Ed25519 verify key must be {KEY_LENGTH} bytes, got {len(data)}")
        return cls(Ed25519PublicKey.from_public_bytes(data))

    def to_bytes(self) -> bytes:
        """Return the raw 32-byte public key."""
        return self._raw

    @classmethod
    def from_text(cls, text: str) -> VerifyKey:
        """Parse the policy file form ``ed25519:<base64>``."""
        if not isinstance(text, str) or not text.startswith(TEXT_PREFIX):
            raise DecodeError(f"verify key must have the form '{TEXT_PREFIX}<base64 of 32 bytes>'")
        try:
            raw = base64.b64decode(text[len(TEXT_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("verify key is not valid base64") from None
        return cls.from_bytes(raw)

    def to_text(self) -> str:
        """Return the policy file form ``ed25519:<base64>``."""
        return TEXT_PREFIX + base64.b64encode(self._raw).decode("ascii")

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyKey:
        """Load a PEM SubjectPublicKeyInfo Ed25519 public key."""
        try:
            key = serialization.load_pem_public_key(bytes(data))
        except (ValueError, UnsupportedAlgorithm):
            raise DecodeError("verify key is not a valid PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise DecodeError(f"verify key must be an Ed25519 key, got {type(key).__name__}")
        return cls(key)

    def to_pem(self) -> bytes:
        """Return the key as PEM SubjectPublicKeyInfo."""
        return self._key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.to_text()!r})"


class SigningKey:
    """An Ed25519 private key. Its bytes never appear in `repr`."""

    __slots__ = ("_key", "verify_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.verify_key = VerifyKey(key.public_key())

    @classmethod
    def generate(cls, *, randbytes: Callable[[int], bytes] = secrets.token_bytes) -> SigningKey:
        """Return a new key; `randbytes` must be a CSPRNG outside tests."""
        return cls.from_bytes(randbytes(KEY_LENGTH))

    @classmethod
    def from_bytes(cls, data: bytes) -> SigningKey:
        """Load a raw 32-byte private key (the RFC 8032 seed)."""
        data = bytes(data)
        if len(data) != KEY_LENGTH:
            raise ValueError(f"Ed25519 signing key must be {KEY_LENGTH} bytes, got {len(data)}")
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        """Return the raw 32-byte private key. Handle it like any other secret."""
        return self._key.private_bytes_raw()

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Load an unencrypted PEM PKCS#8 Ed25519 private key."""
        try:
            key = serialization.load_pem_private_key(bytes(data), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("signing key is not a valid unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"signing key must be an Ed25519 key, got {type(key).__name__}")
        return cls(key)

    def to_pem(self) -> bytes:
        """Return the key as unencrypted PEM PKCS#8."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"SigningKey(verify_key={self.verify_key.to_text()!r})"


def sign(key: SigningKey, message: bytes) -> bytes:
    """Return the 64-byte Ed25519 signature of `message`."""
    if not isinstance(key, SigningKey):
        raise TypeError(f"key must be a SigningKey, got {type(key).__name__}")
    return key._key.sign(bytes(message))


def verify(key: VerifyKey, message: bytes, signature: bytes) -> None:
    """Raise IntegrityError unless `signature` is a valid signature of `message` by `key`."""
    if not isinstance(key, VerifyKey):
        raise TypeError(f"key must be a VerifyKey, got {type(key).__name__}")
    signature = bytes(signature)
    if len(signature) != SIGNATURE_LENGTH:
        raise IntegrityError()
    try:
        key._key.verify(signature, bytes(message))
    except InvalidSignature:
        raise IntegrityError() from None
