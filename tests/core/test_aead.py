"""AES-256-GCM blobs and sealed fragments: round trips and every way a blob must fail."""

from __future__ import annotations

import pytest

from shardbus.crypto import aead
from shardbus.crypto.keys import MasterKey
from shardbus.errors import DecodeError, IntegrityError

MASTER = MasterKey(bytes(range(32)), 3)
IDS = {"secret_id": "db/password", "version": 2, "index": 4, "holder_id": "holder-7", "key_version": 3}


def fragment_key(ids=IDS) -> bytes:
    return MASTER.fragment_key(ids["secret_id"], ids["version"], ids["index"], ids["holder_id"])


def test_seal_open_round_trip():
    key = bytes(32)
    blob = aead.seal(key, b"plaintext", b"aad")
    assert len(blob) == len(b"plaintext") + aead.OVERHEAD
    assert blob[0] == aead.BLOB_VERSION
    assert aead.open_(key, blob, b"aad") == b"plaintext"


def test_seal_uses_randbytes_for_nonce():
    blob = aead.seal(bytes(32), b"x", b"", randbytes=lambda n: b"\x07" * n)
    assert blob[1:13] == b"\x07" * 12


def test_fresh_nonce_per_seal():
    assert aead.seal(bytes(32), b"x", b"") != aead.seal(bytes(32), b"x", b"")


def test_wrong_aad_fails():
    blob = aead.seal(bytes(32), b"plaintext", b"aad")
    with pytest.raises(IntegrityError):
        aead.open_(bytes(32), blob, b"other")


def test_wrong_key_fails():
    blob = aead.seal(bytes(32), b"plaintext", b"aad")
    with pytest.raises(IntegrityError):
        aead.open_(b"\x01" * 32, blob, b"aad")


def test_every_tampered_byte_fails():
    blob = aead.seal(bytes(32), b"plaintext", b"aad")
    for position in range(1, len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0x80
        with pytest.raises(IntegrityError):
            aead.open_(bytes(32), bytes(damaged), b"aad")


def test_unknown_version_rejected():
    blob = aead.seal(bytes(32), b"plaintext", b"aad")
    with pytest.raises(DecodeError, match="version 2, expected 1"):
        aead.open_(bytes(32), b"\x02" + blob[1:], b"aad")


def test_short_blob_rejected():
    with pytest.raises(DecodeError, match="at least 29 bytes, got 28"):
        aead.open_(bytes(32), bytes(28), b"aad")


@pytest.mark.parametrize("key", [bytes(16), bytes(31), "k" * 32])
def test_key_must_be_32_bytes(key):
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        aead.seal(key, b"x", b"")


def test_fragment_round_trip():
    blob = aead.seal_fragment(fragment_key(), b"encoded fragment", **IDS)
    assert aead.open_fragment(fragment_key(), blob, **IDS) == b"encoded fragment"


@pytest.mark.parametrize(
    "change",
    [
        {"secret_id": "db/other"},
        {"version": 3},
        {"index": 5},
        {"holder_id": "holder-8"},
        {"key_version": 4},
    ],
)
def test_moved_fragment_fails_to_open(change):
    # A holder receives the fragment key for the ids in its fetch command, so
    # a moved fragment meets both a different key and different associated
    # data. Each alone must already make opening fail.
    blob = aead.seal_fragment(fragment_key(), b"encoded fragment", **IDS)
    moved = {**IDS, **change}
    with pytest.raises(IntegrityError):
        aead.open_fragment(fragment_key(), blob, **moved)
    with pytest.raises(IntegrityError):
        aead.open_fragment(fragment_key(moved), blob, **moved)


def test_fragment_aad_fields_do_not_run_together():
    first = aead.fragment_aad(secret_id="ab", version=1, index=1, holder_id="c", key_version=1)
    second = aead.fragment_aad(secret_id="a", version=1, index=1, holder_id="bc", key_version=1)
    assert first != second


def test_integrity_error_is_opaque():
    blob = aead.seal(bytes(32), b"plaintext", b"aad")
    with pytest.raises(IntegrityError) as wrong_key:
        aead.open_(b"\x01" * 32, blob, b"aad")
    with pytest.raises(IntegrityError) as wrong_aad:
        aead.open_(bytes(32), blob, b"other")
    assert str(wrong_key.value) == str(wrong_aad.value) == "authentication failed"
