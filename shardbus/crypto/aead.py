"""AES-256-GCM sealing of fragments and stored blobs.

Blob format: one version byte (1), a random 96-bit nonce, then the
AES-GCM ciphertext with its 16-byte tag. The version byte is also part of
the associated data, so it cannot be changed without failing the tag.

By the birthday bound, n random 96-bit nonces under one key repeat with
probability below n^2 / 2^97, about 2^-33 for 2^32 blobs. Fragment keys are
derived per secret version, index and holder, so each seals only a few
blobs.
"""

from __future__ import annotations

import secrets
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shardbus.crypto.encoding import encode_fields
from shardbus.errors import DecodeError, IntegrityError

BLOB_VERSION = 1
KEY_LENGTH = 32
NONCE_LENGTH = 12
TAG_LENGTH = 16
#: Bytes a sealed blob adds to its plaintext.
OVERHEAD = 1 + NONCE_LENGTH + TAG_LENGTH

_FRAGMENT_LABEL = "shardbus/v1/sealed-fragment"


def _cipher(key: bytes) -> AESGCM:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LENGTH:
        raise ValueError(f"key must be {KEY_LENGTH} bytes for AES-256-GCM")
    return AESGCM(bytes(key))


def seal(
    key: bytes,
    plaintext: bytes,
    aad: bytes,
    *,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> bytes:
    """Encrypt and authenticate `plaintext`, binding the associated data `aad`."""
    cipher = _cipher(key)
    nonce = randbytes(NONCE_LENGTH)
    header = bytes([BLOB_VERSION])
    return header + nonce + cipher.encrypt(nonce, bytes(plaintext), header + bytes(aad))


def open_(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Return the plaintext of a sealed blob.

    Raises:
        DecodeError: the blob is too short or has an unknown version.
        IntegrityError: wrong key, wrong associated data, or tampered blob.
    """
    cipher = _cipher(key)
    blob = bytes(blob)
    if len(blob) < OVERHEAD:
        raise DecodeError(f"sealed blob must be at least {OVERHEAD} bytes, got {len(blob)}")
    if blob[0] != BLOB_VERSION:
        raise DecodeError(f"sealed blob has version {blob[0]}, expected {BLOB_VERSION}")
    header, nonce, ciphertext = blob[:1], blob[1 : 1 + NONCE_LENGTH], blob[1 + NONCE_LENGTH :]
    try:
        return cipher.decrypt(nonce, ciphertext, header + bytes(aad))
    except InvalidTag:
        raise IntegrityError() from None


def fragment_aad(*, secret_id: str, version: int, index: int, holder_id: str, key_version: int) -> bytes:
    """Return the associated data that binds a sealed fragment to its place."""
    return encode_fields(_FRAGMENT_LABEL, secret_id, version, index, holder_id, key_version)


def seal_fragment(
    key: bytes,
    plaintext: bytes,
    *,
    secret_id: str,
    version: int,
    index: int,
    holder_id: str,
    key_version: int,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> bytes:
    """Seal an encoded fragment for one holder under its fragment key.

    The ids go into the associated data, so the blob opens only for the same
    secret, version, index, holder and master key version.
    """
    aad = fragment_aad(
        secret_id=secret_id, version=version, index=index, holder_id=holder_id, key_version=key_version
    )
    return seal(key, plaintext, aad, randbytes=randbytes)


def open_fragment(
    key: bytes,
    blob: bytes,
    *,
    secret_id: str,
    version: int,
    index: int,
    holder_id: str,
    key_version: int,
) -> bytes:
    """Open a blob from `seal_fragment`; raise IntegrityError if any id differs."""
    aad = fragment_aad(
        secret_id=secret_id, version=version, index=index, holder_id=holder_id, key_version=key_version
    )
    return open_(key, blob, aad)
